"""Uniqueness within a batch and novelty against a reference set, with pymatgen's StructureMatcher.

Decisions are exactly those of naive pairwise ``StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5).fit``
(the CDVAE/MatterGen defaults), but the work is organised so it scales to 10^4 x 10^4 structures. Every
shortcut below is an exact necessary condition of ``fit`` or the very same computation done once instead
of per call; none changes a tolerance or a definition:

1. ``fit`` first compares the comparator hash of the two compositions (the fractional composition for
   the default ``SpeciesComparator``) and returns False when they differ. We therefore bucket structures
   by that hash: pairs in different buckets are never compared, and a structure alone in its bucket (no
   partner in the batch or in the reference) is decided without any further work.
2. ``fit`` then reduces each structure (Niggli + primitive cell) on every call. We do it once per
   structure (:class:`Reducer`, shared by the uniqueness and novelty steps of one screening run), and only
   for structures that share a bucket with a partner. The reduction is pymatgen's own
   (``get_niggli_reduced_lattice``, ``get_primitive_structure``) with two exact savings: the Niggli
   lattice is computed once per distinct lattice matrix (substitutions and perturbed copies share their
   host's lattice), and ``get_primitive_structure`` is skipped when the greatest common divisor of the
   species counts is 1 (it then has no candidate supercell matrix and returns a copy of its input).
3. Within a bucket, reduced structures with different site counts cannot match when neither
   ``allow_subset`` nor ``attempt_supercell`` is set (``_strict_match`` rejects unequal site counts), so
   such pairs are skipped.
4. For the remaining pairs we run the body of ``fit(..., skip_structure_reduction=True)`` — the same
   composition-hash test, the same volume scaling and pymatgen's own ``_match`` — on light views of the
   reduced structures instead of the three ``Structure`` copies ``fit`` makes per call (with
   ``attempt_supercell`` or ``allow_subset`` we call ``fit`` itself).

One difference to a pymatgen ``fit`` loop that cannot show in a decision: pymatgen caches reductions in an
LRU cache keyed by structure *equality* (sites equal within 1e-5 Å), so a naive loop may compare a
structure through the reduction of an earlier one that equals it within 1e-5 Å; we always reduce the
structure itself.

Uniqueness is order-dependent like any greedy deduplication: row ``i`` is a duplicate of the first earlier
*unique* row it matches (so a batch of structures that chain-match A~B~C keeps A and C when C does not
match A). The naive reference implementations :func:`naive_duplicates` and :func:`naive_known_matches`
spell out that definition and are used by the tests and the benchmark.
"""

from __future__ import annotations

import functools
import math
import os
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from tqdm.auto import tqdm

# CDVAE / MatterGen / pymatgen defaults.
DEFAULT_MATCHER_SETTINGS = {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0}


def make_matcher(**settings: Any) -> StructureMatcher:
    """A StructureMatcher with the CDVAE defaults unless overridden (``ltol``, ``stol``, ``angle_tol`` ...)."""
    return StructureMatcher(**{**DEFAULT_MATCHER_SETTINGS, **settings})


def _can_match_other_sizes(matcher: StructureMatcher) -> bool:
    return bool(matcher._subset or matcher._supercell)  # noqa: SLF001 - matcher settings, read-only


class _View:
    """The parts of a Structure that ``StructureMatcher._match`` reads, without building sites.

    ``cart_coords`` is computed site by site with ``Lattice.get_cartesian_coords``, exactly as
    ``PeriodicSite.coords`` does after pymatgen sets a rescaled lattice, so the numbers are bit-identical.
    """

    __slots__ = ("lattice", "frac_coords", "species_and_occu", "_cart")

    def __init__(self, lattice: Lattice, frac_coords: np.ndarray, species_and_occu: list) -> None:
        self.lattice = lattice
        self.frac_coords = frac_coords
        self.species_and_occu = species_and_occu
        self._cart = None

    def __len__(self) -> int:
        return len(self.species_and_occu)

    @property
    def cart_coords(self) -> np.ndarray:
        if self._cart is None:
            self._cart = np.array([self.lattice.get_cartesian_coords(f) for f in self.frac_coords])
        return self._cart


class Reduced:
    """A structure as ``fit`` sees it after species processing and Niggli + primitive reduction."""

    __slots__ = ("structure", "n_sites", "hash", "matrix", "volume", "frac_coords", "species_and_occu")

    def __init__(self, structure: Structure, comparator: Any) -> None:
        self.structure = structure
        self.n_sites = len(structure)
        self.hash = comparator.get_hash(structure.composition)
        self.matrix = structure.lattice.matrix
        self.volume = structure.volume
        self.frac_coords = structure.frac_coords
        self.species_and_occu = structure.species_and_occu


