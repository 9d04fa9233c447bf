"""Theoretical capacity of an insertion electrode for a working ion, with pymatgen's conventions.

The numbers come from pymatgen's own :class:`~pymatgen.apps.battery.insertion_battery.InsertionElectrode`
(``get_capacity_grav`` / ``get_capacity_vol``), built from two entries (discharged and charged composition)
with placeholder energies: capacity does not depend on energies, so the result is exactly what the
Materials Project Battery Explorer reports for the same pair of states.

Bases (``basis``):

- ``"discharged"`` (pymatgen / MP convention, default): per gram and per cm³ of the **ion-containing
  (discharged)** material. LiCoO2 → CoO2: 274 mAh/g; Li15Si4 → Si: 1857 mAh/g.
- ``"host"``: per gram / cm³ of the **ion-free host** (framework) — the convention used for alloy anodes,
  where Si is quoted at 3579 mAh/g for Li15Si4. The host volume must be given (``host_volume_A3``), since
  it cannot be inferred from the discharged structure.

Volumetric capacity is in mAh/cm³, numerically equal to Ah/L (seed 002 screens > 800 Ah/L). The charge
per ion is pymatgen's (the highest oxidation state of the element: Li, Na, K 1; Mg, Ca, Zn 2; Al 3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pymatgen.apps.battery.insertion_battery import InsertionElectrode
from pymatgen.core import Composition, Element, Structure
from scipy.constants import N_A
from pymatgen.entries.computed_entries import ComputedEntry

CAPACITY_BASES = ("discharged", "host")


@dataclass(frozen=True)
class ElectrodeCapacity:
    """Theoretical capacity of one charge/discharge step, with the basis it is normalised by."""

    working_ion: str
    formula_discharged: str
    formula_charged: str
    removed_fraction: float  # share of the working ion removed on charge (1 = all)
    ions_removed_per_formula: float  # per reduced framework formula unit
    gravimetric_mAh_per_g: float
    volumetric_mAh_per_cm3: float | None  # = Ah/L; None without a volume
    basis: str

    @property
    def volumetric_Ah_per_L(self) -> float | None:
        return self.volumetric_mAh_per_cm3

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _framework_factor(composition: Composition, working_ion: str) -> float:
    """pymatgen's normalisation: how many reduced framework formula units ``composition`` holds."""
    framework = Composition({el: amount for el, amount in composition.items() if el.symbol != working_ion})
    return framework.get_reduced_composition_and_factor()[1]


def charged_composition(discharged: Composition, working_ion: str, removed_fraction: float = 1.0) -> Composition:
    """``discharged`` with ``removed_fraction`` of its working ion taken out."""
    if not 0.0 < removed_fraction <= 1.0:
        raise ValueError(f"removed_fraction must be in (0, 1], got {removed_fraction}")
    n_ion = discharged[Element(working_ion)]
    remaining = n_ion * (1.0 - removed_fraction)
    amounts = {el: amount for el, amount in discharged.items() if el.symbol != working_ion}
    if remaining > 1e-9:
        amounts[Element(working_ion)] = remaining
    return Composition(amounts)


