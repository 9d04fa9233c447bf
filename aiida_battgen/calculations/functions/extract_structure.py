"""``battgen.extract_structure``: one row of a batch as its own StructureData (for shortlisted candidates)."""

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from aiida_battgen.data.batch import StructureBatchData


def _scalar_properties(meta: dict) -> dict:
    """Row metadata that is useful to query: scalars and small dicts, never arrays."""
    return {k: v for k, v in meta.items() if isinstance(v, str | int | float | bool | dict) or v is None}


@calcfunction
def extract_structure(structures: StructureBatchData, row_id: orm.Str):
    """Pull row ``row_id`` out of the batch: ``structure`` (StructureData, labelled ``<formula> (rank <n>)``
    when the row is ranked) and ``properties`` (Dict of the row's metadata, units in the key names, e.g.
    ``e_above_hull_eV_per_atom``)."""
    batch = structures.get_batch()
    try:
        meta, structure = batch.get(row_id.value)
    except KeyError:
        return ExitCode(322, f"no row {row_id.value!r} in batch {structures.pk}")
    properties = _scalar_properties(meta)
    # Composition facts for queries by chemistry (`aiida-battgen candidates --element Li`).
    properties["reduced_formula"] = structure.composition.reduced_formula
    properties["elements"] = sorted(el.symbol for el in structure.composition.elements)
    properties["nsites"] = len(structure)
    node = orm.StructureData(pymatgen=structure)
    rank = meta.get("rank")
    node.label = f"{properties['reduced_formula']} (rank {rank})" if rank is not None else properties["reduced_formula"]
    return {"structure": node, "properties": orm.Dict(properties)}
