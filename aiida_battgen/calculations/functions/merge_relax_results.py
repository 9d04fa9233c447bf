"""``battgen.merge_relax_results``: relaxed batches of a restarted relaxation merged back by ``row_id``."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import calcfunction

from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.parsers.relax import relax_arrays, relax_parameters
from battgen.batch import StructureBatch


@calcfunction
def merge_relax_results(parameters: orm.Dict, drop_row_ids: orm.List, **batches: StructureBatchData):
    """Merge relaxed batches by ``row_id``: later batches (by link label) replace earlier rows, first-seen
    order is kept, ``drop_row_ids`` are left out. Returns the same outputs as MlipRelaxCalculation."""
    rows: dict[str, tuple[dict[str, Any], Any]] = {}
    for label in sorted(batches):
        for meta, structure in batches[label].get_batch():
            rows[meta["row_id"]] = (meta, structure)
    dropped = set(drop_row_ids.get_list())
    kept = [(meta, structure) for row_id, (meta, structure) in rows.items() if row_id not in dropped]
    merged = StructureBatch([s for _, s in kept], [m for m, _ in kept])

    last = parameters.get_dict()
    model = {
        "name": last.get("mlip"), "model_name": last.get("model_name"), "package": last.get("package"),
        "package_version": last.get("package_version"), "weights_sha256": last.get("weights_sha256"),
    }
    settings = {k: last.get(v) for k, v in (("fmax", "fmax_eV_per_A"), ("max_steps", "max_steps"),
                                              ("maxstep", "maxstep_A"), ("cell_filter", "cell_filter"),
                                              ("optimizer", "optimizer"))}
    merged_parameters = relax_parameters(
        merged, model, settings, dropped_row_ids=sorted(dropped),
        n_pieces_merged=len(batches), versions=last.get("versions", {}),
    )
    return {
        "relaxed_structures": StructureBatchData(merged),
        "output_parameters": orm.Dict(merged_parameters),
        "output_arrays": relax_arrays(merged),
    }