class Reducer:
    """Reduces structures once (cached by identity) and fits reduced pairs exactly as ``fit`` would.

    One reducer may serve several indexes with the same matcher (uniqueness, then novelty of the rows that
    passed: the same ``Structure`` objects are reduced once).
    """

    def __init__(self, matcher: StructureMatcher | None = None) -> None:
        self.matcher = matcher or make_matcher()
        self._reduced: dict[int, Reduced] = {}
        self._keys: dict[int, Hashable] = {}
        self._keepalive: dict[int, Structure] = {}  # keeps the id() cache keys valid
        self._niggli: dict[bytes, Lattice] = {}
        m = self.matcher
        self._fast_fit = not (m._subset or m._supercell)  # noqa: SLF001
        self.n_fit_calls = 0
        self.n_reductions = 0

    def _process(self, structure: Structure) -> Structure:
        return self.matcher._process_species([structure])[0]  # noqa: SLF001 - the copy fit() makes

    def bucket_key(self, structure: Structure) -> Hashable:
        """``fit``'s composition hash of ``structure`` (after ``ignored_species`` are removed)."""
        key = self._keys.get(id(structure))
        if key is None:
            m = self.matcher
            # _process_species copies sites unchanged unless species are ignored: same composition
            composition = self._process(structure).composition if m._ignored_species else structure.composition  # noqa: SLF001
            key = m._comparator.get_hash(composition)  # noqa: SLF001
            self._keys[id(structure)] = key
            self._keepalive[id(structure)] = structure
        return key

    def _niggli_lattice(self, lattice: Lattice) -> Lattice:
        key = lattice.matrix.tobytes()
        reduced = self._niggli.get(key)
        if reduced is None:
            reduced = self._niggli[key] = lattice.get_niggli_reduced_lattice()
        return reduced

    def _reduce_uncached(self, structure: Structure) -> Structure:
        """``StructureMatcher._get_reduced_structure(processed, primitive_cell, niggli=True)``, step by step."""
        s = self._process(structure)
        # IStructure.get_reduced_structure("niggli"), with the lattice reduction cached per matrix
        lattice = self._niggli_lattice(s.lattice)
        if lattice != s.lattice:
            s = Structure(lattice, s.species_and_occu, s.cart_coords, coords_are_cartesian=True, to_unit_cell=True,
                          site_properties=s.site_properties, labels=s.labels, charge=s._charge)  # noqa: SLF001
        if self.matcher._primitive_cell:  # noqa: SLF001
            counts = Counter(site.species_string for site in s)
            # gcd 1: get_primitive_structure finds no supercell matrix and returns a copy of its input
            if functools.reduce(math.gcd, counts.values()) > 1:
                s = s.get_primitive_structure()
        # pymatgen ends with Structure.from_sites (IStructure -> Structure); ``s`` already is a new Structure
        return s

    def reduce(self, structure: Structure) -> Reduced:
        cached = self._reduced.get(id(structure))
        if cached is None:
            cached = Reduced(self._reduce_uncached(structure), self.matcher._comparator)  # noqa: SLF001
            self._reduced[id(structure)] = cached
            self._keepalive[id(structure)] = structure
            self.n_reductions += 1
        return cached

    def fit(self, query: Reduced, other: Reduced) -> bool:
        """``matcher.fit(query, other, skip_structure_reduction=True)`` on reduced structures."""
        self.n_fit_calls += 1
        m = self.matcher
        if not self._fast_fit:
            return m.fit(query.structure, other.structure, skip_structure_reduction=True)
        if query.hash != other.hash:  # fit's composition-hash test
            return False
        # fit -> _preprocess(skip_structure_reduction=True): fu = 1, s1_supercell = True, then the rescaling
        if m._scale:  # noqa: SLF001
            ratio = (other.volume / (query.volume * 1)) ** (1 / 6)
            lattice1, lattice2 = Lattice(query.matrix * ratio), Lattice(other.matrix / ratio)
        else:
            lattice1, lattice2 = query.structure.lattice, other.structure.lattice
        match = m._match(  # noqa: SLF001 - fit's own matching code
            _View(lattice1, query.frac_coords, query.species_and_occu),
            _View(lattice2, other.frac_coords, other.species_and_occu),
            1, True, break_on_match=True,
        )
        return match is not None and match[0] <= m.stol


