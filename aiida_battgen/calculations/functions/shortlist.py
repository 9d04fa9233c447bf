"""``battgen.shortlist``: rank a batch by a column and keep the top rows that pass thresholds."""

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from aiida_battgen.data.batch import StructureBatchData
from battgen.select import SelectionCriteria, select_rows


@calcfunction
def shortlist(structures: StructureBatchData, parameters: orm.Dict):
    """Select rows: ``parameters`` = {sort_by, ascending, top_k, max_values, min_values, equals}.

    Thresholds are in the unit of their column (e.g. ``e_above_hull_eV_per_atom``: eV/atom).
    Outputs ``selected`` (ranked, column ``rank``) and ``rejected`` (column ``reject_reason``).
    """
    try:
        criteria = SelectionCriteria.from_dict(parameters.get_dict())
    except (TypeError, ValueError) as exc:
        return ExitCode(321, f"invalid selection parameters: {exc}")
    selected, rejected = select_rows(structures.get_batch(), criteria)
    return {"selected": StructureBatchData(selected), "rejected": StructureBatchData(rejected)}
