"""The declared columns of each discovery step match what the step really writes."""

import pytest
from pymatgen.core import Lattice, Structure

from battgen.batch import StructureBatch
from battgen.columns import (
    GENERATOR_COLUMNS,
    RELAX_COLUMNS,
    SUBSTITUTION_COLUMNS,
    columns,
    generated_columns,
    unknown_selection_columns,
)


def test_substitution_rows_carry_exactly_the_declared_columns():
    from battgen.generate.substitution import SubstitutionGenerator

    licoo2 = Structure(Lattice.hexagonal(2.82, 14.05), ["Li", "Co", "O", "O"],
                       [[0, 0, 0], [0, 0, 0.5], [0, 0, 0.26], [0, 0, 0.74]])
    seeds = StructureBatch([licoo2], [{"row_id": "LiCoO2"}])
    generated = SubstitutionGenerator().generate(seeds, n=5, conditions={"threshold": 1e-4}, seed=1)
    assert len(generated) > 0
    for meta in generated.meta:
        assert set(meta) == set(SUBSTITUTION_COLUMNS)


def test_relax_columns_are_the_relaxation_record():
    from battgen.mlip.relax import RELAX_COLUMNS as used_by_relax

    assert used_by_relax is RELAX_COLUMNS


def test_generated_columns_are_common_to_every_generator():
    both = generated_columns(["substitution", "cdvae"])
    assert "row_id" in both and "generator" in both
    assert "substitution_probability" not in both  # cdvae rows have none: a selection on it drops them
    assert "predicted_band_gap_eV" not in both
    assert "predicted_band_gap_eV" in generated_columns(["cdvae"])
    assert set(GENERATOR_COLUMNS) == {"substitution", "cdvae", "llm"}


def test_unknown_selection_columns_names_each_bad_key():
    available = columns(["e_above_hull_eV_per_atom", "energy_eV"], ["predicted_"])
    settings = {"sort_by": "e_above_hull", "max_values": {"e_above_hull_eV_per_atom": 0.1, "energy": 1.0},
                "min_values": {"predicted_voltage_V": 3.0}}
    problems = unknown_selection_columns(settings, available)
    assert [(p.key, p.column) for p in problems] == [("sort_by", "e_above_hull"), ("max_values.energy", "energy")]
    assert unknown_selection_columns({"sort_by": None, "top_k": 3}, available) == []
    assert "predicted_" in available.describe()


@pytest.mark.parametrize("column", [None, 3, ""])
def test_non_string_columns_are_unknown(column):
    assert column not in columns(["a"], ["p"])
