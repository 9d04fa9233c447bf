"""``battgen.merge_batches``: concatenate batches (e.g. several generators, or references) into one."""

from aiida.engine import ExitCode, calcfunction

from aiida_battgen.data.batch import StructureBatchData
from battgen.batch import BatchFormatError, StructureBatch


@calcfunction
def merge_batches(**batches: StructureBatchData):
    """Concatenate the input batches in the order of their link labels; row_ids must stay unique."""
    # A dynamic namespace takes any Data: say which input is not a batch instead of an AttributeError.
    wrong = {label: type(node).__name__ for label, node in batches.items() if not isinstance(node, StructureBatchData)}
    if wrong:
        return ExitCode(321, f"input(s) {wrong} are not structure batches (battgen.structure_batch)")
    try:
        merged = StructureBatch.concatenate(batches[label].get_batch() for label in sorted(batches))
    except BatchFormatError as exc:
        return ExitCode(323, f"cannot merge batches: {exc}")
    return {"structures": StructureBatchData(merged)}
