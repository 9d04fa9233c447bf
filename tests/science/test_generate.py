"""Generator interface and probability-guided substitution."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from battgen.batch import StructureBatch
from battgen.cli import EXIT_INVALID_INPUT, EXIT_OK, run_command
from battgen.generate.base import UnknownGeneratorError, load_generator
from battgen.generate.substitution import SubstitutionGenerator
from battgen.screen.charge import is_charge_neutral


@pytest.fixture(scope="module")
def seeds():
    licl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.13), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    lco = Structure.from_spacegroup(
        "R-3m", Lattice.hexagonal(2.82, 14.05), ["Li", "Co", "O"], [[0, 0, 0], [0, 0, 0.5], [0, 0, 0.26]]
    )
    si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    return StructureBatch.from_structures([licl, lco, si], [{"row_id": "licl"}, {"row_id": "lco"}, {"row_id": "si"}])


@pytest.fixture(scope="module")
def generator():
    return SubstitutionGenerator()


def test_load_generator_by_both_names():
    assert isinstance(load_generator("substitution"), SubstitutionGenerator)
    assert isinstance(load_generator("battgen.substitution"), SubstitutionGenerator)
    with pytest.raises(UnknownGeneratorError, match=r"registered: .*battgen\.substitution"):
        load_generator("cdvae-does-not-exist")


def test_substitution_rows_and_known_values(generator, seeds):
    batch = generator.generate(seeds, 200, {"max_per_seed": 15}, seed=0)
    assert batch.row_ids[:2] == ["substitution-000000", "substitution-000001"]
    rows = {(m["parent_row_id"], tuple(sorted(m["substitution"].items()))): (m, s) for m, s in batch}
    meta, nacl = rows[("licl", (("Li", "Na"),))]
    assert meta["generator"] == "substitution" and meta["formula"] == "NaCl"
    # pymatgen's lambda table: P(Na+ Cl- | Li+ Cl-) (Hautier 2011)
    assert meta["substitution_probability"] == pytest.approx(0.0337, abs=2e-4)
    # Ionic-radius volume rule: NaCl / LiCl experimental ratio is (5.64/5.13)^3 = 1.33
    assert nacl.volume / seeds.get("licl")[1].volume == pytest.approx(1.33, rel=0.03)
    lifeo2 = rows[("lco", (("Co", "Fe"),))][0]
    assert lifeo2["substitution_species"] == {"Co3+": "Fe3+"}
    # isovalent only for single substitutions in ionic hosts; every composition is SMACT-valid
    for m, s in batch:
        assert is_charge_neutral(s.composition), m
    probabilities = [m["substitution_probability"] for m in batch.meta if m["parent_row_id"] == "lco"]
    assert probabilities == sorted(probabilities, reverse=True)
    # no duplicate parent+substitution
    assert len(rows) == len(batch)


def test_conditions_filter_and_determinism(generator, seeds):
    conditions = {"required_elements": ["Na"], "forbidden_elements": ["Co"], "max_per_seed": 50}
    batch = generator.generate(seeds, 100, conditions, seed=1)
    assert len(batch) > 0
    for structure in batch.structures:
        symbols = {el.symbol for el in structure.composition.elements}
        assert "Na" in symbols and "Co" not in symbols
    allowed = generator.generate(seeds, 100, {"allowed_elements": ["Li", "Na", "K", "Cl", "Br", "F"]}, seed=0)
    whitelist = {"Li", "Na", "K", "Cl", "Br", "F"}
    assert all({el.symbol for el in s.composition.elements} <= whitelist for s in allowed.structures)
    assert {m["formula"] for m in allowed.meta if m["parent_row_id"] == "licl"} == {"NaCl", "KCl", "LiBr", "LiF"}
    first = generator.generate(seeds, 10, {}, seed=3)
    assert first.meta == generator.generate(seeds, 10, {}, seed=3).meta  # deterministic for a seed
    assert len(first) == 10
    assert first.meta != generator.generate(seeds, 10, {}, seed=4).meta
    with pytest.raises(ValueError, match="unknown substitution condition"):
        generator.generate(seeds, 10, {"treshold": 0.1}, seed=0)


def test_generate_command(tmp_path, seeds):
    seeds.write(tmp_path / "seeds.jsonl.gz")
    config = {"generator": "substitution", "input": "seeds.jsonl.gz", "n": 7, "seed": 2}
    code, summary = run_command("generate", config, tmp_path)
    assert code == EXIT_OK, summary
    assert summary["outputs"]["n_generated"] == 7
    assert len(StructureBatch.read(tmp_path / "generated.jsonl.gz")) == 7
    code, summary = run_command("generate", {**config, "generator": "nope"}, tmp_path)
    assert code == EXIT_INVALID_INPUT and "registered" in summary["error"]
