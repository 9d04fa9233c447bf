"""``battgen.merge_batches``: concatenate batches (e.g. several generators, or references) into one."""

from aiida.engine import ExitCode, calcfunction

from aiida_battgen.data.batch import StructureBatchData
from battgen.batch import BatchFormatError, StructureBatch


@calcfunction
def merge_batches(**batches: StructureBatchData):
    """Concatenate the input batches in the order of their link labels; row_ids must stay unique."""
    try:
        merged = StructureBatch.concatenate(batches[label].get_batch() for label in sorted(batches))
    except BatchFormatError as exc:
        return ExitCode(323, f"cannot merge batches: {exc}")
    return {"structures": StructureBatchData(merged)}
