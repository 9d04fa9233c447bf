"""The embedded known-materials reference: format checks, the energy rebuild against pymatgen, novelty of
known compounds made by substitution, and E_hull of known metastable polymorphs against MP's values."""

from __future__ import annotations

import gzip
import hashlib
import json
import statistics

import pytest
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Composition
from pymatgen.entries.computed_entries import ComputedEntry

from battgen.batch import StructureBatch
from battgen.generate.substitution import SubstitutionGenerator
from battgen.known_materials import (
    DEFAULT_PATH,
    FORMAT,
    KnownMaterials,
    KnownMaterialsFormatError,
    annotate_against_known,
)
from battgen.screen.pipeline import run_step


@pytest.fixture(scope="module")
def known() -> KnownMaterials:
    return KnownMaterials.load()


def _lines() -> list[str]:
    return gzip.decompress(DEFAULT_PATH.read_bytes()).decode().splitlines()


def test_embedded_reference_header_and_size(known):
    assert DEFAULT_PATH.stat().st_size <= 8 * 1024 * 1024
    description = known.describe()
    assert description["version"] == 1 and "CC-BY-4.0" in description["licence"]
    assert description["n_records"] == len(known.records) > 10_000
    assert description["n_structures"] == len(known.structure_batch()) > 5_000
    assert description["n_energies"] == sum(r["energy_per_atom_eV"] is not None for r in known.records) > 3_000
    # MP's elemental ground states: every element a battery chemist uses is a hull corner
    elements = {r["chemical_system"] for r in known.records if "-" not in r["chemical_system"]
                and r["energy_per_atom_eV"] is not None}
    assert {"Li", "Na", "K", "Mg", "Ca", "Zn", "Al", "O", "F", "S", "P", "Fe", "Mn", "Co", "Ni", "Ti", "V"} <= elements


@pytest.mark.parametrize("mutate, message", [
    (lambda lines: [json.dumps({**json.loads(lines[0]), "format": "battgen.structure_batch"}), *lines[1:]],
     "not a battgen.known_materials file"),
    (lambda lines: [json.dumps({**json.loads(lines[0]), "version": 2}), *lines[1:]], "version 2"),
    (lambda lines: lines[:100], "truncated"),
    (lambda lines: [lines[0], '{"material_id": "mp-1"}', *lines[2:]], "lacks"),
])
def test_wrong_format_or_version_is_refused(tmp_path, mutate, message):
    path = tmp_path / "reference.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(mutate(_lines())).encode()))
    with pytest.raises(KnownMaterialsFormatError, match=message):
        KnownMaterials.load(path)


def test_not_gzip_is_refused(tmp_path):
    path = tmp_path / "reference.jsonl.gz"
    path.write_text(json.dumps({"format": FORMAT, "version": 1}))
    with pytest.raises(KnownMaterialsFormatError, match="not a gzipped"):
        KnownMaterials.load(path)


def test_embedded_file_was_built_from_the_shared_data(known, shared_data):
    """The header's input checksums match the shared data, so the build command reproduces the file."""
    for relative, digest in known.header["build"]["sources"].items():
        assert hashlib.sha256((shared_data / relative).read_bytes()).hexdigest() == digest, relative


def test_energy_rebuild_matches_pymatgen(shared_data):
    """E/atom = E_f/atom + sum x_i mu_i (MP elemental references) vs pymatgen's MP2020-processed entries."""
    from battgen.known_materials.build import rebuild_check, rebuild_energy_per_atom

    check = rebuild_check(shared_data)
    assert check["n_pairs"] >= 15
    assert check["median_abs_delta_meV_per_atom"] < 2.0
    # most pairs agree to a few meV/atom; an MP recalculation after the CSV was drawn is the exception
    assert statistics.mean(abs(p["delta_meV_per_atom"]) < 5 for p in check["pairs"]) >= 0.9
    # by hand: Ef = 0 gives the composition-weighted elemental energies
    mu = {"Li": -1.9, "O": -4.9}
    assert rebuild_energy_per_atom("Li2O", 0.0, mu) == pytest.approx((2 * -1.9 - 4.9) / 3)
    assert rebuild_energy_per_atom("Li2O", -2.0, mu) == pytest.approx((2 * -1.9 - 4.9) / 3 - 2.0)
    assert rebuild_energy_per_atom("LiO", 0.0, {"Li": -1.9}) is None  # no O reference


def _reference_structure(known, material_id):
    batch = known.structure_batch()
    return batch.structures[batch.index_of(material_id)].copy()  # the cached batch must stay as loaded


