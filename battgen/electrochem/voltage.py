"""Average insertion voltage from total energies (DFT or MLIP), through pymatgen's ``InsertionElectrode``.

Seed 002 eq. 6: for x working ions of charge z inserted per formula unit,

    V = −[E(discharged) − E(charged) − x · E(ion metal)] / (x · z)          (V, energies in eV)

with E(ion metal) the energy per atom of the bulk metal computed with the same method. pymatgen's
``InsertionElectrode`` implements this (and the capacity, mAh/g of the discharged material, MP convention)
for any number of intermediate phases; it is used here rather than the formula by hand, so that the
numbers match the Materials Project battery explorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymatgen.apps.battery.insertion_battery import InsertionElectrode
from pymatgen.core import Composition, Structure
from pymatgen.entries.computed_entries import ComputedEntry


class VoltageError(ValueError):
    """The states cannot form an insertion electrode (no working ion, one state only, ...)."""


def _entry(state: Structure | Composition | str, energy_eV: float) -> ComputedEntry:
    composition = state.composition if isinstance(state, Structure) else Composition(state)
    return ComputedEntry(composition, float(energy_eV))


def insertion_electrode(entries: Sequence[ComputedEntry], ion_entry: ComputedEntry) -> InsertionElectrode:
    """pymatgen's InsertionElectrode from entries of the states (any order) and the working-ion metal entry."""
    ion = ion_entry.composition.elements[0].symbol
    if len(ion_entry.composition.elements) != 1:
        raise VoltageError(f"the ion reference {ion_entry.composition.reduced_formula} is not an element")
    try:
        return InsertionElectrode.from_entries(list(entries), ion_entry)
    except (ValueError, IndexError, ZeroDivisionError) as exc:
        raise VoltageError(f"no {ion} insertion electrode from these states: {exc}") from exc


def electrode_voltage(
    discharged: Structure | Composition | str,
    energy_discharged_eV: float,
    charged: Structure | Composition | str,
    energy_charged_eV: float,
    working_ion: str,
    ion_energy_per_atom_eV: float,
) -> dict[str, Any]:
    """Average voltage (V) and gravimetric capacity (mAh/g of the discharged state) of one step.

    Energies are total energies (eV) of the given structures/compositions and the energy per atom (eV/atom)
    of the working-ion metal, all from the same method.
    """
    disc = _entry(discharged, energy_discharged_eV)
    chg = _entry(charged, energy_charged_eV)
    if disc.composition[working_ion] <= chg.composition[working_ion]:
        raise VoltageError(
            f"the discharged state {disc.composition.reduced_formula} must hold more {working_ion} than the "
            f"charged state {chg.composition.reduced_formula}"
        )
    electrode = insertion_electrode([chg, disc], ComputedEntry(working_ion, float(ion_energy_per_atom_eV)))
    return {
        "average_voltage_V": float(electrode.get_average_voltage()),
        "capacity_grav_mAh_per_g": float(electrode.get_capacity_grav()),
        "working_ion": working_ion,
        "formula_discharged": disc.composition.reduced_formula,
        "formula_charged": chg.composition.reduced_formula,
        "ion_energy_per_atom_eV": float(ion_energy_per_atom_eV),
    }


def insertion_voltage_V(energy_discharged_eV: float, composition_discharged: Composition, energy_charged_eV: float,
                        composition_charged: Composition, working_ion: str, ion_energy_per_atom_eV: float) -> float:
    """Average voltage (V) of one step from total energies (eV) and the ion metal energy (eV/atom)."""
    return electrode_voltage(composition_discharged, energy_discharged_eV, composition_charged, energy_charged_eV,
                             working_ion, ion_energy_per_atom_eV)["average_voltage_V"]
