"""``battgen.attach_conductivity``: copy each candidate's MD conductivity onto its batch row."""

from __future__ import annotations

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from aiida_battgen.data.batch import StructureBatchData

COLUMNS = ("conductivity_mS_per_cm", "diffusivity_cm2_per_s", "md_temperature_K")


@calcfunction
def attach_conductivity(structures: StructureBatchData, row_ids: orm.List, **runs: orm.Dict):
    """Rows of ``structures`` named in ``row_ids`` get ``conductivity_mS_per_cm`` (mS/cm),
    ``diffusivity_cm2_per_s`` (cm²/s) and ``md_temperature_K`` (K) from the MD output linked as ``run_<i>``
    (the i-th row id); rows without a run get None."""
    ids = row_ids.get_list()
    labels = sorted(runs)
    if len(labels) != len(ids):
        return ExitCode(321, f"{len(ids)} row ids for {len(labels)} runs")
    by_row = {}
    for row_id, label in zip(ids, labels):
        values = runs[label].get_dict()
        by_row[row_id] = (values.get("conductivity_mS_per_cm"), values.get("diffusivity_cm2_per_s"),
                          values.get("temperature_K"))
    batch = structures.get_batch()
    unknown = sorted(set(ids) - set(batch.row_ids))
    if unknown:
        return ExitCode(321, f"row ids not in the batch: {unknown[:5]}")
    columns = {name: [by_row.get(m["row_id"], (None, None, None))[i] for m in batch.meta]
               for i, name in enumerate(COLUMNS)}
    return {"structures": StructureBatchData(batch.with_columns(**columns))}
