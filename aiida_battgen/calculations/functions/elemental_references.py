"""``battgen.elemental_references``: elemental reference structures for every element of the inputs."""

from aiida.engine import ExitCode, calcfunction

from aiida_battgen.data.batch import StructureBatchData
from battgen.stability.elemental import elemental_reference_structures


@calcfunction
def elemental_references(**batches: StructureBatchData):
    """One ground-state-like structure per element found in any input batch (for an MLIP-referenced hull)."""
    # A dynamic namespace takes any Data: say which input is not a batch instead of finding no elements.
    wrong = {label: type(node).__name__ for label, node in batches.items() if not isinstance(node, StructureBatchData)}
    if wrong:
        return ExitCode(321, f"input(s) {wrong} are not structure batches (battgen.structure_batch)")
    elements = sorted({el for batch in batches.values() for el in batch.base.attributes.get("elements", [])})
    if not elements:
        return ExitCode(320, "the input batches contain no elements")
    try:
        references = elemental_reference_structures(elements)
    except ValueError as exc:
        return ExitCode(331, f"no elemental reference: {exc}")
    return {"structures": StructureBatchData(references)}