def test_known_compounds_made_by_substitution_are_rejected_as_known(known):
    """Substitution on known hosts makes compounds that are in the reference: novelty names their MP id."""
    seeds = StructureBatch([_reference_structure(known, "mp-22862"), _reference_structure(known, "mp-1265")],
                           [{"row_id": "NaCl-seed"}, {"row_id": "MgO-seed"}])
    generated = SubstitutionGenerator().generate(seeds, 200, {"max_per_seed": 100, "threshold": 1e-4}, seed=0)
    in_reference = [i for i, s in enumerate(generated.structures)
                    if any(r["structure"] for r in known.by_formula.get(s.composition.reduced_formula, []))]
    assert len(in_reference) >= 5, [s.composition.reduced_formula for s in generated.structures]
    result = run_step("novelty", generated, reference=known.structure_batch())
    rejected = {meta["row_id"]: meta["reject_reason"] for meta in result.rejected.meta}
    # rock-salt halides and oxides of the reference (LiCl, KCl, NaF, CaO, ...) are all rock salt in MP too
    rock_salt_known = [generated.meta[i]["row_id"] for i in in_reference]
    matched = [row for row in rock_salt_known if row in rejected]
    assert len(matched) >= 0.8 * len(rock_salt_known), (rock_salt_known, rejected)
    for row in matched:
        formula = generated.get(row)[1].composition.reduced_formula
        ids = {r["material_id"] for r in known.by_formula[formula]}
        assert rejected[row].removeprefix("matches reference ") in ids


def test_metastable_polymorph_matches_mp_e_hull(known, shared_data):
    """Known metastable polymorphs: E_hull against the reference within 0.05 eV/atom of MP's value.

    Li4Fe3O8 (mp-771986) enters as a candidate would: its raw GGA+U energy, corrected the MP2020 way
    from its structure alone; MP's value is pymatgen's hull of MP's whole Li-Fe-O entry set. Mn2O3
    (mp-1306224) is checked against the E_hull MP-20 records for it.
    """
    from monty.json import MontyDecoder

    from battgen.stability.hull import _quiet_process

    with gzip.open(shared_data / "emmet_test_files/Li-Fe-O.json.gz", "rt") as handle:
        raw = MontyDecoder().process_decoded(json.load(handle))
    processed = _quiet_process(raw)
    mp_hull = PhaseDiagram(processed)
    entry = next(e for e in raw if e.entry_id == "mp-771986")
    mp_value = mp_hull.get_e_above_hull(next(e for e in processed if e.entry_id == "mp-771986"))
    assert mp_value > 0.05  # metastable
    batch = StructureBatch([entry.structure], [{"row_id": "Li4Fe3O8", "energy_eV": entry.uncorrected_energy}])
    annotated, description = annotate_against_known(batch, known)
    row = annotated.meta[0]
    assert row["e_above_hull_eV_per_atom"] == pytest.approx(mp_value, abs=0.05)
    assert row["hull_incomplete"] is False and row["hull_n_competing_compounds"] > 50
    assert row["hull_energy_correction_eV"] < 0  # MP2020 oxide + Fe U corrections were applied
    assert "mp-771986" in row["nearest_known_compound"]
    assert description["coverage"]["systems"]["Fe-Li-O"]["n_competing_compounds"] > 50

    record = next(r for r in known.records if r["material_id"] == "mp-1306224")
    composition = Composition(record["formula"])
    hull = known.hull_for(composition.chemical_system.split("-"))
    point = hull._place(ComputedEntry(composition, record["energy_per_atom_eV"] * composition.num_atoms))
    assert record["e_above_hull_mp_eV_per_atom"] > 0.02
    assert point.e_above_hull_eV_per_atom == pytest.approx(record["e_above_hull_mp_eV_per_atom"], abs=0.05)


def test_chemical_space_without_known_compounds_is_flagged_incomplete(known):
    """Ta-O has only its elements in the reference: E_hull there is a formation energy, flagged."""
    assert known.n_competing_compounds(["O", "Ta"]) == 0
    structure = _reference_structure(known, "mp-1265").copy()  # rock salt MgO -> 'TaO'
    structure.replace_species({"Mg": "Ta"})
    batch = StructureBatch([structure], [{"row_id": "TaO", "energy_eV": -10.0 * len(structure)}])
    annotated, description = annotate_against_known(batch, known)
    assert annotated.meta[0]["hull_incomplete"] is True
    assert annotated.meta[0]["e_above_hull_eV_per_atom"] is not None
    assert description["coverage"]["n_with_competing_compounds"] == 0
    assert description["label"].startswith("known materials v1")
    assert "no known compound" in annotated.meta[0]["hull_incomplete_reason"]


