"""The fast uniqueness / novelty path makes exactly the decisions of naive pairwise StructureMatcher.fit.

A small crafted set with the cases that break approximate shortcuts: supercells and conventional cells of
a primitive cell, permuted site order, strained and perturbed copies, the same formula in a different
structure (rock salt vs CsCl), polymorphs (rutile vs anatase), cells whose species counts have gcd 1 (the
primitive step is skipped) next to their conventional cells (gcd > 1), and forked workers.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

import battgen.screen.novelty as novelty
from battgen.screen.novelty import (
    MatchIndex,
    Reducer,
    find_duplicates,
    find_known_matches,
    make_matcher,
    naive_duplicates,
    naive_known_matches,
)


def rocksalt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cscl_nacl(a: float = 3.3) -> Structure:  # same formula, different structure
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def rutile() -> Structure:
    return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                     [[0, 0, 0], [0.3048, 0.3048, 0]])


def anatase() -> Structure:
    return Structure.from_spacegroup("I4_1/amd", Lattice.tetragonal(3.785, 9.514), ["Ti", "O"],
                                     [[0, 0.75, 0.125], [0, 0.75, 0.3333]])


def li2o() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.63), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def crafted() -> tuple[list[Structure], list[str]]:
    structures, names = _crafted()  # built once (from_spacegroup is slow); nothing below mutates them
    return list(structures), list(names)


@functools.cache
def _crafted() -> tuple[tuple[Structure, ...], tuple[str, ...]]:
    rng = np.random.default_rng(7)
    nacl = rocksalt()
    rows: dict[str, Structure] = {
        "nacl_conventional": nacl,                                      # 8 sites, gcd 4
        "nacl_primitive": nacl.get_primitive_structure(),               # 2 sites, gcd 1
        "nacl_supercell": nacl.get_primitive_structure() * (2, 1, 1),   # 4 sites, gcd 2
        "nacl_cscl": cscl_nacl(),                                       # same formula, other structure
        "rutile": rutile(),
        "anatase": anatase(),                                           # polymorph of rutile
        "li2o_conventional": li2o(),
        "li2o_primitive": li2o().get_primitive_structure(),             # 3 sites, gcd 1
    }
    permuted = rutile()
    order = rng.permutation(len(permuted))
    rows["rutile_permuted"] = Structure(permuted.lattice, [permuted.species[i] for i in order],
                                        permuted.frac_coords[order])
    strained = rutile()
    strained.apply_strain([0.04, -0.02, 0.03])
    rows["rutile_strained"] = strained
    small = anatase()
    small.perturb(0.02)
    rows["anatase_perturbed"] = small
    big = anatase()
    big.perturb(0.9)  # far beyond stol: a different structure of the same composition
    rows["anatase_scrambled"] = big
    expanded = rocksalt(6.2)  # isotropic expansion: scale=True makes it the same structure
    rows["nacl_expanded"] = expanded
    sheared = nacl.get_primitive_structure()
    sheared.apply_strain([0.35, 0.0, -0.2])  # beyond ltol
    rows["nacl_sheared"] = sheared
    names = list(rows)
    order = np.random.default_rng(3).permutation(len(names))  # mixed order: greedy decisions depend on it
    return tuple(rows[names[i]] for i in order), tuple(names[i] for i in order)


def test_reduction_is_pymatgens_bit_for_bit():
    matcher = make_matcher()
    reducer = Reducer(matcher)
    structures, _ = crafted()
    for structure in structures:
        ours = reducer.reduce(structure).structure
        processed = matcher._process_species([structure])[0]
        theirs = matcher._get_reduced_structure(processed, matcher._primitive_cell, True)
        assert len(ours) == len(theirs)
        assert np.array_equal(ours.lattice.matrix, theirs.lattice.matrix)
        assert np.array_equal(ours.frac_coords, theirs.frac_coords)
        assert [str(s) for s in ours.species] == [str(s) for s in theirs.species]
    # reduced once, by identity
    n = reducer.n_reductions
    reducer.reduce(structures[0])
    assert reducer.n_reductions == n


def test_fast_fit_equals_fit_on_every_pair():
    matcher = make_matcher()
    reducer = Reducer(matcher)
    structures, names = crafted()
    decisions = {}
    for (i, a), (j, b) in itertools.permutations(enumerate(structures), 2):
        if reducer.bucket_key(a) != reducer.bucket_key(b):
            continue
        ra, rb = reducer.reduce(a), reducer.reduce(b)
        expected = matcher.fit(a, b)
        # the same-size skip of MatchIndex.find is part of the claim: unequal sizes never fit
        ours = reducer.fit(ra, rb) if ra.n_sites == rb.n_sites else False
        assert ours == expected, (names[i], names[j])
        decisions[(names[i], names[j])] = expected
    # the set really exercises both outcomes, including the tricky ones
    assert decisions[("nacl_primitive", "nacl_conventional")]
    assert decisions[("nacl_supercell", "nacl_primitive")]
    assert decisions[("rutile_permuted", "rutile")]
    assert decisions[("nacl_expanded", "nacl_primitive")]
    assert decisions[("li2o_primitive", "li2o_conventional")]
    assert decisions[("anatase_perturbed", "anatase")]
    assert not decisions[("nacl_cscl", "nacl_primitive")]
    assert not decisions[("rutile", "anatase")]
    assert not decisions[("anatase_scrambled", "anatase")]
    assert not decisions[("nacl_sheared", "nacl_conventional")]


@pytest.mark.parametrize("workers", [1, 2])
def test_uniqueness_identical_to_naive(workers, monkeypatch):
    monkeypatch.setattr(novelty, "MIN_PARALLEL_BUCKETS", 1)  # fork even for this handful of buckets
    structures, names = crafted()
    naive = naive_duplicates(structures, names)
    assert find_duplicates(structures, names, workers=workers) == naive
    assert sum(m is not None for m in naive) >= 6 and sum(m is None for m in naive) >= 6


@pytest.mark.parametrize("workers", [1, 2])
def test_novelty_identical_to_naive(workers, monkeypatch):
    monkeypatch.setattr(novelty, "MIN_PARALLEL_BUCKETS", 1)
    structures, names = crafted()
    reference_names = ["anatase", "nacl_cscl", "li2o_primitive", "nacl_conventional"]
    reference = [structures[names.index(n)] for n in reference_names]
    ids = [f"mp-{n}" for n in reference_names]
    queries = [s for s, n in zip(structures, names) if n not in reference_names]
    naive = naive_known_matches(queries, reference, ids)
    assert find_known_matches(queries, reference, ids, workers=workers) == naive
    assert any(m is None for m in naive) and sum(m is not None for m in naive) >= 4


def test_shared_reducer_reduces_each_structure_once():
    structures, names = crafted()
    reducer = Reducer()
    find_duplicates(structures, names, reducer=reducer)
    in_pairs = [s for s in structures if sum(reducer.bucket_key(t) == reducer.bucket_key(s) for t in structures) > 1]
    assert reducer.n_reductions == len(in_pairs)  # lonely structures are never reduced
    index = MatchIndex(reducer=reducer)
    for s, n in zip(structures, names):
        index.add(n, s)
    assert index.find_all(structures) == naive_known_matches(structures, structures, names)
    assert reducer.n_reductions == len(in_pairs)  # the novelty pass reused every reduction


def test_supercell_settings_fall_back_to_fit():
    matcher = make_matcher(attempt_supercell=True)
    structures, names = crafted()
    assert find_duplicates(structures, names, matcher) == naive_duplicates(structures, names, matcher)


def test_matcher_and_reducer_must_agree():
    with pytest.raises(ValueError, match="disagree"):
        find_duplicates([rocksalt()], ["a"], make_matcher(), reducer=Reducer(make_matcher()))
