"""``battgen.dft_energy_above_hull``: E_hull (eV/atom) of a DFT energy on a DFT hull.

The hull holds the DFT elemental references (``structure_<El>`` / ``energy_<El>``, as for
``battgen.dft_formation_energy``) and, only when the DFT settings are MP-compatible, the Materials Project
entries given (all MP2020-processed, one consistent hull). QE energies are never placed on an MP hull.
The science is in :func:`battgen.dft.formation.dft_energy_above_hull` (pymatgen PhaseDiagram through
:mod:`battgen.stability.hull`).
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import calcfunction

from aiida_battgen.calculations.functions.dft_formation_energy import (
    ERROR_FORMATION,
    ERROR_MP_ENTRIES,
    ERROR_REFERENCES,
    collect_references,
)
from aiida_battgen.calculations.functions.energy_above_hull import _read_entries
from battgen.dft.formation import (
    FormationEnergyError,
    dft_entry,
    mp_compatibility,
    reference_settings_for,
)
from battgen.dft.formation import dft_energy_above_hull as hull_point
from battgen.stability.entries import EntriesFormatError
from battgen.stability.hull import HullError


@calcfunction
def dft_energy_above_hull(structure: orm.StructureData, total_energy: orm.Float, dft_settings: orm.Dict,
                          mp_entries: orm.Data | None = None, **references):
    """E_hull (eV/atom; negative = below the hull), Ef (eV/atom) and decomposition of a DFT energy.

    :param total_energy: total energy of ``structure`` (eV), from ``battgen.dft.relax``.
    :param dft_settings: its ``dft_settings`` output (decides whether MP entries and MP2020 may be used).
    :param mp_entries: optional MP entries, used only with MP-compatible VASP settings.
    :param references: ``structure_<El>`` and ``energy_<El>`` (eV) per element, same settings.
    :returns: ``e_above_hull`` (Float, eV/atom) and ``hull`` (Dict: the hull description, Ef, decomposition).
    """
    try:
        refs = collect_references(references)
    except ValueError as exc:
        return ERROR_REFERENCES.format(detail=str(exc))
    settings = dft_settings.get_dict()
    entries = None
    if mp_entries is not None:
        try:
            entries = _read_entries(mp_entries)
        except EntriesFormatError as exc:
            return ERROR_MP_ENTRIES.format(detail=str(exc))
    compatible, _ = mp_compatibility(settings, structure.get_pymatgen_structure().composition)
    reference_settings = reference_settings_for(settings, compatible)
    dft_entries = [dft_entry(ref, energy, reference_settings, entry_id=f"dft-{el}")
                   for el, (ref, energy) in refs.items()]
    try:
        point = hull_point(structure.get_pymatgen_structure(), total_energy.value, dft_entries, settings, entries)
    except (FormationEnergyError, HullError) as exc:
        return ERROR_FORMATION.format(detail=str(exc))
    hull = dict(point["hull"])
    hull.update(formation_energy_per_atom_eV=point["formation_energy_per_atom_eV"],
                decomposition=point["decomposition"], e_above_hull_eV_per_atom=point["e_above_hull_eV_per_atom"])
    return {"e_above_hull": orm.Float(point["e_above_hull_eV_per_atom"]), "hull": orm.Dict(hull)}
