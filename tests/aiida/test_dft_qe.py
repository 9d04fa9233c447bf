"""Real Quantum ESPRESSO (Debian pw.x) through ``battgen.dft.relax``: a relaxation of 2-atom Si and the
formation energy of SiC (zinc blende) against Si and diamond references from the same work chain."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from aiida import orm
from aiida.engine import run_get_node
from pymatgen.core import Lattice, Structure

sys.path.insert(0, str(Path(__file__).parent / "dft"))
from battgen_dft_fixtures import QE_FAST, SERIAL, pw_code, qe_family  # noqa: E402,F401 - fixtures

from aiida_battgen.workchains.dft import DftRelaxWorkChain  # noqa: E402

pytestmark = pytest.mark.dft


def diamond(element: str, a: float) -> Structure:
    return Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]), [element] * 2,
                     [[0, 0, 0], [0.25, 0.25, 0.25]])


def test_qe_relax_si(pw_code, qe_family):  # noqa: F811 - fixtures imported above
    """Si (2 atoms, a = 5.50 Å start): relaxed lattice near PBE's 5.47 Å, forces ~0, same output names as VASP."""
    structure = orm.StructureData(pymatgen=diamond("Si", 5.50))
    builder = DftRelaxWorkChain.get_builder_from_protocol(
        pw_code, structure, engine="quantumespresso", protocol="fast", overrides=QE_FAST,
        pseudo_family=qe_family.label, options=SERIAL)
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    for name in ("relaxed_structure", "total_energy", "energy_per_atom", "forces", "stress", "converged",
                 "dft_settings"):
        assert name in results
    relaxed = results["relaxed_structure"].get_pymatgen_structure()
    a_conv = relaxed.lattice.a * 2**0.5
    print(f"QE PBE Si: a = {a_conv:.4f} Å, E = {results['energy_per_atom'].value:.4f} eV/atom, "
          f"max |stress| = {abs(results['stress'].get_array('stress')).max():.3f} GPa")
    assert 5.38 < a_conv < 5.52  # PBE Si: 5.47 Å (experiment 5.43 Å)
    assert results["energy_per_atom"].value == pytest.approx(results["total_energy"].value / 2)
    assert results["forces"].get_array("forces").shape == (2, 3)
    assert abs(results["forces"].get_array("forces")).max() < 0.01  # eV/Å (symmetry: zero)
    assert abs(results["stress"].get_array("stress")).max() < 1.0  # GPa after vc-relax
    assert results["converged"].get_dict() == {"ionic": True, "electronic": True}
    assert results["dft_settings"]["engine"] == "quantumespresso"


def zincblende_sic(a: float) -> Structure:
    return Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]), ["Si", "C"],
                     [[0, 0, 0], [0.25, 0.25, 0.25]])


def _reference_calcs(node, element: str) -> list:
    child = next(c for c in node.called if _link_label(node, c) == f"relax_reference_{element}")
    return [n for n in child.called_descendants if isinstance(n, orm.CalcJobNode)]


def _link_label(parent, child) -> str:
    return next(link.link_label for link in parent.base.links.get_outgoing().all() if link.node.pk == child.pk)


def test_qe_formation_energy_of_sic_and_cached_references(pw_code, qe_family):  # noqa: F811
    """SiC (zinc blende) vs Si and C (diamond) from the same work chain and cutoffs (30/240 Ry, C's):
    PBE gives Ef ≈ −0.2…−0.3 eV/atom (experiment −0.38 eV/atom, ΔHf = −73 kJ/mol; MP mp-8062 ≈ −0.2).
    A second SiC run with caching on reuses both reference calculations (no pw.x run) but not the candidate."""
    from aiida.manage.caching import enable_caching

    from aiida_battgen.workchains.dft_formation import DftFormationEnergyWorkChain

    inputs = {"code": pw_code, "engine": "quantumespresso", "protocol": "fast", "family": qe_family.label,
              "overrides": QE_FAST, "options": SERIAL}
    with enable_caching(identifier="aiida.calculations:quantumespresso.pw"):
        first, node = run_get_node(DftFormationEnergyWorkChain,
                                   structure=orm.StructureData(pymatgen=zincblende_sic(4.38)), **inputs)
        assert node.is_finished_ok, node.exit_message
        ef = first["formation_energy_per_atom"].value
        print(f"QE PBE Ef(SiC) = {ef:.4f} eV/atom; E_hull = {first['e_above_hull'].value:.4f} eV/atom")
        assert -0.45 < ef < -0.1
        report = first["report"].get_dict()
        assert not report["mp2020_applied"] and "not VASP" in report["mp2020_reason"]
        assert first["e_above_hull"].value == pytest.approx(ef, abs=1e-6)  # only Si, C and SiC on this hull
        expected = {"relax_candidate", "relax_reference_C", "relax_reference_Si", "formation_energy",
                    "energy_above_hull", "reference_structure_C", "reference_structure_Si"}
        assert {_link_label(node, c) for c in node.called} >= expected
        assert not any(c.base.caching.is_created_from_cache for c in _reference_calcs(node, "Si"))
        # Every reference structure has a creator in the graph (the elemental_reference_structure calcfunction).
        for element in ("Si", "C"):
            relax = next(c for c in node.called if _link_label(node, c) == f"relax_reference_{element}")
            assert relax.inputs.structure.creator.process_label == "elemental_reference_structure"

        second, node2 = run_get_node(DftFormationEnergyWorkChain,
                                     structure=orm.StructureData(pymatgen=zincblende_sic(4.40)), **inputs)
    assert node2.is_finished_ok, node2.exit_message
    for element in ("Si", "C"):
        calcs = _reference_calcs(node2, element)
        assert calcs and all(c.base.caching.is_created_from_cache for c in calcs)
    candidate_calcs = [n for n in node2.called_descendants if isinstance(n, orm.CalcJobNode)
                       and n.inputs.structure.get_formula() == "CSi"]
    assert candidate_calcs and not any(c.base.caching.is_created_from_cache for c in candidate_calcs)
    assert second["formation_energy_per_atom"].value == pytest.approx(ef, abs=0.01)
