"""Screening benchmark: 10,000 generated structures vs >= 5,000 real reference structures.

Generated set (built from real MP structures in the shared data, not timed): probability-guided
substitutions of real hosts, perturbed / strained / supercell copies of those and of reference structures
(duplicates and known materials the funnel must catch), overlapping atoms (invalid) and random element swaps
(mostly charge-invalid). Reference set: MP-20 mini (SLICES) + the MP-40 Chemeleon test CSVs, deduplicated by
``material_id``.

Timed: ``screen_batch`` (validity -> SMACT -> uniqueness -> novelty) on all 10,000 rows, with ``--workers``
processes for the matching steps (default 2, the cores of the project's machine; 1 = one process). Also
reported: CPU seconds of this process and its workers, and the 1-minute load average before and after (the
machine is shared: wall seconds on a loaded machine are not comparable with a quiet one).
Naive baseline: plain pairwise ``StructureMatcher().fit`` for uniqueness (each row against every earlier
unique row) and novelty (each row against the reference in order, stopping at the first match). Running it
in full would take hours, so its cost is measured on random pairs of the same data and scaled by the exact
number of ``fit`` calls the naive loops would make on the full run (counted from the decisions, which
include the early stop at the first match). Identical decisions are checked by running both
implementations on random subsets (plus, for novelty, the references our run matched to them, so that
positives are tested too).

Usage: ``python benchmarks/screening.py [--n 10000] [--seed 0] [--workers 2] [--check-serial]``; last line:
``seconds=<ours> speedup=<naive/ours> identical=<true|false> workers=<n> cpu_s=<s> load_avg=<before>/<after>``
(``--check-serial`` also runs the funnel in one process and requires the same decisions for all rows).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import time
import warnings
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from pymatgen.core import Element, Structure

from battgen.batch import StructureBatch
from battgen.generate.substitution import SubstitutionGenerator
from battgen.screen.novelty import (
    MatchIndex,
    find_duplicates,
    make_matcher,
    naive_duplicates,
    naive_known_matches,
)
from battgen.screen.pipeline import screen_batch

REPO_ROOT = Path(__file__).resolve().parents[1]
csv.field_size_limit(sys.maxsize)


def shared_data_dir() -> Path:
    return Path(os.environ.get("BATTGEN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def _parse(item: tuple[str, str]) -> tuple[str, Structure | None]:
    material_id, cif = item
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            structure = Structure.from_str(cif, fmt="cif")
        except Exception:  # noqa: BLE001 - a bad CIF is skipped, reported in the count
            return material_id, None
    return material_id, structure.remove_oxidation_states() if structure.is_ordered else None


def load_reference(data: Path) -> StructureBatch:
    files = [data / "mp20_mini_slices" / "raw_mp20_dataset_mini.csv", *sorted((data / "mp40_chemeleon").glob("*.csv"))]
    cifs: dict[str, str] = {}
    for path in files:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                cifs.setdefault(row["material_id"], row["cif"])
    with Pool(2) as pool:  # CIF parsing is the slow part of loading; not part of the timed screening
        parsed = pool.map(_parse, cifs.items(), chunksize=64)
    kept = [(mid, s) for mid, s in parsed if s is not None]
    return StructureBatch.from_structures(
        [s for _, s in kept], [{"row_id": mid, "material_id": mid} for mid, _ in kept]
    )


def build_generated(reference: StructureBatch, n: int, seed: int) -> StructureBatch:
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    small = [i for i, s in enumerate(reference.structures) if len(s) <= 12]
    chosen = set(pyrng.sample(small, 40))
    hosts = reference.select([i in chosen for i in range(len(reference))])
    substituted = SubstitutionGenerator().generate(hosts, int(0.3 * n), {"max_per_seed": 100}, seed)
    rows: list[tuple[Structure, dict]] = [(s, {"kind": "substitution"}) for s in substituted.structures]

    def pick(structures):
        return structures[int(rng.integers(len(structures)))]

    ref_structures = reference.structures
    elements = [Element.from_Z(z).symbol for z in range(1, 84)]
    plan = [("perturbed_substitution", 0.2), ("reference_copy", 0.2), ("perturbed_reference", 0.15),
            ("overlapping_atom", 0.05), ("random_swap", 0.1)]
    for kind, fraction in plan:
        for _ in range(int(fraction * n)):
            if kind == "perturbed_substitution":
                s = pick(substituted.structures).copy()
                s.perturb(0.05)
            elif kind == "reference_copy":
                s = pick(ref_structures).copy()
                if len(s) <= 10 and rng.random() < 0.5:
                    s.make_supercell([1, 1, 2])
                s.apply_strain(rng.uniform(-0.03, 0.03, 3))
            elif kind == "perturbed_reference":
                s = pick(ref_structures).copy()
                s.perturb(float(rng.uniform(0.02, 0.3)))
            elif kind == "overlapping_atom":  # a second atom 0.1-0.45 Å from an existing one
                s = pick(ref_structures).copy()
                site = s[int(rng.integers(len(s)))]
                direction = rng.normal(size=3)
                offset = direction / np.linalg.norm(direction) * rng.uniform(0.1, 0.45)
                s.append(site.specie, site.coords + offset, coords_are_cartesian=True)
            else:
                s = pick(ref_structures).copy()
                old = pyrng.choice(sorted({el.symbol for el in s.composition.elements}))
                new = pyrng.choice([e for e in elements if e not in s.composition.as_dict()])
                s.replace_species({old: new})
            rows.append((s, {"kind": kind}))
    while len(rows) < n:  # top up with more perturbed substitutions
        s = pick(substituted.structures).copy()
        s.perturb(0.05)
        rows.append((s, {"kind": "perturbed_substitution"}))
    rows = rows[:n]
    order = rng.permutation(len(rows))
    return StructureBatch.from_structures([rows[i][0] for i in order], [rows[i][1] for i in order], prefix="gen")


def naive_pair_counts(uniq_in: StructureBatch, duplicate_of: list, novelty_in: StructureBatch, known: list,
                      reference_ids: list[str]) -> tuple[int, int]:
    """``fit`` calls the naive loops make: against every earlier unique row / the reference up to a match."""
    unique_so_far, uniqueness_pairs = 0, 0
    position = {row_id: i for i, row_id in enumerate(uniq_in.row_ids)}
    unique_positions: list[int] = []
    for row_id, match in zip(uniq_in.row_ids, duplicate_of):
        if match is None:
            uniqueness_pairs += unique_so_far
            unique_so_far += 1
            unique_positions.append(position[row_id])
        else:
            # naive stops at the matched representative: count the unique rows up to and including it
            uniqueness_pairs += sum(1 for p in unique_positions if p <= position[match])
    ref_position = {mid: i for i, mid in enumerate(reference_ids)}
    novelty_pairs = sum(len(reference_ids) if m is None else ref_position[m] + 1 for m in known)
    return uniqueness_pairs, novelty_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--naive-queries", type=int, default=20, help="generated rows in the naive novelty sample")
    parser.add_argument("--naive-references", type=int, default=600, help="reference rows in that sample")
    parser.add_argument("--naive-unique-rows", type=int, default=150, help="rows in the naive uniqueness sample")
    parser.add_argument("--workers", type=int, default=2, help="processes for uniqueness + novelty (1: one)")
    parser.add_argument("--check-serial", action="store_true",
                        help="also run the funnel in one process and compare every decision")
    args = parser.parse_args()
    data = shared_data_dir()

    started = time.perf_counter()
    reference = load_reference(data)
    print(f"reference: {len(reference)} structures (unique material_id) loaded in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    generated = build_generated(reference, args.n, args.seed)
    kinds = {k: generated.column("kind").count(k) for k in sorted(set(generated.column("kind")))}
    print(f"generated: {len(generated)} structures in {time.perf_counter() - started:.1f} s: {kinds}")

    # --- ours (timed) ---
    load_before = os.getloadavg()[0]
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    result = screen_batch(generated, reference=reference, progress=False, workers=args.workers)
    ours = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu_before
    load_after = os.getloadavg()[0]
    for step in result.steps:
        print(f"  {step.step:18s} {step.n_in:6d} -> {len(step.passed):6d}   {step.seconds:6.1f} s")
    print(f"ours: {ours:.1f} s wall for the whole funnel, {cpu:.1f} CPU s (this process + {args.workers} workers),"
          f" load average {load_before:.1f} before / {load_after:.1f} after on {os.cpu_count()} cores")
    identical_full = True
    if args.check_serial:
        started = time.perf_counter()
        serial = screen_batch(generated, reference=reference, progress=False, workers=1)
        identical_full = _decisions(serial) == _decisions(result)
        print(f"one process: {time.perf_counter() - started:.1f} s, same decisions for all rows: {identical_full}")

    # --- naive: exact pair counts on the full run, cost per pair on a random sample ---
    uniq_step, nov_step = result.step("uniqueness"), result.step("novelty")
    uniq_in = StructureBatch.concatenate([uniq_step.passed, uniq_step.rejected])
    uniq_in = uniq_in.select([True] * len(uniq_in))
    order = {row_id: i for i, row_id in enumerate(result.step("charge_neutrality").passed.row_ids)}
    uniq_in = StructureBatch([uniq_in.structures[i] for i in sorted(range(len(uniq_in)), key=lambda i: order[uniq_in.row_ids[i]])],
                             [uniq_in.meta[i] for i in sorted(range(len(uniq_in)), key=lambda i: order[uniq_in.row_ids[i]])])
    reasons = {m["row_id"]: m.get("reject_reason") for m in uniq_in.meta}
    duplicate_of = [None if reasons[r] is None else reasons[r].removeprefix("duplicate of ") for r in uniq_in.row_ids]
    nov_reasons = {m["row_id"]: m["reject_reason"] for m in nov_step.rejected.meta}
    known = [nov_reasons[r].removeprefix("matches reference ") if r in nov_reasons else None
             for r in uniqueness_passed_ids(uniq_step)]
    reference_ids = reference.row_ids
    uniqueness_pairs, novelty_pairs = naive_pair_counts(uniq_in, duplicate_of, uniq_step.passed, known, reference_ids)

    rng = random.Random(args.seed + 1)
    matcher = make_matcher()
    sample_queries = rng.sample(range(len(uniq_step.passed)), args.naive_queries)
    sample_refs = rng.sample(range(len(reference)), args.naive_references)
    queries = [uniq_step.passed.structures[i] for i in sample_queries]
    refs = [reference.structures[i] for i in sample_refs]
    ref_ids = [reference_ids[i] for i in sample_refs]
    started = time.perf_counter()
    naive_known = naive_known_matches(queries, refs, ref_ids, matcher)
    naive_novelty_time = time.perf_counter() - started
    novelty_sample_pairs = sum(len(refs) if m is None else ref_ids.index(m) + 1 for m in naive_known)
    # positives: add the references our full run matched these queries to, and compare both again
    extra = [known[i] for i in sample_queries if known[i] is not None and known[i] not in ref_ids]
    refs_plus = refs + [reference.get(mid)[1] for mid in extra]
    ids_plus = ref_ids + extra
    index = MatchIndex(make_matcher())
    for key, s in zip(ids_plus, refs_plus):
        index.add(key, s)
    identical_novelty = [index.find(s) for s in queries] == naive_known_matches(queries, refs_plus, ids_plus, matcher)
    n_positive = sum(m is not None for m in naive_known_matches(queries, refs_plus, ids_plus, matcher))

    start = rng.randrange(max(1, len(uniq_in) - args.naive_unique_rows))
    window = list(range(start, min(len(uniq_in), start + args.naive_unique_rows)))
    # a contiguous window keeps the real duplicate density of the ordered batch
    window_structures = [uniq_in.structures[i] for i in window]
    window_ids = [uniq_in.row_ids[i] for i in window]
    started = time.perf_counter()
    naive_dups = naive_duplicates(window_structures, window_ids, matcher)
    naive_uniqueness_time = time.perf_counter() - started
    identical_uniqueness = find_duplicates(window_structures, window_ids, make_matcher()) == naive_dups
    # positives: 40 random duplicate rows with their representatives + 80 random rows, in batch order
    duplicates = [i for i, m in enumerate(duplicate_of) if m is not None]
    picked = set(rng.sample(duplicates, min(40, len(duplicates)))) | set(rng.sample(range(len(uniq_in)), 80))
    picked |= {uniq_in.row_ids.index(duplicate_of[i]) for i in list(picked) if duplicate_of[i] is not None}
    subset = sorted(picked)
    subset_structures = [uniq_in.structures[i] for i in subset]
    subset_ids = [uniq_in.row_ids[i] for i in subset]
    naive_subset = naive_duplicates(subset_structures, subset_ids, matcher)
    identical_uniqueness &= find_duplicates(subset_structures, subset_ids, make_matcher()) == naive_subset
    n_dup_subset = sum(m is not None for m in naive_subset)
    unique_count, uniqueness_sample_pairs = 0, 0
    for match in naive_dups:
        uniqueness_sample_pairs += unique_count if match is None else window_ids.index(match) + 1  # upper bound
        unique_count += match is None

    per_pair_novelty = naive_novelty_time / novelty_sample_pairs
    per_pair_uniqueness = naive_uniqueness_time / max(1, uniqueness_sample_pairs)
    validity_charge = result.step("validity").seconds + result.step("charge_neutrality").seconds
    naive = validity_charge + uniqueness_pairs * per_pair_uniqueness + novelty_pairs * per_pair_novelty
    print(
        f"naive (estimated): {naive:.0f} s = validity+SMACT {validity_charge:.1f} s (same code)"
        f" + {uniqueness_pairs:,} uniqueness fit calls x {per_pair_uniqueness * 1e6:.0f} us"
        f" + {novelty_pairs:,} novelty fit calls x {per_pair_novelty * 1e6:.0f} us"
    )
    print(f"  per-call costs measured on {uniqueness_sample_pairs:,} pairs ({len(window)} consecutive rows,"
          f" {sum(m is not None for m in naive_dups)} duplicates, {naive_uniqueness_time:.1f} s) and "
          f"{novelty_sample_pairs:,} pairs ({len(queries)} random rows x {len(refs)} random references,"
          f" {naive_novelty_time:.1f} s)")
    print(f"  identical decisions: uniqueness window + {len(subset)}-row subset with {n_dup_subset} duplicates"
          f" {identical_uniqueness}, novelty sample {identical_novelty}"
          f" ({n_positive} of {len(queries)} rows match a reference)")
    identical = identical_uniqueness and identical_novelty and identical_full
    print(f"seconds={ours:.1f} speedup={naive / ours:.0f} identical={str(identical).lower()} workers={args.workers}"
          f" cpu_s={cpu:.1f} load_avg={load_before:.1f}/{load_after:.1f}")


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _decisions(result) -> dict:
    return {meta["row_id"]: meta.get("reject_reason") for meta in result.rejected.meta}


def uniqueness_passed_ids(step) -> list[str]:
    return step.passed.row_ids


if __name__ == "__main__":
    main()
