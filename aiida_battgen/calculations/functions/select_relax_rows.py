"""``battgen.select_relax_rows``: the rows of a relaxed batch that need another relaxation."""

from aiida import orm
from aiida.engine import calcfunction

from aiida_battgen.data.batch import StructureBatchData


@calcfunction
def select_relax_rows(structures: StructureBatchData, statuses: orm.List) -> dict[str, StructureBatchData]:
    """The rows of a relaxed batch whose ``relax_status`` is one of ``statuses`` (the rows to restart)."""
    wanted = set(statuses.get_list())
    batch = structures.get_batch().select(lambda meta, _: meta.get("relax_status") in wanted)
    return {"structures": StructureBatchData(batch)}
