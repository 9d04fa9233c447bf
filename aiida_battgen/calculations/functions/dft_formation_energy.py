"""``battgen.dft_formation_energy``: Ef (eV/atom) of a DFT total energy against DFT elemental references
computed with the same settings, and the comparison with the matching Materials Project entry.

References arrive as keyword inputs ``structure_<El>`` (relaxed elemental structure) and ``energy_<El>``
(its total energy, eV), one pair per element. MP2020 corrections are applied only when ``dft_settings``
say VASP + PBE + ENCUT 520 eV + MP's U (see :func:`battgen.dft.formation.mp_compatibility`); the reason
is recorded in the output. The science is in :mod:`battgen.dft.formation`.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from aiida_battgen.calculations.functions.energy_above_hull import _read_entries
from battgen.dft.formation import FormationEnergyError, formation_energy_report
from battgen.stability.entries import EntriesFormatError

ERROR_REFERENCES = ExitCode(340, "bad elemental references: {detail}", invalidates_cache=True)
ERROR_FORMATION = ExitCode(341, "no formation energy: {detail}", invalidates_cache=True)
ERROR_MP_ENTRIES = ExitCode(342, "unreadable MP entries: {detail}", invalidates_cache=True)


def collect_references(references: dict) -> dict:
    """{element: (pymatgen structure, total energy eV)} from ``structure_<El>`` / ``energy_<El>`` inputs."""
    pairs: dict[str, dict] = {}
    for key, node in references.items():
        kind, _, element = key.partition("_")
        if kind not in ("structure", "energy") or not element:
            raise ValueError(f"unexpected input {key!r}: use structure_<El> and energy_<El>")
        pairs.setdefault(element, {})[kind] = node
    incomplete = sorted(el for el, pair in pairs.items() if set(pair) != {"structure", "energy"})
    if incomplete:
        raise ValueError(f"elements without both structure_ and energy_ inputs: {incomplete}")
    result = {}
    for element, pair in pairs.items():
        structure = pair["structure"].get_pymatgen_structure()
        if {el.symbol for el in structure.composition.elements} != {element}:
            raise ValueError(f"structure_{element} is {structure.composition.reduced_formula}, not pure {element}")
        result[element] = (structure, float(pair["energy"].value))
    return result


@calcfunction
def dft_formation_energy(structure: orm.StructureData, total_energy: orm.Float, dft_settings: orm.Dict,
                         mp_entries: orm.Data | None = None, **references):
    """Formation energy per atom of ``structure`` (total energy in eV) from DFT elemental references.

    :param dft_settings: the ``dft_settings`` output of ``battgen.dft.relax`` (engine, functional, ENCUT, U).
    :param mp_entries: optional Materials Project entries (a ``battgen.snapshot``, entries file, ``List`` or
        ``JsonableData``) for the comparison.
    :param references: ``structure_<El>`` (StructureData) and ``energy_<El>`` (Float, eV) per element.
    :returns: ``formation_energy_per_atom`` (Float, eV/atom); with ``mp_entries`` and a matching entry also
        ``mp_formation_energy_per_atom`` and ``difference`` (DFT − MP, eV/atom); ``report`` (Dict).
    """
    try:
        refs = collect_references(references)
    except ValueError as exc:
        return ERROR_REFERENCES.format(detail=str(exc))
    entries = None
    if mp_entries is not None:
        try:
            entries = _read_entries(mp_entries)
        except EntriesFormatError as exc:
            return ERROR_MP_ENTRIES.format(detail=str(exc))
    try:
        report = formation_energy_report(structure.get_pymatgen_structure(), total_energy.value, refs,
                                         dft_settings.get_dict(), entries)
    except FormationEnergyError as exc:
        return ERROR_FORMATION.format(detail=str(exc))
    outputs = {"formation_energy_per_atom": orm.Float(report["formation_energy_per_atom_eV"]),
               "report": orm.Dict(report)}
    if report.get("mp_formation_energy_per_atom_eV") is not None:
        outputs["mp_formation_energy_per_atom"] = orm.Float(report["mp_formation_energy_per_atom_eV"])
        outputs["difference"] = orm.Float(report["difference_eV_per_atom"])
    return outputs
