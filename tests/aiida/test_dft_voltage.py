"""``battgen.electrode_voltage`` calcfunction: MgV2O4 / VO2 recorded MP energies give pymatgen's 2.51377 V;
bad input exits cleanly without outputs."""

from __future__ import annotations

import json

import pytest
from aiida import orm
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry

from aiida_battgen.calculations.functions.electrode_voltage import electrode_voltage


@pytest.mark.shared_data
def test_mgv2o4_voltage_from_recorded_energies(aiida_profile, shared_data):
    folder = shared_data / "pymatgen_battery_2014"
    with open(folder / "MgVO_batt.json", encoding="utf-8") as handle:
        entries = [ComputedStructureEntry.from_dict(d) for d in json.load(handle)]
    with open(folder / "Mg_batt.json", encoding="utf-8") as handle:
        mg = ComputedStructureEntry.from_dict(json.load(handle))
    discharged = next(e for e in entries if "Mg" in e.composition)
    charged = next(e for e in entries if "Mg" not in e.composition)
    results, node = electrode_voltage.run_get_node(
        orm.StructureData(pymatgen=discharged.structure), orm.Float(discharged.energy),
        orm.StructureData(pymatgen=charged.structure), orm.Float(charged.energy), orm.Str("Mg"),
        orm.Float(mg.energy_per_atom))
    assert node.is_finished_ok
    assert results["average_voltage"].value == pytest.approx(2.51377, abs=1e-5)
    assert results["capacity_grav"].value == pytest.approx(281.85, abs=0.01)
    assert results["report"]["formula_charged"] == "VO2"


def test_states_in_the_wrong_order_exit_without_outputs(aiida_profile):
    licoo2 = Structure(Lattice.hexagonal(2.82, 14.05), ["Li", "Co", "O", "O"],
                       [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.24], [0, 0, 0.76]])
    coo2 = licoo2.copy()
    coo2.remove_species(["Li"])
    _, node = electrode_voltage.run_get_node(
        orm.StructureData(pymatgen=coo2), orm.Float(-20.0), orm.StructureData(pymatgen=licoo2), orm.Float(-25.0),
        orm.Str("Li"), orm.Float(-1.9))
    assert node.exit_status == 351 and not node.base.links.get_outgoing().all()
    _, node = electrode_voltage.run_get_node(
        orm.StructureData(pymatgen=licoo2), orm.Float(-25.0), orm.StructureData(pymatgen=coo2), orm.Float(-20.0),
        orm.Str("Xx"), orm.Float(-1.9))
    assert node.exit_status == 350
