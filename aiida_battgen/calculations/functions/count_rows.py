"""``battgen.count_rows``: a funnel of named stages, counted from the batches themselves."""

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from aiida_battgen.data.batch import StructureBatchData


@calcfunction
def count_rows(stage_names: orm.List, **batches: StructureBatchData):
    """Rows (number of structures) per stage. Batches are linked as ``stage_00``, ``stage_01`` ... in the
    order of ``stage_names`` (free text such as ``predicted_band_gap_eV <= 0.5``)."""
    names = stage_names.get_list()
    labels = sorted(batches)
    if len(labels) != len(names):
        return ExitCode(321, f"{len(names)} stage names for {len(labels)} batches")
    counts = {name: batches[label].n_rows for name, label in zip(names, labels)}
    return orm.Dict({"stages": names, "counts": counts})