class MatchIndex:
    """Structures bucketed by composition hash, reduced lazily and once, for exact ``fit`` queries.

    ``add(key, structure)`` in the order that decides "first match"; ``find(structure)`` returns the key
    of the first added structure that ``matcher.fit(structure, added)`` accepts, or None. Pass a shared
    :class:`Reducer` to reuse reductions across indexes.
    """

    def __init__(self, matcher: StructureMatcher | None = None, reducer: Reducer | None = None) -> None:
        if reducer is not None and matcher is not None and reducer.matcher is not matcher:
            raise ValueError("reducer and matcher disagree: pass one of them, or the reducer's own matcher")
        self.reducer = reducer or Reducer(matcher)
        self.matcher = self.reducer.matcher
        self._buckets: dict[Hashable, list[tuple[str, Structure]]] = defaultdict(list)

    @property
    def n_fit_calls(self) -> int:
        return self.reducer.n_fit_calls

    @property
    def n_reductions(self) -> int:
        return self.reducer.n_reductions

    def bucket_key(self, structure: Structure) -> Hashable:
        return self.reducer.bucket_key(structure)

    def reduce(self, structure: Structure) -> Structure:
        """Species processing + Niggli + primitive reduction, exactly as ``fit`` does it, cached by identity."""
        return self.reducer.reduce(structure).structure

    def add(self, key: str, structure: Structure, bucket: Hashable | None = None) -> None:
        self._buckets[self.bucket_key(structure) if bucket is None else bucket].append((key, structure))

    def has_bucket(self, bucket: Hashable) -> bool:
        return bucket in self._buckets

    def find(self, structure: Structure, bucket: Hashable | None = None) -> str | None:
        bucket = self.bucket_key(structure) if bucket is None else bucket
        candidates = self._buckets.get(bucket)
        if not candidates:
            return None
        reducer = self.reducer
        reduced = reducer.reduce(structure)
        same_size_only = not _can_match_other_sizes(self.matcher)
        for key, other in candidates:
            other_reduced = reducer.reduce(other)
            if same_size_only and other_reduced.n_sites != reduced.n_sites:
                continue
            if reducer.fit(reduced, other_reduced):
                return key
        return None

    def find_all(self, structures: Sequence[Structure], progress: bool = False,
                 workers: int | None = None) -> list[str | None]:
        """``find`` for every structure; ``workers`` > 1 splits the buckets over forked processes."""
        keys = [self.bucket_key(s) for s in structures]
        out: list[str | None] = [None] * len(structures)
        members: dict[Hashable, list[int]] = defaultdict(list)
        for position, key in enumerate(keys):
            if key in self._buckets:  # no reference structure of that composition: novel, nothing to do
                members[key].append(position)
        tasks = list(members.items())
        n_workers = resolve_workers(workers)
        with tqdm(total=len(structures), desc="novelty", disable=not progress) as bar:
            bar.update(len(structures) - sum(len(positions) for _, positions in tasks))
            if n_workers > 1 and len(tasks) >= MIN_PARALLEL_BUCKETS and _can_fork():
                shared = {"matcher": self.matcher, "structures": list(structures),
                          "reference_buckets": {key: self._buckets[key] for key, _ in tasks}}
                return _run_parallel(_novelty_task, tasks, n_workers, shared, len(structures), bar)
            for key, positions in tasks:
                for position in positions:
                    out[position] = self.find(structures[position], key)
                bar.update(len(positions))
        return out


# --- parallel workers -----------------------------------------------------------------------------------
# Buckets are independent (a structure can only match inside its own composition bucket), so whole buckets
# go to worker processes and every decision is made by the same sequential code as in one process.
# Workers are forked: they read the structures from this module-level dict (copy-on-write), so only bucket
# indices and decisions cross process boundaries.
_FORKED: dict[str, Any] = {}
_WORKER_REDUCER: list[Reducer] = []
MIN_PARALLEL_BUCKETS = 32  # below this, forking costs more than it saves


def _worker_reducer() -> Reducer:
    if not _WORKER_REDUCER:
        _WORKER_REDUCER.append(Reducer(_FORKED["matcher"]))
    return _WORKER_REDUCER[0]


def _dedupe_bucket(reducer: Reducer, bucket: Hashable, rows: Sequence[tuple[str, Structure]]) -> list[str | None]:
    """Greedy uniqueness inside one bucket, rows in batch order."""
    index = MatchIndex(reducer=reducer)
    matches: list[str | None] = []
    for row_id, structure in rows:
        match = index.find(structure, bucket)
        matches.append(match)
        if match is None:
            index.add(row_id, structure, bucket)
    return matches