def electrode_capacity(
    discharged: Structure | Composition | str,
    working_ion: str,
    removed_fraction: float = 1.0,
    *,
    charged: Composition | str | None = None,
    volume_A3: float | None = None,
    basis: str = "discharged",
    host_volume_A3: float | None = None,
) -> ElectrodeCapacity:
    """Gravimetric and volumetric capacity for taking ``removed_fraction`` of ``working_ion`` out of
    ``discharged`` (or going to the explicit ``charged`` composition, e.g. an MP battery's charged formula).

    ``discharged`` is a structure (its volume is used) or a composition with ``volume_A3`` the volume of
    that composition as written (optional; without it the volumetric capacity is None). With
    ``basis="host"``, the normalising mass is the ion-free framework and ``host_volume_A3`` is the volume of
    ``discharged``'s framework as written (e.g. 4 Si atoms of Li15Si4: 4 × 20.0 Å³).
    """
    if basis not in CAPACITY_BASES:
        raise ValueError(f"basis must be one of {CAPACITY_BASES}, got {basis!r}")
    if Element(working_ion).symbol not in {el.symbol for el in Element}:
        raise ValueError(f"unknown working ion {working_ion!r}")
    if isinstance(discharged, Structure):
        volume_A3 = discharged.volume if volume_A3 is None else volume_A3
        composition = discharged.composition
    else:
        composition = Composition(discharged)
    if composition[Element(working_ion)] == 0:
        raise ValueError(f"{composition.reduced_formula} contains no {working_ion}: nothing to remove")
    if charged is not None:
        charged_comp = Composition(charged)
        n_dis = composition[Element(working_ion)] / _framework_factor(composition, working_ion)
        n_chg = charged_comp[Element(working_ion)] / _framework_factor(charged_comp, working_ion)
        removed_fraction = (n_dis - n_chg) / n_dis
    else:
        charged_comp = charged_composition(composition, working_ion, removed_fraction)

    norm_discharged = _framework_factor(composition, working_ion)
    norm_charged = _framework_factor(charged_comp, working_ion)
    # Placeholder energies (-1 eV/atom): both states sit on pymatgen's hull (its elements are put 10 eV
    # higher), so the electrode has exactly this one step; its voltage is meaningless and unused.
    volume_per_unit = None if volume_A3 is None else volume_A3 / norm_discharged
    entry_discharged = ComputedEntry(composition, -1.0 * composition.num_atoms, data={"volume": volume_per_unit})
    entry_charged = ComputedEntry(
        charged_comp, -1.0 * charged_comp.num_atoms,
        data={"volume": volume_per_unit},  # rigid host: pymatgen normalises by the discharged volume anyway
    )
    electrode = InsertionElectrode.from_entries([entry_charged, entry_discharged], ComputedEntry(working_ion, 0.0))
    if len(electrode.voltage_pairs) != 1:
        raise ValueError(f"expected one step between {charged_comp.formula} and {composition.formula}")
    gravimetric = float(electrode.get_capacity_grav())
    volumetric = float(electrode.get_capacity_vol()) if volume_per_unit is not None else None
    pair = electrode.voltage_pairs[0]

    if basis == "host":
        framework = charged_composition(composition, working_ion, 1.0)
        host_mass_per_unit = framework.weight / norm_discharged
        gravimetric *= pair.mass_discharge / host_mass_per_unit
        # The host volume cannot be derived from the discharged structure: without it, no volumetric value.
        volumetric = None if host_volume_A3 is None else float(pair.mAh) / (host_volume_A3 / norm_discharged) * 1e24 / N_A
    return ElectrodeCapacity(
        working_ion=working_ion,
        formula_discharged=composition.reduced_formula,
        formula_charged=charged_comp.reduced_formula,
        removed_fraction=float(removed_fraction),
        ions_removed_per_formula=float(
            composition[Element(working_ion)] / norm_discharged - charged_comp[Element(working_ion)] / norm_charged
        ),
        gravimetric_mAh_per_g=gravimetric,
        volumetric_mAh_per_cm3=volumetric,
        basis=basis,
    )


def gravimetric_capacity_mAh_per_g(
    composition: Composition | str, working_ion: str, removed_fraction: float = 1.0, basis: str = "discharged"
) -> float:
    """Shortcut: gravimetric capacity only (see :func:`electrode_capacity`)."""
    return electrode_capacity(composition, working_ion, removed_fraction, basis=basis).gravimetric_mAh_per_g


def volumetric_capacity_Ah_per_L(structure: Structure, working_ion: str, removed_fraction: float = 1.0) -> float:
    """Shortcut: volumetric capacity (Ah/L = mAh/cm³) per volume of the discharged structure."""
    value = electrode_capacity(structure, working_ion, removed_fraction).volumetric_mAh_per_cm3
    assert value is not None  # a structure always has a volume
    return value
