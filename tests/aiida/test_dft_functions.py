"""The DFT calcfunctions without a DFT code: unit conversion of dft_relax_results, the MP2020 route of
dft_formation_energy / dft_energy_above_hull for MP-compatible VASP settings (recorded MP energies of
Fe2O3, Fe, O2), clean exits on bad input, and DftRelaxWorkChain's input checks."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from aiida import orm
from pymatgen.core import Lattice, Structure

from aiida_battgen.calculations.functions.dft_energy_above_hull import dft_energy_above_hull
from aiida_battgen.calculations.functions.dft_formation_energy import dft_formation_energy
from aiida_battgen.calculations.functions.dft_relax_results import dft_relax_results

VASP_SETTINGS = {"engine": "vasp", "functional": "PBE", "encut_eV": 520.0, "hubbard_u": {"Fe": 5.3}}


def test_vasp_misc_to_common_units(aiida_profile):
    """kbar -> GPa, energy per atom, the static run's missing ionic flag counts as converged."""
    structure = orm.StructureData(pymatgen=Structure(Lattice.cubic(3.0), ["Li", "Li"], [[0, 0, 0], [0.5] * 3]))
    misc = orm.Dict({"total_energies": {"energy_extrapolated": -3.8}, "forces": [[0, 0, 0.1], [0, 0, -0.1]],
                     "stress": [[-11.5, 0, 0], [0, -11.5, 0], [0, 0, -11.5]],
                     "run_status": {"ionic_converged": None, "electronic_converged": True}})
    results = dft_relax_results(structure=structure, dft_settings=orm.Dict({"engine": "vasp"}), vasp_misc=misc)
    assert results["energy_per_atom"].value == pytest.approx(-1.9)
    assert np.diag(results["stress"].get_array("stress")) == pytest.approx([-1.15] * 3)
    assert results["converged"].get_dict() == {"ionic": True, "electronic": True}
    _, node = dft_relax_results.run_get_node(structure=structure, dft_settings=orm.Dict({}),
                                             vasp_misc=orm.Dict({"forces": []}))
    assert node.exit_status == 330 and not node.base.links.get_outgoing().all()


@functools.cache
def _li_fe_o(path: str):
    from battgen.stability.entries import load_entries

    return load_entries(path)


@pytest.mark.shared_data
def test_mp_compatible_vasp_route(aiida_profile, shared_data):
    """Raw MP energies of Fe2O3 + Fe + O2 given as 'our' VASP run with MP settings (U = 5.3 eV for Fe in the
    oxide): MP2020 is applied and Ef and E_hull match Materials Project's; QE-labelled settings do not."""
    entries = _li_fe_o(str(shared_data / "emmet_test_files" / "Li-Fe-O.json.gz"))
    best = {}
    for entry in entries:
        formula = entry.composition.reduced_formula
        if formula not in best or entry.energy_per_atom < best[formula].energy_per_atom:
            best[formula] = entry
    fe2o3, fe, o2 = best["Fe2O3"], best["Fe"], best["O2"]
    mp_node = orm.List([e.as_dict() for e in entries if set(e.composition.chemical_system.split("-")) <= {"Fe", "O"}])
    inputs = {"structure": orm.StructureData(pymatgen=fe2o3.structure),
              "total_energy": orm.Float(fe2o3.uncorrected_energy),
              "dft_settings": orm.Dict(VASP_SETTINGS), "mp_entries": mp_node,
              "structure_Fe": orm.StructureData(pymatgen=fe.structure), "energy_Fe": orm.Float(fe.uncorrected_energy),
              "structure_O": orm.StructureData(pymatgen=o2.structure), "energy_O": orm.Float(o2.uncorrected_energy)}
    formation = dft_formation_energy(**inputs)
    assert formation["report"]["mp2020_applied"]
    assert abs(formation["difference"].value) < 0.02  # eV/atom
    hull = dft_energy_above_hull(**inputs)
    assert hull["hull"]["mp_entries_used"] and abs(hull["e_above_hull"].value) < 0.02

    qe = dict(inputs, dft_settings=orm.Dict({"engine": "quantumespresso", "functional": "PBE"}))
    assert not dft_formation_energy(**qe)["report"]["mp2020_applied"]
    assert not dft_energy_above_hull(**qe)["hull"]["mp_entries_used"]


def test_bad_references_exit_cleanly(aiida_profile):
    si = orm.StructureData(pymatgen=Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25] * 3]))
    common = {"structure": si, "total_energy": orm.Float(-10.0),
              "dft_settings": orm.Dict({"engine": "quantumespresso"})}
    _, node = dft_formation_energy.run_get_node(**common, structure_Si=si)
    assert node.exit_status == 340 and "energy_" in node.exit_message
    _, node = dft_formation_energy.run_get_node(**common, structure_C=si, energy_C=orm.Float(-9.0))
    assert node.exit_status == 340 and "not pure C" in node.exit_message
    _, node = dft_energy_above_hull.run_get_node(**common, structure_Si=si, energy_Si=orm.Float(-10.0),
                                                 mp_entries=orm.List([{"not": "an entry"}]))
    assert node.exit_status == 342


def test_relax_inputs_are_checked(aiida_profile):
    from aiida_battgen.workchains.dft import DftRelaxWorkChain, validate_inputs
    from aiida_battgen.workchains.protocols.utils import UnknownProtocolKeyError

    assert "engine must be one of" in validate_inputs({"engine": orm.Str("abinit")}, None)
    assert "needs the inputs" in validate_inputs({"engine": orm.Str("vasp")}, None)
    assert "as well" in validate_inputs({"engine": orm.Str("vasp"), "vasp": {"x": 1}, "quantumespresso": {"y": 1}},
                                        None)
    with pytest.raises(ValueError, match="engine must be one of"):
        DftRelaxWorkChain.get_builder_from_protocol(None, None, engine="castep")
    with pytest.raises(UnknownProtocolKeyError, match="vasp.incar"):
        DftRelaxWorkChain.get_protocol_inputs("fast", {"vasp": {"incar": {"encut": 400}}})
    assert DftRelaxWorkChain.get_protocol_inputs("balanced")["vasp"]["relax_settings"]["force_cutoff"] == 0.02
