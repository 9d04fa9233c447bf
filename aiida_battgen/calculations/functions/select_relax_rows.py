"""``battgen.select_relax_rows``: the rows of a relaxed batch that need another relaxation."""

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from aiida_battgen.data.batch import StructureBatchData
from battgen.contracts.relax import RELAX_STATUSES


@calcfunction
def select_relax_rows(structures: StructureBatchData, statuses: orm.List) -> dict[str, StructureBatchData] | ExitCode:
    """The rows of a relaxed batch whose ``relax_status`` is one of ``statuses`` (the rows to restart)."""
    wanted = set(statuses.get_list())
    unknown = sorted(map(str, wanted - set(RELAX_STATUSES)))
    if unknown:  # a misspelt status would silently select nothing
        return ExitCode(321, f"unknown relax status(es) {unknown}; known: {list(RELAX_STATUSES)}")
    batch = structures.get_batch().select(lambda meta, _: meta.get("relax_status") in wanted)
    return {"structures": StructureBatchData(batch)}
