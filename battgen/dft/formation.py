"""Formation energies from DFT total energies, and their comparison with the Materials Project (seed 000 §2.6).

Ef per atom of a compound is measured against elemental reference energies computed with the **same**
DFT settings (engine, functional, pseudopotentials, cutoff, k-point density):

    Ef = (E_total − Σ_el n_el · e_el) / Σ_el n_el          (eV/atom; e_el = lowest energy per atom of el)

which is exactly pymatgen's ``PhaseDiagram.get_form_energy_per_atom`` on the same entries.

**MP2020 compatibility** (``MaterialsProject2020Compatibility``: anion corrections, GGA/GGA+U mixing) is
applied *only* when the settings are MP-compatible — VASP, PBE PAW with MPRelaxSet's POTCARs, ENCUT 520 eV
and, for oxides/fluorides of Co, Cr, Fe, Mn, Mo, Ni, V, W, MP's Hubbard U values (see
:func:`mp_compatibility`). Quantum ESPRESSO energies (other pseudopotentials, other absolute energies) are
never corrected and never mixed with MP energies: their Ef is against their own elemental references only.
A Materials Project formation energy for comparison comes from the MP entries given (MP2020-processed)
through a PhaseDiagram of those entries.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry
from pymatgen.io.vasp.sets import MPRelaxSet

from battgen.stability.hull import ReferenceHull, _quiet_process

MP_ENCUT_EV = 520.0  # MPRelaxSet ENCUT


class FormationEnergyError(ValueError):
    """Energies or references cannot give a formation energy (missing element, bad numbers)."""


def mp_hubbard_u(composition: Composition | str) -> dict[str, float]:
    """MP's Hubbard U (eV) for this composition, from pymatgen's MPRelaxSet config (empty when GGA)."""
    composition = Composition(composition)
    elements = sorted(composition.elements, key=lambda el: el.X)
    table = MPRelaxSet.CONFIG["INCAR"]["LDAUU"].get(elements[-1].symbol, {})
    return {el.symbol: float(table[el.symbol]) for el in elements if table.get(el.symbol)}


def mp_compatibility(settings: Mapping[str, Any], composition: Composition | str) -> tuple[bool, str]:
    """Whether DFT ``settings`` reproduce the MP GGA(+U) setup for ``composition``, and why (not).

    ``settings``: ``engine`` (vasp | quantumespresso), ``functional`` (PBE), ``encut_eV``, ``hubbard_u``:
    ``"MP"`` when U was chosen per structure as in MPRelaxSet (what the ``battgen.dft.relax`` VASP protocol
    does), or the {element: U in eV} actually used in this calculation (empty for plain GGA). Only then
    may MP2020 corrections be applied.
    """
    engine = str(settings.get("engine", "")).lower()
    if engine != "vasp":
        return False, f"engine {engine or 'unknown'} is not VASP: MP energies are VASP PAW energies"
    if str(settings.get("functional", "PBE")).upper() != "PBE":
        return False, f"functional {settings.get('functional')} is not PBE"
    encut = settings.get("encut_eV")
    if encut is None or abs(float(encut) - MP_ENCUT_EV) > 1e-6:
        return False, f"ENCUT {encut} eV is not MP's {MP_ENCUT_EV:.0f} eV"
    expected = mp_hubbard_u(composition)
    if isinstance(settings.get("hubbard_u"), str):
        if settings["hubbard_u"].upper() == "MP":
            return True, "VASP PBE PAW, ENCUT 520 eV, MP Hubbard U: MP2020 applies"
        return False, f"unknown Hubbard U scheme {settings['hubbard_u']!r}"
    given = {el: float(u) for el, u in (settings.get("hubbard_u") or {}).items()
             if el in {e.symbol for e in Composition(composition).elements} and float(u) != 0.0}
    if given != expected:
        return False, f"Hubbard U {given} differs from MP's {expected} for {Composition(composition).reduced_formula}"
    return True, "VASP PBE PAW, ENCUT 520 eV, MP Hubbard U: MP2020 applies"


def dft_entry(
    structure_or_composition: Structure | Composition | str,
    energy_eV: float,
    settings: Mapping[str, Any] | None = None,
    entry_id: str | None = None,
) -> ComputedEntry:
    """An entry for a DFT total energy (eV) carrying the parameters MP2020 inspects.

    With MP-compatible ``settings`` the entry says GGA/GGA+U, its U values and MPRelaxSet POTCAR symbols,
    so that ``MaterialsProject2020Compatibility`` accepts it; otherwise it carries the engine only.
    """
    structure = structure_or_composition if isinstance(structure_or_composition, Structure) else None
    composition = structure.composition if structure is not None else Composition(structure_or_composition)
    settings = dict(settings or {})
    parameters: dict[str, Any] = {"software": settings.get("engine", "unknown"), "energy_source": "dft"}
    if settings and mp_compatibility(settings, composition)[0]:
        hubbards = mp_hubbard_u(composition)
        potcars = MPRelaxSet.CONFIG["POTCAR"]
        parameters.update(
            run_type="GGA+U" if hubbards else "GGA",
            is_hubbard=bool(hubbards),
            hubbards=hubbards,
            potcar_symbols=[f"PBE {potcars[el.symbol]}" for el in composition.elements if el.symbol in potcars],
        )
    if structure is not None:
        return ComputedStructureEntry(structure, float(energy_eV), parameters=parameters, entry_id=entry_id)
    return ComputedEntry(composition, float(energy_eV), parameters=parameters, entry_id=entry_id)


def reference_settings_for(settings: Mapping[str, Any], candidate_compatible: bool) -> dict[str, Any]:
    """Settings of the elemental references computed with the candidate's protocol.

    When the candidate's run is MP-compatible its protocol chose U per structure as MP does (MPRelaxSet),
    so the references (metals: no U) carry the MP scheme rather than the candidate's own U values.
    """
    settings = dict(settings)
    if candidate_compatible:
        settings["hubbard_u"] = "MP"
    return settings


def apply_mp2020(entries: Iterable[ComputedEntry]) -> list[ComputedEntry]:
    """Copies of ``entries`` processed with MaterialsProject2020Compatibility (rejected ones dropped)."""
    return _quiet_process(list(entries), inplace=False)


def elemental_reference_energies(entries: Iterable[ComputedEntry]) -> dict[str, float]:
    """Lowest energy per atom (eV/atom) of each element among the single-element ``entries``."""
    references: dict[str, float] = {}
    for entry in entries:
        if len(entry.composition.elements) != 1:
            continue
        symbol = entry.composition.elements[0].symbol
        references[symbol] = min(references.get(symbol, float("inf")), float(entry.energy_per_atom))
    return references


def formation_energy_per_atom(
    composition: Composition | str, energy_eV: float, references_eV_per_atom: Mapping[str, float]
) -> float:
    """Ef (eV/atom) of a total energy ``energy_eV`` of ``composition`` against elemental energies per atom."""
    composition = Composition(composition)
    missing = sorted({el.symbol for el in composition.elements} - set(references_eV_per_atom))
    if missing:
        raise FormationEnergyError(f"no elemental reference energy for {', '.join(missing)}")
    if composition.num_atoms <= 0:
        raise FormationEnergyError("empty composition")
    reference = sum(amount * float(references_eV_per_atom[el.symbol]) for el, amount in composition.items())
    return (float(energy_eV) - reference) / composition.num_atoms


def match_mp_entry(
    structure_or_composition: Structure | Composition | str, mp_entries: Iterable[ComputedEntry]
) -> ComputedEntry | None:
    """The MP entry for the same phase: same reduced formula, and — when both sides have structures — the
    same structure by pymatgen's StructureMatcher (default tolerances); the lowest energy per atom wins.
    Without structures on either side the lowest-energy entry of the formula is returned."""
    if isinstance(structure_or_composition, Structure):
        structure, formula = structure_or_composition, structure_or_composition.composition.reduced_formula
    else:
        structure, formula = None, Composition(structure_or_composition).reduced_formula
    same_formula = [e for e in mp_entries if e.composition.reduced_formula == formula]
    if structure is not None and any(isinstance(e, ComputedStructureEntry) for e in same_formula):
        matcher = StructureMatcher()
        same_formula = [e for e in same_formula
                        if isinstance(e, ComputedStructureEntry) and matcher.fit(structure, e.structure)]
    if not same_formula:
        return None
    return min(same_formula, key=lambda e: e.energy_per_atom)


def mp_formation_energy_per_atom(entry: ComputedEntry, mp_entries: Iterable[ComputedEntry],
                                 compatibility: bool = True) -> float:
    """Ef (eV/atom) of an MP ``entry`` on the PhaseDiagram of ``mp_entries`` (MP2020-processed by default)."""
    entries = list(mp_entries)
    if compatibility:
        entries = apply_mp2020(entries)
        processed = [e for e in entries if e.entry_id == entry.entry_id] if entry.entry_id else []
        entry = processed[0] if processed else apply_mp2020([entry])[0]
    elements = {el for el in entry.composition.elements}
    in_space = [e for e in entries if set(e.composition.elements) <= elements]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(PhaseDiagram(in_space).get_form_energy_per_atom(entry))


def formation_energy_report(
    structure: Structure,
    energy_eV: float,
    references: Mapping[str, tuple[Structure | Composition | str, float]],
    settings: Mapping[str, Any],
    mp_entries: Iterable[ComputedEntry] | None = None,
) -> dict[str, Any]:
    """Ef of a relaxed DFT structure against DFT elemental references, and the MP comparison.

    :param structure: relaxed candidate; ``energy_eV`` its total energy (eV).
    :param references: element -> (relaxed reference structure or composition, its total energy in eV),
        computed with the same ``settings``.
    :param settings: ``engine``, ``functional``, ``encut_eV``, ``hubbard_u`` (see :func:`mp_compatibility`).
    :param mp_entries: Materials Project entries of the chemical system (optional) for the comparison.
    :returns: JSON-safe dict, energies in eV/atom: ``formation_energy_per_atom_eV``, whether MP2020 was
        applied and why, the elemental reference energies used, and (with MP entries) the matched MP
        entry id, its ``mp_formation_energy_per_atom_eV`` and ``difference_eV_per_atom`` (DFT − MP).
    """
    compatible, reason = mp_compatibility(settings, structure.composition)
    candidate = dft_entry(structure, energy_eV, settings, entry_id="candidate")
    reference_settings = reference_settings_for(settings, compatible)
    reference_entries = [dft_entry(ref, energy, reference_settings, entry_id=f"ref-{element}")
                         for element, (ref, energy) in sorted(references.items())]
    if compatible:
        processed = apply_mp2020([candidate, *reference_entries])
        by_id = {e.entry_id: e for e in processed}
        if "candidate" not in by_id:
            raise FormationEnergyError(f"MP2020 rejected {structure.composition.reduced_formula}")
        candidate = by_id["candidate"]
        reference_entries = [by_id[e.entry_id] for e in reference_entries if e.entry_id in by_id]
    reference_energies = elemental_reference_energies(reference_entries)
    report: dict[str, Any] = {
        "formula": structure.composition.reduced_formula,
        "formation_energy_per_atom_eV": formation_energy_per_atom(
            candidate.composition, candidate.energy, reference_energies),
        "energy_per_atom_eV": float(energy_eV) / len(structure),
        "mp2020_applied": compatible,
        "mp2020_reason": reason,
        "energy_correction_eV": float(candidate.correction),
        "elemental_reference_energies_eV_per_atom": reference_energies,
        "engine": settings.get("engine"),
    }
    if mp_entries is not None:
        mp_entries = list(mp_entries)
        match = match_mp_entry(structure, mp_entries)
        report["mp_entry_id"] = match.entry_id if match is not None else None
        if match is not None:
            mp_ef = mp_formation_energy_per_atom(match, mp_entries)
            report["mp_formation_energy_per_atom_eV"] = mp_ef
            report["difference_eV_per_atom"] = report["formation_energy_per_atom_eV"] - mp_ef
    return report


def dft_energy_above_hull(
    structure: Structure,
    energy_eV: float,
    dft_entries: Iterable[ComputedEntry],
    settings: Mapping[str, Any],
    mp_entries: Iterable[ComputedEntry] | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """E_hull (eV/atom) of a DFT total energy on a DFT hull.

    The hull is made of ``dft_entries`` (the elemental references and any other phases computed with the
    same ``settings``, e.g. from :func:`dft_entry`). When the settings are MP-compatible and ``mp_entries``
    are given, the MP entries join the hull and everything is MP2020-processed (one consistent MP-style
    hull); otherwise MP energies are never mixed in. Negative E_hull = below the hull.
    """
    compatible, reason = mp_compatibility(settings, structure.composition)
    candidate = dft_entry(structure, energy_eV, settings, entry_id="candidate")
    entries = list(dft_entries)  # built by the caller, e.g. with reference_settings_for(settings, compatible)
    use_mp = compatible and mp_entries is not None
    if use_mp:
        entries = entries + list(mp_entries)
    if compatible:
        processed = apply_mp2020([candidate, *entries])
        candidate = next((e for e in processed if e.entry_id == "candidate"), None)
        if candidate is None:
            raise FormationEnergyError(f"MP2020 rejected {structure.composition.reduced_formula}")
        entries = [e for e in processed if e.entry_id != "candidate"]
    hull = ReferenceHull._build(entries, label=label or ("DFT + MP (MP2020)" if use_mp else "DFT references"),
                                compatibility=None, source="entries")
    hull.check_chemical_space(structure.composition)
    decomposition, e_hull = hull.phase_diagram.get_decomp_and_e_above_hull(candidate, allow_negative=True)
    fractions: dict[str, float] = {}
    for phase, amount in decomposition.items():
        formula = phase.composition.reduced_formula
        fractions[formula] = fractions.get(formula, 0.0) + float(amount)
    description = hull.describe()
    description.update(mp2020_applied=compatible, mp2020_reason=reason, mp_entries_used=use_mp)
    return {
        "e_above_hull_eV_per_atom": float(e_hull),
        "formation_energy_per_atom_eV": float(hull.phase_diagram.get_form_energy_per_atom(candidate)),
        "decomposition": fractions,
        "hull": description,
    }
