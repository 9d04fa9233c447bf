"""Voltage from total energies (battgen.electrochem.voltage): pymatgen's InsertionElectrode on recorded MP
entries (pymatgen_battery_2014, values in shared/data/SOURCES.md) and the seed-002 formula."""

from __future__ import annotations

import json

import pytest
from monty.json import MontyDecoder
from pymatgen.core import Composition
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

from battgen.electrochem.voltage import VoltageError, electrode_voltage, insertion_electrode, insertion_voltage_V

LI_METAL_EV_PER_ATOM = -1.90753119  # the Li reference of pymatgen's own LiTiO2 test


def test_seed_formula_single_step():
    """V = -[E(dis) - E(chg) - n E(ion)] / (n z): Mg (z = 2), n = 1 per MgV2O4; capacity from pymatgen."""
    e_dis, e_chg, e_mg = -60.0, -52.0, -1.5
    result = electrode_voltage("MgV2O4", e_dis, "V2O4", e_chg, "Mg", e_mg)
    assert result["average_voltage_V"] == pytest.approx(-(e_dis - e_chg - e_mg) / 2)
    assert result["capacity_grav_mAh_per_g"] == pytest.approx(2 * 96485.33212 / 3.6 / Composition("MgV2O4").weight,
                                                              rel=1e-4)
    assert insertion_voltage_V(e_dis, Composition("MgV2O4"), e_chg, Composition("V2O4"), "Mg", e_mg) == pytest.approx(
        result["average_voltage_V"])


def test_bad_states_are_refused():
    with pytest.raises(VoltageError, match="must hold more Li"):
        electrode_voltage("CoO2", -20.0, "LiCoO2", -25.0, "Li", -1.9)


@pytest.mark.shared_data
def test_litio2_reproduces_pymatgen(shared_data):
    with open(shared_data / "pymatgen_battery_2014" / "LiTiO2_batt.json", encoding="utf-8") as handle:
        entries = json.load(handle, cls=MontyDecoder)
    electrode = insertion_electrode(entries, ComputedEntry("Li", LI_METAL_EV_PER_ATOM))
    assert electrode.get_average_voltage() == pytest.approx(1.84143, abs=1e-5)
    assert electrode.get_capacity_grav() == pytest.approx(308.75, abs=0.01)


@pytest.mark.shared_data
def test_mgv2o4_reproduces_pymatgen(shared_data):
    folder = shared_data / "pymatgen_battery_2014"
    with open(folder / "MgVO_batt.json", encoding="utf-8") as handle:
        entries = [ComputedStructureEntry.from_dict(d) for d in json.load(handle)]  # no @class tags
    with open(folder / "Mg_batt.json", encoding="utf-8") as handle:
        mg = ComputedStructureEntry.from_dict(json.load(handle))
    discharged = next(e for e in entries if "Mg" in e.composition)
    charged = next(e for e in entries if "Mg" not in e.composition)
    # The calcfunction's path: two total energies + the metal energy per atom.
    result = electrode_voltage(discharged.structure, discharged.energy, charged.structure, charged.energy, "Mg",
                               mg.energy_per_atom)
    assert result["average_voltage_V"] == pytest.approx(2.51377, abs=1e-5)
    assert result["capacity_grav_mAh_per_g"] == pytest.approx(281.85, abs=0.01)