def test_far_below_a_known_hull_is_flagged_incomplete(known):
    """0.1 eV/atom below the known hull is beyond MLIP error: the reference misses phases (or the MLIP errs)."""
    structure = _reference_structure(known, "mp-1265")
    structure.replace_species({"Mg": "Li"})
    structure = structure * (2, 1, 1)
    structure.replace(0, "Fe")  # LiFeO2 on a rock-salt cell, in the well-covered Li-Fe-O space
    hull = known.hull_for(["Fe", "Li", "O"])
    on_hull = hull.phase_diagram.get_hull_energy_per_atom(structure.composition) * len(structure)
    rows = []
    for offset_eV_per_atom in (0.05, -0.05, -0.3):
        batch = StructureBatch([structure], [{"row_id": "x", "energy_eV": on_hull + offset_eV_per_atom * len(structure)}])
        rows.append(annotate_against_known(batch, known, None)[0].meta[0])
    assert [round(r["e_above_hull_eV_per_atom"], 3) for r in rows] == [0.05, -0.05, -0.3]
    assert [r["hull_incomplete"] for r in rows] == [False, False, True]
    assert "below the known hull" in rows[2]["hull_incomplete_reason"]


def test_screen_and_hull_commands_use_the_reference_by_default(tmp_path, known):
    from battgen.cli import EXIT_INVALID_INPUT, EXIT_OK, run_command

    lif = _reference_structure(known, "mp-1138")
    lif.scale_lattice(lif.volume * 1.04)
    new = _reference_structure(known, "mp-1138")
    new.replace_species({"Li": "Cs", "F": "At"})
    StructureBatch([lif, new], [{"row_id": "lif", "energy_eV": -4.8 * len(lif)},
                                {"row_id": "csat", "energy_eV": -3.0 * len(new)}]).write(tmp_path / "in.jsonl.gz")
    code, summary = run_command("screen", {"input": "in.jsonl.gz"}, tmp_path)
    assert code == EXIT_OK, summary
    assert [step["step"] for step in summary["outputs"]["funnel"]][-1] == "novelty"
    assert summary["outputs"]["known_materials"]["version"] == 1
    rejected = StructureBatch.read(tmp_path / "rejected.jsonl.gz").meta
    assert [(m["row_id"], m["reject_reason"]) for m in rejected] == [("lif", "matches reference mp-1138")]

    code, summary = run_command("hull", {"structures": "in.jsonl.gz"}, tmp_path)
    assert code == EXIT_OK, summary
    rows = {m["row_id"]: m for m in StructureBatch.read(tmp_path / "annotated.jsonl.gz").meta}
    assert rows["lif"]["relaxed_matches_known"] == "mp-1138" and rows["lif"]["hull_incomplete"] is False
    assert rows["csat"]["hull_incomplete"] is True  # no known Cs-At compound
    description = json.loads((tmp_path / "hull.json").read_text())
    assert description["label"].startswith("known materials v1") and "coverage" in description
    assert summary["outputs"]["n_hull_incomplete"] == 1

    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress(b'{"format": "battgen.known_materials", "version": 9}\n'))
    for command, config in (("screen", {"input": "in.jsonl.gz"}), ("hull", {"structures": "in.jsonl.gz"})):
        code, summary = run_command(command, {**config, "known_materials": "bad.jsonl.gz"}, tmp_path)
        assert code == EXIT_INVALID_INPUT and "version 9" in summary["error"]


def test_chgnet_energies_of_mp_ground_states_sit_on_the_reference_hull(known):
    """CHGNet learned MPtrj's MP2020-corrected energies: MP's own ground states, as CHGNet sees them, lie
    within 0.05 eV/atom of the MP2020 hull without a further correction (and far below it with one)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from battgen.known_materials import candidate_compatibility_for
    from battgen.mlip.relax import load_relax_mlip

    assert candidate_compatibility_for("chgnet") is None and candidate_compatibility_for("m3gnet") == "MP2020"
    calculator, _ = load_relax_mlip("chgnet")
    ids = ["mp-18773", "mp-1138", "mp-22862", "mp-1265"]  # WO3, LiF, NaCl, MgO
    structures, meta = [], []
    for material_id in ids:
        structure = _reference_structure(known, material_id)
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = calculator
        structures.append(structure)
        meta.append({"row_id": material_id, "energy_eV": float(atoms.get_potential_energy())})
    as_predicted, _ = annotate_against_known(StructureBatch(structures, meta), known, candidate_compatibility_for("chgnet"))
    assert all(abs(m["e_above_hull_eV_per_atom"]) < 0.05 for m in as_predicted.meta), as_predicted.meta
    corrected_twice, _ = annotate_against_known(StructureBatch(structures, meta), known, "MP2020")
    wo3 = corrected_twice.meta[0]
    assert wo3["e_above_hull_eV_per_atom"] < -1.0  # the MP2020 oxide + W U corrections counted twice


def test_a_user_reference_sharing_mp_ids_with_the_known_materials_combines(known):
    """A seed file of MP structures (row_id = MP id) beside the embedded reference: one row per material."""
    from battgen.screen.pipeline import combined_reference

    known_batch = known.structure_batch()
    given = known_batch.select([index < 3 for index in range(len(known_batch))])
    combined = combined_reference(known_batch, given)
    assert len(combined) == len(known_batch)
    assert [m["row_id"] for m in combined.meta][-3:] == [m["row_id"] for m in given.meta]
    assert combined_reference(known_batch, None) is known_batch
