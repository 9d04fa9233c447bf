"""Theoretical capacities (battgen.electrochem.capacity) against known values and the MP battery tables."""

import pytest
from pymatgen.core import Composition, Lattice, Structure

from battgen.electrochem.capacity import electrode_capacity, gravimetric_capacity_mAh_per_g, volumetric_capacity_Ah_per_L


@pytest.mark.parametrize(
    ("formula", "ion", "expected_mAh_per_g"),
    [("LiCoO2", "Li", 273.84), ("LiFePO4", "Li", 169.89), ("Li15Si4", "Li", 1857.3), ("MgV2O4", "Mg", 281.85)],
)
def test_gravimetric_capacity_known_values_per_discharged_mass(formula, ion, expected_mAh_per_g):
    # LiCoO2 274, LiFePO4 170 (textbook); MgV2O4 281.85 is pymatgen's InsertionElectrode test value.
    assert gravimetric_capacity_mAh_per_g(formula, ion) == pytest.approx(expected_mAh_per_g, abs=0.05)


def test_silicon_anode_on_host_mass_basis():
    # Li15Si4: 15 e- per 4 Si = 3579 mAh/g of Si, the number quoted for Si anodes.
    assert gravimetric_capacity_mAh_per_g("Li15Si4", "Li", basis="host") == pytest.approx(3578.6, abs=0.2)


def test_partial_removal_scales_capacity_and_names_the_charged_state():
    half = electrode_capacity("LiCoO2", "Li", removed_fraction=0.5)
    assert half.gravimetric_mAh_per_g == pytest.approx(273.84 / 2, abs=0.05)
    assert Composition(half.formula_charged).almost_equals(Composition("Li0.5CoO2"))
    assert half.ions_removed_per_formula == pytest.approx(0.5)


def test_explicit_charged_formula_matches_removed_fraction():
    assert electrode_capacity("Li2MnO3", "Li", charged="LiMnO3").gravimetric_mAh_per_g == pytest.approx(
        electrode_capacity("Li2MnO3", "Li", removed_fraction=0.5).gravimetric_mAh_per_g
    )


def test_volumetric_capacity_from_structure_volume():
    licoo2 = Structure.from_spacegroup(
        "R-3m", Lattice.hexagonal(2.816, 14.05), ["Li", "Co", "O"], [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.24]]
    )
    # 1 e- per 32.16 Å3 formula unit: 96485 C/mol / 3.6 / (N_A * 32.16e-24 cm3) = 1384 mAh/cm3.
    expected = 96485.33212 / 3.6 / (6.02214076e23 * licoo2.volume / 3 * 1e-24)
    assert volumetric_capacity_Ah_per_L(licoo2, "Li") == pytest.approx(expected, rel=1e-6)
    # Gravimetric from a structure equals the one from its composition (supercell-independent).
    assert electrode_capacity(licoo2, "Li").gravimetric_mAh_per_g == pytest.approx(273.84, abs=0.05)
    assert electrode_capacity("LiCoO2", "Li").volumetric_mAh_per_cm3 is None


def test_multivalent_ion_counts_its_charge():
    # Chevrel MgMo6S8 (M = 856.5 g/mol): Mg2+ carries 2 e-, 2 F / 3.6 / M = 125.3 mAh/g.
    mg = electrode_capacity("MgMo6S8", "Mg")
    assert mg.gravimetric_mAh_per_g == pytest.approx(2 * 96485.33212 / 3.6 / 856.5, rel=1e-3)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="contains no Na"):
        electrode_capacity("LiCoO2", "Na")
    with pytest.raises(ValueError, match="removed_fraction"):
        electrode_capacity("LiCoO2", "Li", removed_fraction=0.0)
    with pytest.raises(ValueError, match="basis"):
        electrode_capacity("LiCoO2", "Li", basis="per-electron")


@pytest.mark.shared_data
def test_volumetric_and_gravimetric_match_mp_battery_table(shared_data):
    """Rows of the 2019 MP table whose discharged structure is in the shared sources by mp-id."""
    from battgen.predictors.electrode_data import build_mp_electrode_batch

    batch, _ = build_mp_electrode_batch(
        shared_data, tables=("mp_battery_2019",), sources=("mp20_mini",), progress=False
    )
    rows = [(m, s) for m, s in batch if m["structure_match"] == "material_id"][:12]
    assert len(rows) >= 10
    relative_vol_errors = []
    for meta, structure in rows:
        capacity = electrode_capacity(structure, meta["working_ion"], charged=meta["formula_charge"])
        assert capacity.gravimetric_mAh_per_g == pytest.approx(meta["capacity_grav_mAh_per_g"], rel=1e-3)
        relative_vol_errors.append(abs(capacity.volumetric_mAh_per_cm3 / meta["capacity_vol_mAh_per_cm3"] - 1))
    # Volumes differ slightly between the 2019 battery build and the structure snapshots (re-relaxations).
    assert sorted(relative_vol_errors)[len(rows) // 2] < 0.01
    assert max(relative_vol_errors) < 0.1
