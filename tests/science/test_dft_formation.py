"""Formation energy and E_hull from DFT energies (battgen.dft.formation): agreement with pymatgen's
PhaseDiagram on recorded MP entries, when MP2020 is (not) applied, and the MP comparison."""

from __future__ import annotations

import functools

import pytest
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry

from battgen.dft.formation import (
    FormationEnergyError,
    dft_energy_above_hull,
    elemental_reference_energies,
    formation_energy_per_atom,
    formation_energy_report,
    match_mp_entry,
    mp_compatibility,
    mp_hubbard_u,
)
from battgen.stability.entries import load_entries

MP_VASP = {"engine": "vasp", "functional": "PBE", "encut_eV": 520}
QE = {"engine": "quantumespresso", "functional": "PBE"}


@functools.cache
def _li_fe_o(path: str):
    return load_entries(path)


@pytest.fixture
def li_fe_o(shared_data):
    return _li_fe_o(str(shared_data / "emmet_test_files" / "Li-Fe-O.json.gz"))


def test_formation_energy_arithmetic_and_missing_reference():
    refs = {"Si": -5.0, "C": -9.0}
    assert formation_energy_per_atom("SiC", -14.6, refs) == pytest.approx(-0.3)
    with pytest.raises(FormationEnergyError, match="no elemental reference energy for O"):
        formation_energy_per_atom("SiO2", -20.0, refs)


def test_mp_compatibility_rules():
    assert mp_hubbard_u("Fe2O3") == {"Fe": 5.3}  # pymatgen's MPRelaxSet table, not typed here
    assert mp_hubbard_u("LiFeP") == {}  # U only for oxides/fluorides
    assert mp_compatibility({**MP_VASP, "hubbard_u": {"Fe": 5.3}}, "Fe2O3")[0]
    ok, why = mp_compatibility(MP_VASP, "Fe2O3")
    assert not ok and "Hubbard U" in why
    ok, why = mp_compatibility({**MP_VASP, "encut_eV": 400}, "Si")
    assert not ok and "ENCUT" in why
    ok, why = mp_compatibility(QE, "SiC")
    assert not ok and "not VASP" in why


@pytest.mark.shared_data
def test_formation_energy_matches_pymatgen_phase_diagram(li_fe_o):
    """Recorded MP GGA(+U) entries: our Ef (eV/atom) equals PhaseDiagram.get_form_energy_per_atom for all 375."""
    diagram = PhaseDiagram(li_fe_o)
    references = elemental_reference_energies(li_fe_o)
    assert references == {el.symbol: pytest.approx(e.energy_per_atom) for el, e in diagram.el_refs.items()}
    for entry in li_fe_o:
        ours = formation_energy_per_atom(entry.composition, entry.energy, references)
        assert ours == pytest.approx(diagram.get_form_energy_per_atom(entry), abs=1e-9)


@pytest.mark.shared_data
def test_mp_compatible_vasp_energy_reproduces_the_mp_formation_energy(li_fe_o):
    """An MP-compatible 'DFT' run giving MP's raw energies for Fe2O3, bcc Fe and O2: with MP2020 applied the
    report reproduces MP's own Ef; the same numbers called QE are not corrected (and differ)."""
    by_formula = {}
    for entry in li_fe_o:
        formula = entry.composition.reduced_formula
        if formula not in by_formula or entry.energy_per_atom < by_formula[formula].energy_per_atom:
            by_formula[formula] = entry
    fe2o3, fe, o2 = by_formula["Fe2O3"], by_formula["Fe"], by_formula["O2"]
    references = {"Fe": (fe.structure, fe.uncorrected_energy), "O": (o2.structure, o2.uncorrected_energy)}
    settings = {**MP_VASP, "hubbard_u": "MP"}  # U per structure, as MPRelaxSet
    report = formation_energy_report(fe2o3.structure, fe2o3.uncorrected_energy, references, settings, li_fe_o)
    assert report["mp2020_applied"] and report["energy_correction_eV"] < 0
    assert report["mp_entry_id"] == fe2o3.entry_id
    mp_ef = PhaseDiagram(li_fe_o).get_form_energy_per_atom(fe2o3)
    assert report["mp_formation_energy_per_atom_eV"] == pytest.approx(mp_ef, abs=0.02)
    assert abs(report["difference_eV_per_atom"]) < 0.02

    raw = formation_energy_report(fe2o3.structure, fe2o3.uncorrected_energy, references, QE, li_fe_o)
    assert not raw["mp2020_applied"] and raw["energy_correction_eV"] == 0.0
    assert abs(raw["formation_energy_per_atom_eV"] - report["formation_energy_per_atom_eV"]) > 0.1


@pytest.mark.shared_data
def test_match_mp_entry_uses_structure(li_fe_o):
    fe2o3 = min((e for e in li_fe_o if e.composition.reduced_formula == "Fe2O3"), key=lambda e: e.energy_per_atom)
    strained = fe2o3.structure.copy()
    strained.apply_strain(0.02)
    assert match_mp_entry(strained, li_fe_o).entry_id == fe2o3.entry_id
    assert match_mp_entry("Fe2O3", li_fe_o).entry_id == fe2o3.entry_id
    assert match_mp_entry("SiC", li_fe_o) is None


def test_dft_hull_of_own_references():
    """QE-style hull: only the DFT entries given; a phase below the Si-C tie line has E_hull < 0."""
    si = Structure(Lattice.cubic(5.47), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    c = Structure(Lattice.cubic(3.57), ["C"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    sic = Structure(Lattice.cubic(4.38), ["Si", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    references = [ComputedEntry("Si2", -10.0), ComputedEntry("C2", -18.0)]
    point = dft_energy_above_hull(sic, -14.6, references, QE)
    assert point["formation_energy_per_atom_eV"] == pytest.approx(-0.3)
    assert point["e_above_hull_eV_per_atom"] == pytest.approx(-0.3)
    assert not point["hull"]["mp2020_applied"] and not point["hull"]["mp_entries_used"]
    assert si.composition.reduced_formula == "Si" and c.composition.reduced_formula == "C"
    with pytest.raises(Exception, match="outside the hull"):
        dft_energy_above_hull(Structure(Lattice.cubic(4), ["Si", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]), -10.0,
                              references, QE)


@pytest.mark.shared_data
def test_dft_hull_with_mp_entries_when_compatible(li_fe_o):
    fe2o3 = min((e for e in li_fe_o if e.composition.reduced_formula == "Fe2O3"), key=lambda e: e.energy_per_atom)
    point = dft_energy_above_hull(fe2o3.structure, fe2o3.uncorrected_energy, [], {**MP_VASP, "hubbard_u": "MP"},
                                  mp_entries=li_fe_o)
    assert point["hull"]["mp_entries_used"]
    assert point["e_above_hull_eV_per_atom"] == pytest.approx(PhaseDiagram(li_fe_o).get_e_above_hull(fe2o3), abs=0.02)
