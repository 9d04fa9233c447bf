"""``battgen.elemental_reference_structure``: the reference crystal (or boxed molecule) of one element."""

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from battgen.stability.elemental import UnsupportedElementError, elemental_reference_structure as build_reference


@calcfunction
def elemental_reference_structure(element: orm.Str):
    """The ground-state-like structure of ``element`` (Å) and whether its cell must stay fixed (molecules in a box).

    A calcfunction so that every DFT reference relaxation has a creator in the graph; the structure is
    deterministic, so its hash (and hence DFT caching of the references) is the same in every run.
    """
    try:
        structure, info = build_reference(element.value)
    except UnsupportedElementError as exc:
        return ExitCode(331, f"no elemental reference: {exc}")
    node = orm.StructureData(pymatgen=structure)
    node.label = f"{element.value} reference: {info['source']}"
    return {"structure": node, "fixed_cell": orm.Bool(bool(info.get("fixed_cell")))}
