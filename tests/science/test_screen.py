"""Screening filters: CDVAE validity, SMACT charge neutrality, exact-but-fast StructureMatcher dedup."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from battgen.batch import StructureBatch
from battgen.cli import EXIT_INVALID_INPUT, EXIT_OK, run_command
from battgen.screen.charge import FAILS_PAULING, NO_NEUTRAL_COMBINATION, TOO_MANY_ELEMENTS, charge_neutrality_reason
from battgen.screen.novelty import (
    MatchIndex,
    find_duplicates,
    find_known_matches,
    naive_duplicates,
    naive_known_matches,
)
from battgen.screen.pipeline import ScreenSettings, screen_batch
from battgen.screen.validity import min_interatomic_distance, structure_validity, validity_reason


def _rocksalt(a_metal: str, anion: str, a: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [a_metal, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


# --- validity ---------------------------------------------------------------------------------------
def test_min_distance_uses_periodic_images():
    # Two atoms 0.4 Å apart across the cell boundary of a 10 Å cube (0.2 and 9.8 Å along x).
    structure = Structure(Lattice.cubic(10), ["Li", "Li"], [[0.02, 0, 0], [0.98, 0, 0]])
    assert min_interatomic_distance(structure) == pytest.approx(0.4)
    assert validity_reason(structure) == "min distance 0.40 Å < 0.5 Å"
    assert not structure_validity(structure)


def test_validity_known_values(rocksalt_licl):
    assert validity_reason(rocksalt_licl) is None  # nearest Li-Cl 2.565 Å
    assert min_interatomic_distance(rocksalt_licl) == pytest.approx(5.13 / 2)
    tiny = Structure(Lattice.cubic(0.4), ["H"], [[0, 0, 0]])
    assert validity_reason(tiny) == "volume 0.064 Å³ < 0.1 Å³"
    # CDVAE ignores a site's distance to its own image; the optional stricter check does not.
    one_atom = Structure(Lattice.tetragonal(0.45, 1.0), ["H"], [[0, 0, 0]])
    assert validity_reason(one_atom) is None
    assert "own image" in validity_reason(one_atom, check_self_images=True)
    assert validity_reason(rocksalt_licl, cutoff=2.6).startswith("min distance 2.56 Å")


# --- charge neutrality --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("NaCl", None),
        ("LiCoO2", None),
        # CDVAE/SMACT give each element one oxidation state, so mixed-valence magnetite fails (known quirk).
        ("Fe3O4", NO_NEUTRAL_COMBINATION),
        ("CuZn", None),  # all-metal alloy passes (include_alloys)
        ("Si", None),  # one element passes
        ("NaCl2", NO_NEUTRAL_COMBINATION),
        ("LiNa", None),
        ("Li15Si4", NO_NEUTRAL_COMBINATION),  # Si is not a SMACT metal; Si4- gives -1 net
    ],
)
def test_smact_known_compositions(formula, expected):
    assert charge_neutrality_reason(formula) == expected


def test_smact_pauling_failure_is_named():
    # Na2Cl balances only as Na(-1)/Cl(+1)-type assignments, which put the negative charge on the less
    # electronegative element.
    assert charge_neutrality_reason("Na2Cl") == FAILS_PAULING
    assert charge_neutrality_reason("Na2Cl", use_pauling_test=False) is None
    assert charge_neutrality_reason("KNa") is None


def test_smact_refuses_to_enumerate_many_element_compositions_quickly():
    """A 14-element composition (seen in language-model output) would take SMACT hours; it is rejected
    at once with its own reason, while a 7-element oxide is still enumerated."""
    import time

    started = time.perf_counter()
    assert charge_neutrality_reason("LiNaKMgCaSrBaAlGaInTiVCrO20") == TOO_MANY_ELEMENTS
    assert time.perf_counter() - started < 1.0
    assert charge_neutrality_reason("LiNaMgAlTiFeO6") != TOO_MANY_ELEMENTS


# --- uniqueness and novelty: identical to naive pairwise fit ---------------------------------------------
def _structures_with_known_duplicates() -> tuple[list[Structure], list[str], dict[str, str | None]]:
    """~30 structures: bases, supercells, strained / rotated / perturbed copies; expected duplicate map."""
    rng = np.random.default_rng(7)
    licl, nacl, kcl = _rocksalt("Li", "Cl", 5.13), _rocksalt("Na", "Cl", 5.64), _rocksalt("K", "Cl", 6.29)
    si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rutile = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]])
    anatase = Structure.from_spacegroup("I4_1/amd", Lattice.tetragonal(3.78, 9.51), ["Ti", "O"], [[0, 0.75, 0.125], [0, 0.75, 0.3333]])
    lco = Structure.from_spacegroup("R-3m", Lattice.hexagonal(2.82, 14.05), ["Li", "Co", "O"], [[0, 0, 0], [0, 0, 0.5], [0, 0, 0.26]])
    # LiCl in the zincblende arrangement: same composition, different structure (must stay unique).
    licl_zb = Structure.from_spacegroup("F-43m", Lattice.cubic(5.13), ["Li", "Cl"], [[0, 0, 0], [0.25, 0.25, 0.25]])

    structures, ids, expected = [], [], {}

    def add(row_id, structure, duplicate_of=None):
        structures.append(structure)
        ids.append(row_id)
        expected[row_id] = duplicate_of

    for name, base in [("licl", licl), ("nacl", nacl), ("si", si), ("rutile", rutile), ("lco", lco)]:
        add(name, base)
        add(f"{name}-super", base.copy().make_supercell([2, 1, 1]), name)
        strained = base.copy()
        strained.apply_strain([0.03, -0.02, 0.01])
        add(f"{name}-strained", strained, name)
        perturbed = base.copy().make_supercell([1, 1, 2])
        perturbed.perturb(0.03, min_distance=0.01)
        add(f"{name}-perturbed", perturbed, name)
        shuffled = Structure.from_sites([base[i] for i in rng.permutation(len(base))])
        add(f"{name}-shuffled", shuffled, name)
    add("kcl", kcl)  # isostructural with LiCl but scale=True -> matches LiCl? No: different composition.
    add("cscl", cscl)
    add("anatase", anatase)  # TiO2 polymorph of rutile: same bucket, no match
    add("licl-zb", licl_zb)
    hugely_strained = licl.copy()
    hugely_strained.apply_strain([0.4, 0.0, 0.0])  # beyond ltol=0.2: distinct
    add("licl-strained40", hugely_strained)
    add("licl-scaled", licl.copy().scale_lattice(licl.volume * 1.5), "licl")  # scale=True ignores volume
    return structures, ids, expected


def test_uniqueness_known_duplicates_and_identical_to_naive():
    structures, ids, expected = _structures_with_known_duplicates()
    fast = find_duplicates(structures, ids)
    assert dict(zip(ids, fast)) == expected
    assert fast == naive_duplicates(structures, ids)


def test_novelty_identical_to_naive_and_skips_lonely_buckets():
    structures, ids, expected = _structures_with_known_duplicates()
    reference_ids = ["mp-22905", "mp-149", "mp-2657", "mp-23193-cscl"]
    reference = [structures[ids.index(k)] for k in ("licl", "si", "rutile", "cscl")]
    queries = [s for s, i in zip(structures, ids) if i not in ("licl", "si", "rutile", "cscl")]
    index = MatchIndex()
    for key, structure in zip(reference_ids, reference):
        index.add(key, structure)
    fast = [index.find(s) for s in queries]
    assert fast == naive_known_matches(queries, reference, reference_ids)
    assert fast.count("mp-22905") == 5  # super, strained, perturbed, shuffled, scaled LiCl
    assert fast.count("mp-2657") == 4 and "anatase" not in [i for i, f in zip(ids, fast) if f]
    # NaCl, LCO, KCl have no reference of their composition: decided without reducing them.
    assert index.n_reductions < len(queries) + len(reference)
    assert find_known_matches(queries, reference, reference_ids) == fast


# --- pipeline -------------------------------------------------------------------------------------------
def test_screen_batch_funnel_and_reasons(small_batch, rocksalt_licl):
    overlapping = rocksalt_licl.copy()
    overlapping.append("Li", [0.03, 0, 0])
    # Fluorite with Na on the Ca site: NaF2 has no charge-neutral assignment.
    bad_charge = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.46), ["Na", "F"], [[0, 0, 0], [0.25] * 3])
    batch = StructureBatch.concatenate([
        small_batch,
        StructureBatch.from_structures([overlapping, bad_charge], [{"row_id": "overlap"}, {"row_id": "naf2"}]),
    ])
    reference = StructureBatch.from_structures([small_batch.get("si")[1]], [{"row_id": "r0", "material_id": "mp-149"}])
    result = screen_batch(batch, reference=reference)
    assert result.funnel == [("validity", 6, 5), ("charge_neutrality", 5, 4), ("uniqueness", 4, 3), ("novelty", 3, 2)]
    reasons = {m["row_id"]: (m["rejected_by"], m["reject_reason"]) for m in result.rejected.meta}
    assert reasons == {
        "overlap": ("validity", "min distance 0.15 Å < 0.5 Å"),
        "naf2": ("charge_neutrality", NO_NEUTRAL_COMBINATION),
        "licl-strained": ("uniqueness", "duplicate of licl"),
        "si": ("novelty", "matches reference mp-149"),
    }
    assert result.passed.row_ids == ["licl", "nacl"]


def test_settings_reject_unknown_and_negative():
    with pytest.raises(ValueError, match="unknown screening setting"):
        ScreenSettings.from_dict({"cutoff": 0.5})
    with pytest.raises(ValueError, match="non-negative"):
        ScreenSettings.from_dict({"min_distance_A": -1})


def test_screen_command(tmp_path, small_batch):
    small_batch.write(tmp_path / "in.jsonl.gz")
    code, summary = run_command("screen", {"input": "in.jsonl.gz", "steps": ["validity", "uniqueness"]}, tmp_path)
    assert code == EXIT_OK, summary
    assert summary["outputs"]["funnel"][-1] == {"step": "uniqueness", "n_in": 4, "n_out": 3}
    assert StructureBatch.read(tmp_path / "rejected.jsonl.gz").meta[0]["reject_reason"] == "duplicate of licl"
    code, summary = run_command("screen", {"input": "in.jsonl.gz", "steps": ["novelty"], "known_materials": None},
                                tmp_path)
    assert code == EXIT_INVALID_INPUT and "reference" in summary["error"]
    code, _ = run_command("screen", {"input": "missing.jsonl.gz"}, tmp_path)
    assert code == EXIT_INVALID_INPUT


def test_screen_command_workers_same_decisions_and_bad_value_refused(tmp_path, small_batch):
    small_batch.write(tmp_path / "in.jsonl.gz")
    config = {"input": "in.jsonl.gz", "steps": ["validity", "uniqueness"]}
    decisions = {}
    for workers in (None, 2):
        code, summary = run_command("screen", {**config, **({"workers": workers} if workers else {})}, tmp_path)
        assert code == EXIT_OK, summary
        assert summary["outputs"]["workers"] == (workers or 1)
        decisions[workers] = [(m["row_id"], m["reject_reason"]) for m in StructureBatch.read(tmp_path / "rejected.jsonl.gz").meta]
    assert decisions[2] == decisions[None] == [("licl-strained", "duplicate of licl")]
    code, summary = run_command("screen", {**config, "workers": -1}, tmp_path)
    assert code == EXIT_INVALID_INPUT and "workers" in summary["error"]
