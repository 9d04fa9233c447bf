"""Uniqueness within a batch and novelty against a reference set, with pymatgen's StructureMatcher.

Decisions are exactly those of naive pairwise ``StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5).fit``
(the CDVAE/MatterGen defaults), but the work is organised so it scales to 10^4 x 10^4 structures:

1. ``fit`` first compares the comparator hash of the two compositions (the fractional composition for
   the default ``SpeciesComparator``) and returns False when they differ. We therefore bucket structures
   by that hash: pairs in different buckets are never compared, and a structure alone in its bucket (no
   partner in the batch or in the reference) is decided without any further work.
2. ``fit`` then reduces each structure (Niggli + primitive cell) on every call. We do it once per
   structure, and only for structures that share a bucket with a partner, then call
   ``fit(..., skip_structure_reduction=True)`` on the reduced copies, which runs the very same code on the
   very same inputs.
3. Within a bucket, reduced structures with different site counts cannot match when neither
   ``allow_subset`` nor ``attempt_supercell`` is set (``_strict_match`` rejects unequal site counts), so
   candidates are also keyed by the reduced site count in that case.

Uniqueness is order-dependent like any greedy deduplication: row ``i`` is a duplicate of the first earlier
*unique* row it matches (so a batch of structures that chain-match A~B~C keeps A and C when C does not
match A). The naive reference implementations :func:`naive_duplicates` and :func:`naive_known_matches`
spell out that definition and are used by the tests and the benchmark.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from tqdm.auto import tqdm

# CDVAE / MatterGen / pymatgen defaults.
DEFAULT_MATCHER_SETTINGS = {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0}


def make_matcher(**settings: Any) -> StructureMatcher:
    """A StructureMatcher with the CDVAE defaults unless overridden (``ltol``, ``stol``, ``angle_tol`` ...)."""
    return StructureMatcher(**{**DEFAULT_MATCHER_SETTINGS, **settings})


def _can_match_other_sizes(matcher: StructureMatcher) -> bool:
    return bool(matcher._subset or matcher._supercell)  # noqa: SLF001 - matcher settings, read-only


class MatchIndex:
    """Structures bucketed by composition hash, reduced lazily and once, for exact ``fit`` queries.

    ``add(key, structure)`` in the order that decides "first match"; ``find(structure)`` returns the key
    of the first added structure that ``matcher.fit(structure, added)`` accepts, or None.
    """

    def __init__(self, matcher: StructureMatcher | None = None) -> None:
        self.matcher = matcher or make_matcher()
        self._buckets: dict[Hashable, list[tuple[str, Structure]]] = defaultdict(list)
        self._reduced: dict[int, Structure] = {}
        self._keepalive: list[Structure] = []  # keeps the id() cache keys valid
        self.n_fit_calls = 0
        self.n_reductions = 0

    def bucket_key(self, structure: Structure) -> Hashable:
        processed = self.matcher._process_species([structure])[0]  # noqa: SLF001 - same as fit()
        return self.matcher._comparator.get_hash(processed.composition)  # noqa: SLF001

    def reduce(self, structure: Structure) -> Structure:
        """Species processing + Niggli + primitive reduction, exactly as ``fit`` does it, cached by identity."""
        cached = self._reduced.get(id(structure))
        if cached is None:
            processed = self.matcher._process_species([structure])[0]  # noqa: SLF001
            cached = self.matcher._get_reduced_structure(processed, self.matcher._primitive_cell, True)  # noqa: SLF001
            self._reduced[id(structure)] = cached
            self._keepalive.append(structure)
            self.n_reductions += 1
        return cached

    def add(self, key: str, structure: Structure, bucket: Hashable | None = None) -> None:
        self._buckets[self.bucket_key(structure) if bucket is None else bucket].append((key, structure))

    def has_bucket(self, bucket: Hashable) -> bool:
        return bucket in self._buckets

    def find(self, structure: Structure, bucket: Hashable | None = None) -> str | None:
        bucket = self.bucket_key(structure) if bucket is None else bucket
        candidates = self._buckets.get(bucket)
        if not candidates:
            return None
        reduced = self.reduce(structure)
        same_size_only = not _can_match_other_sizes(self.matcher)
        for key, other in candidates:
            other_reduced = self.reduce(other)
            if same_size_only and len(other_reduced) != len(reduced):
                continue
            self.n_fit_calls += 1
            if self.matcher.fit(reduced, other_reduced, skip_structure_reduction=True):
                return key
        return None


def find_duplicates(
    structures: Sequence[Structure],
    row_ids: Sequence[str],
    matcher: StructureMatcher | None = None,
    progress: bool = False,
) -> list[str | None]:
    """For each structure, the row id of the first earlier unique structure it matches, else None."""
    index = MatchIndex(matcher)
    buckets = [index.bucket_key(s) for s in structures]
    bucket_sizes = Counter(buckets)
    duplicate_of: list[str | None] = []
    for row_id, structure, bucket in tqdm(
        zip(row_ids, structures, buckets), total=len(structures), desc="uniqueness", disable=not progress
    ):
        # Alone in its composition bucket: unique, and never a partner of anyone, so no reduction needed.
        match = index.find(structure, bucket) if bucket_sizes[bucket] > 1 else None
        duplicate_of.append(match)
        if match is None:
            index.add(row_id, structure, bucket)
    return duplicate_of


def find_known_matches(
    structures: Sequence[Structure],
    reference: Sequence[Structure],
    reference_ids: Sequence[str],
    matcher: StructureMatcher | None = None,
    progress: bool = False,
    index: MatchIndex | None = None,
) -> list[str | None]:
    """For each structure, the id of the first reference structure it matches (not novel), else None.

    Pass a prebuilt ``index`` (see :func:`build_reference_index`) to reuse reduced reference structures
    across calls.
    """
    if index is None:
        index = build_reference_index(reference, reference_ids, matcher)
    return [
        index.find(structure)
        for structure in tqdm(structures, desc="novelty", disable=not progress)
    ]


def build_reference_index(
    reference: Sequence[Structure], reference_ids: Sequence[str], matcher: StructureMatcher | None = None
) -> MatchIndex:
    """Bucket a reference set (cheap: compositions only; reductions happen on first use)."""
    index = MatchIndex(matcher)
    for key, structure in zip(reference_ids, reference):
        index.add(key, structure)
    return index


# --- naive reference implementations (tests, benchmark) -------------------------------------------------
def naive_duplicates(
    structures: Sequence[Structure], row_ids: Sequence[str], matcher: StructureMatcher | None = None
) -> list[str | None]:
    """Greedy deduplication with plain pairwise ``fit`` against every earlier unique structure."""
    matcher = matcher or make_matcher()
    unique: list[tuple[str, Structure]] = []
    duplicate_of: list[str | None] = []
    for row_id, structure in zip(row_ids, structures):
        match = next((key for key, other in unique if matcher.fit(structure, other)), None)
        duplicate_of.append(match)
        if match is None:
            unique.append((row_id, structure))
    return duplicate_of


def naive_known_matches(
    structures: Sequence[Structure],
    reference: Sequence[Structure],
    reference_ids: Sequence[str],
    matcher: StructureMatcher | None = None,
) -> list[str | None]:
    """First reference structure that plain ``fit`` accepts, for each structure."""
    matcher = matcher or make_matcher()
    return [
        next((key for key, other in zip(reference_ids, reference) if matcher.fit(structure, other)), None)
        for structure in structures
    ]
