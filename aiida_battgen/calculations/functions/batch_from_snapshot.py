"""``battgen.batch_from_snapshot``: the structures of a source snapshot as one StructureBatchData."""

from __future__ import annotations

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.data.snapshot import SourceSnapshotData
from battgen.batch import BatchFormatError
from battgen.sources.files import SourceFormatError, read_structures

ALLOWED_PARAMETERS = ("elements", "exclude_elements", "max_sites", "max_rows", "id_column")
MAX_SKIP_EXAMPLES = 100

ERROR_INVALID_PARAMETERS = 210
ERROR_EMPTY_SOURCE = 310
ERROR_UNREADABLE_SOURCE = 311


@calcfunction
def batch_from_snapshot(snapshot: SourceSnapshotData, parameters: orm.Dict | None = None):
    """Read the structures of a source snapshot, skipping unusable rows with reasons.

    Outputs ``structures`` (StructureBatchData; energies in eV/atom and band gaps in eV, units in the
    metadata key names) and ``skipped`` (Dict: counts per reason, at most 100 example rows).
    Exit codes: 210 invalid parameters, 310 ``ERROR_EMPTY_SOURCE`` (no usable row after filters),
    311 ``ERROR_UNREADABLE_SOURCE``.

    Args:
        snapshot: the source file (MP snapshot JSONL or a wrapped CSV / extxyz / entries JSON / CIF).
        parameters: optional filters: ``elements`` (list of symbols, all required), ``exclude_elements``,
            ``max_sites`` (integer, atoms per cell), ``max_rows`` (integer, rows kept), ``id_column`` (CSV: the
            column holding row ids, case-insensitive; default material_id, name or id).
    """
    filters = parameters.get_dict() if parameters is not None else {}
    unknown = set(filters) - set(ALLOWED_PARAMETERS)
    if unknown:
        return ExitCode(ERROR_INVALID_PARAMETERS, f"unknown parameter(s) {sorted(unknown)}; allowed: {ALLOWED_PARAMETERS}")
    try:
        with snapshot.as_path() as path:
            batch, report = read_structures(path, **filters)
    except (SourceFormatError, BatchFormatError, OSError, UnicodeDecodeError) as exc:
        return ExitCode(ERROR_UNREADABLE_SOURCE, f"cannot read {snapshot.filename}: {exc}")
    except (TypeError, ValueError) as exc:  # a filter value that is not an element / positive integer
        return ExitCode(ERROR_INVALID_PARAMETERS, f"invalid parameters {filters}: {exc}")
    if len(batch) == 0:
        return ExitCode(ERROR_EMPTY_SOURCE, f"no usable structure in {snapshot.filename}: {report}")
    return {
        "structures": StructureBatchData(batch=batch),
        "skipped": orm.Dict(report.as_dict(max_examples=MAX_SKIP_EXAMPLES)),
    }