def _dedupe_task(task: tuple[Hashable, list[int]]) -> tuple[list[int], list[str | None]]:
    bucket, positions = task
    rows = [(_FORKED["row_ids"][i], _FORKED["structures"][i]) for i in positions]
    return positions, _dedupe_bucket(_worker_reducer(), bucket, rows)


def _novelty_task(task: tuple[Hashable, list[int]]) -> tuple[list[int], list[str | None]]:
    bucket, positions = task
    index = MatchIndex(reducer=_worker_reducer())
    index._buckets[bucket] = _FORKED["reference_buckets"][bucket]  # noqa: SLF001 - same entries, same order
    return positions, [index.find(_FORKED["structures"][i], bucket) for i in positions]


def resolve_workers(workers: int | None) -> int:
    """``None`` or 1: one process; 0: one worker per CPU core; n > 1: n forked workers."""
    if workers is None:
        return 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
    return max(1, os.cpu_count() or 1) if workers == 0 else workers


def _run_parallel(function, tasks: list, workers: int, shared: dict[str, Any], n_out: int, bar) -> list:
    import multiprocessing

    out: list = [None] * n_out
    tasks = sorted(tasks, key=lambda task: -len(task[1]))  # big buckets first: better balance
    _FORKED.clear()
    _FORKED.update(shared)
    _WORKER_REDUCER.clear()
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for positions, matches in pool.imap_unordered(function, tasks, chunksize=8):
                for position, match in zip(positions, matches):
                    out[position] = match
                bar.update(len(positions))
    finally:
        _FORKED.clear()
    return out


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def find_duplicates(
    structures: Sequence[Structure],
    row_ids: Sequence[str],
    matcher: StructureMatcher | None = None,
    progress: bool = False,
    reducer: Reducer | None = None,
    workers: int | None = None,
) -> list[str | None]:
    """For each structure, the row id of the first earlier unique structure it matches, else None.

    ``reducer`` (optional, with the same matcher) shares reduced structures with a later novelty step
    (in one process). ``workers`` > 1 hands whole composition buckets to that many forked processes (see
    :func:`resolve_workers`); the decisions are the same.
    """
    reducer = reducer or Reducer(matcher)
    if matcher is not None and reducer.matcher is not matcher:
        raise ValueError("reducer and matcher disagree: pass one of them, or the reducer's own matcher")
    keys = [reducer.bucket_key(s) for s in structures]
    members: dict[Hashable, list[int]] = defaultdict(list)
    for position, key in enumerate(keys):
        members[key].append(position)
    # Alone in its composition bucket: unique, and never a partner of anyone, so no reduction needed.
    tasks = [(key, positions) for key, positions in members.items() if len(positions) > 1]
    n_workers = resolve_workers(workers)
    with tqdm(total=len(structures), desc="uniqueness", disable=not progress) as bar:
        bar.update(len(structures) - sum(len(positions) for _, positions in tasks))
        if n_workers > 1 and len(tasks) >= MIN_PARALLEL_BUCKETS and _can_fork():
            shared = {"matcher": reducer.matcher, "structures": list(structures), "row_ids": list(row_ids)}
            return _run_parallel(_dedupe_task, tasks, n_workers, shared, len(structures), bar)
        duplicate_of: list[str | None] = [None] * len(structures)
        for key, positions in tasks:
            matches = _dedupe_bucket(reducer, key, [(row_ids[i], structures[i]) for i in positions])
            for position, match in zip(positions, matches):
                duplicate_of[position] = match
            bar.update(len(positions))
    return duplicate_of


def find_known_matches(
    structures: Sequence[Structure],
    reference: Sequence[Structure],
    reference_ids: Sequence[str],
    matcher: StructureMatcher | None = None,
    progress: bool = False,
    index: MatchIndex | None = None,
    reducer: Reducer | None = None,
    workers: int | None = None,
) -> list[str | None]:
    """For each structure, the id of the first reference structure it matches (not novel), else None.

    Pass a prebuilt ``index`` (see :func:`build_reference_index`) to reuse reduced reference structures
    across calls; ``workers`` as in :func:`find_duplicates`.
    """
    if index is None:
        index = build_reference_index(reference, reference_ids, matcher, reducer)
    return index.find_all(structures, progress=progress, workers=workers)


def build_reference_index(
    reference: Sequence[Structure],
    reference_ids: Sequence[str],
    matcher: StructureMatcher | None = None,
    reducer: Reducer | None = None,
) -> MatchIndex:
    """Bucket a reference set (cheap: compositions only; reductions happen on first use)."""
    index = MatchIndex(matcher, reducer)
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
