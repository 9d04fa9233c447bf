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


def test_qe_relax_si(pw_code, qe_family):
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
    assert 5.38 < a_conv < 5.52  # PBE Si: 5.47 Å (experiment 5.43 Å)
    assert results["energy_per_atom"].value == pytest.approx(results["total_energy"].value / 2)
    assert results["forces"].get_array("forces").shape == (2, 3)
    assert abs(results["forces"].get_array("forces")).max() < 0.01  # eV/Å (symmetry: zero)
    assert abs(results["stress"].get_array("stress")).max() < 1.0  # GPa after vc-relax
    assert results["converged"].get_dict() == {"ionic": True, "electronic": True}
    assert results["dft_settings"]["engine"] == "quantumespresso"
