"""``battgen.predicted_energy_above_hull``: E_hull (eV/atom) of every row from a predicted formation energy,
against MP-referenced entries (seed 000's E_hull ≤ 0.08 eV/atom cut without relaxing anything)."""

from __future__ import annotations

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from aiida_battgen.calculations.functions.energy_above_hull import _read_entries
from aiida_battgen.data.batch import StructureBatchData
from battgen.stability.entries import EntriesFormatError
from battgen.stability.hull import COMPATIBILITY_SCHEMES, MP2020, HullError, ReferenceHull
from battgen.stability.predicted import ehull_from_predicted_formation_energy

_KEYS = {"column", "compatibility", "label"}


@calcfunction
def predicted_energy_above_hull(structures: StructureBatchData, reference_entries: orm.Data, parameters: orm.Dict):
    """Add ``predicted_e_above_hull_eV_per_atom``, ``e_above_hull_source`` and ``e_above_hull_error``.

    :param reference_entries: MP entries (a snapshot, entries JSON file, List or JsonableData).
    :param parameters: ``column`` (the predicted formation energy, eV/atom; default
        ``predicted_formation_energy_per_atom_eV``), ``compatibility`` (MP2020 default, or null), ``label``.
    """
    settings = parameters.get_dict()
    unknown = sorted(set(settings) - _KEYS)
    if unknown:
        return ExitCode(333, f"invalid hull parameters: unknown keys {unknown}; allowed {sorted(_KEYS)}")
    compatibility = settings.get("compatibility", MP2020)
    if compatibility not in COMPATIBILITY_SCHEMES:
        return ExitCode(333, f"invalid hull parameters: compatibility {compatibility!r}")
    try:
        entries = _read_entries(reference_entries)
        hull = ReferenceHull.from_entries(
            entries, label=settings.get("label") or f"entries {type(reference_entries).__name__}<{reference_entries.pk}>",
            compatibility=compatibility, copy=False)
    except (EntriesFormatError, HullError, ValueError) as exc:
        return ExitCode(332, f"no usable reference: {exc}")
    column = settings.get("column", "predicted_formation_energy_per_atom_eV")
    annotated = ehull_from_predicted_formation_energy(structures.get_batch(), hull, column)
    return {"structures": StructureBatchData(annotated), "hull": orm.Dict(hull.describe())}
