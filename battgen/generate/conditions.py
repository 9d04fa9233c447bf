"""Conditions a generator can be steered to (seed 004 §2.4, Con-CDVAE; seed 000 property targets).

Scalar targets, each with its unit in the name:

- ``formation_energy_per_atom_eV``, ``band_gap_eV``, ``e_above_hull_eV_per_atom``: read from row
  metadata (DFT labels of the training data; a predictor's values for generated rows).
- ``gravimetric_capacity_mAh_per_g``: theoretical capacity for full removal of the working ion,
  per gram of the ion-containing (discharged) material as pymatgen / the MP Battery Explorer define it,
  computed from the composition when the metadata lacks it.
- ``channel_radius_A``: radius of the largest free sphere that can pass through the framework with the
  working ion removed (Zeo++ through ``pymatgen.io.zeopp``; seed 004 uses CAVD's R_t, which also
  describes the bottleneck a migrating ion must pass), computed when the metadata lacks it.

Element constraints (``required_elements`` / ``forbidden_elements``) are checked on compositions.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from typing import Any

from pymatgen.core import Composition, Element, Structure

from battgen.batch import StructureBatch
from battgen.contracts.ions import ion_charges

SCALAR_CONDITIONS = (
    "formation_energy_per_atom_eV",
    "band_gap_eV",
    "e_above_hull_eV_per_atom",
    "gravimetric_capacity_mAh_per_g",
    "channel_radius_A",
)
ELEMENT_CONDITIONS = ("required_elements", "forbidden_elements")
# Formal charges of the working ions from pymatgen (battgen.contracts.ions), not a table of our own.
WORKING_ION_CHARGES = ion_charges()


def gravimetric_capacity_mAh_per_g(composition: Composition, working_ion: str = "Li") -> float:
    """Capacity for removing every working ion, per gram of the ion-containing material (0 without ion);
    pymatgen's InsertionElectrode conventions through :mod:`battgen.electrochem.capacity`."""
    from battgen.electrochem.capacity import electrode_capacity

    if working_ion not in WORKING_ION_CHARGES:
        raise ValueError(f"unknown working ion {working_ion!r}; known: {sorted(WORKING_ION_CHARGES)}")
    if composition[Element(working_ion)] == 0:
        return 0.0
    return electrode_capacity(composition, working_ion).gravimetric_mAh_per_g


@contextlib.contextmanager
def _quiet_c_stdout():
    """Silence output written by C code (Zeo++) to file descriptor 1."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def framework_radii_A(structure: Structure) -> dict[str, float]:
    """Per-element radii for Zeo++: average ionic radius, the atomic radius where no ionic one is known."""
    radii = {}
    for element in structure.composition.elements:
        ionic = float(element.average_ionic_radius or 0.0)
        radii[element.symbol] = ionic if ionic > 0 else float(element.atomic_radius or 1.0)
    return radii


def channel_radius_A(structure: Structure, working_ion: str = "Li") -> float:
    """Largest free-sphere radius (Å) through the framework left when the working ion is removed, with
    ionic radii for the framework atoms (:func:`framework_radii_A`)."""
    from pymatgen.io.zeopp import get_free_sphere_params

    framework = structure.copy()
    framework.remove_species([working_ion])
    if len(framework) == 0:
        raise ValueError("no framework left after removing the working ion")
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch), _quiet_c_stdout():
        params = get_free_sphere_params(framework, rad_dict=framework_radii_A(framework))  # writes temp files in CWD
    return float(params["free_sph_max_dia"]) / 2.0


def condition_value(key: str, meta: dict[str, Any], structure: Structure, working_ion: str = "Li") -> float | None:
    """The value of scalar condition ``key`` for one row (metadata first, computed where possible)."""
    if key not in SCALAR_CONDITIONS:
        raise ValueError(f"unknown condition {key!r}; known: {SCALAR_CONDITIONS}")
    value = meta.get(key)
    if value is not None:
        return float(value)
    if key == "gravimetric_capacity_mAh_per_g":
        return gravimetric_capacity_mAh_per_g(structure.composition, working_ion)
    if key == "channel_radius_A":
        try:
            return channel_radius_A(structure, working_ion)
        except Exception:  # noqa: BLE001 - Zeo++ fails on some cells; the value is then unknown
            return None
    return None


def condition_columns(batch: StructureBatch, keys: list[str], working_ion: str = "Li") -> dict[str, list[float | None]]:
    """Per-row values of every condition in ``keys`` (None where unknown)."""
    return {key: [condition_value(key, m, s, working_ion) for m, s in batch] for key in keys}


def validate_element_conditions(conditions: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``required_elements`` and ``forbidden_elements`` as sorted symbol lists (ValueError on bad input)."""
    lists = []
    for key in ELEMENT_CONDITIONS:
        value = conditions.get(key) or []
        if isinstance(value, str):
            raise ValueError(f"{key} must be a list of element symbols, got the string {value!r}")
        for symbol in value:
            if not Element.is_valid_symbol(str(symbol)):
                raise ValueError(f"{key}: {symbol!r} is not an element symbol")
        lists.append(sorted({str(s) for s in value}))
    overlap = set(lists[0]) & set(lists[1])
    if overlap:
        raise ValueError(f"element(s) {sorted(overlap)} both required and forbidden")
    return lists[0], lists[1]


def satisfies_element_conditions(composition: Composition, required: list[str], forbidden: list[str]) -> bool:
    symbols = {el.symbol for el in composition.elements}
    return all(s in symbols for s in required) and not any(s in symbols for s in forbidden)


def target_error(value: float | None, target: float) -> float:
    """|value − target| (nan when the value is unknown): how close a sample landed to its target."""
    return math.nan if value is None else abs(float(value) - float(target))
