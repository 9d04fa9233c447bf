"""The built-in host structures reproduce their published crystallography."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from battgen.sources.builtin_hosts import builtin_host_names, builtin_hosts

# name: (reduced formula, space group (standard short symbol), published density g/cm3)
# Densities: measured / X-ray densities from handbooks (CRC) and the cited refinements.
EXPECTED = {
    "LiCoO2": ("LiCoO2", "R-3m", 5.05),
    "LiFePO4": ("LiFePO4", "Pnma", 3.60),
    "LiMn2O4": ("LiMn2O4", "Fd-3m", 4.28),
    "MgMn2O4": ("MgMn2O4", "I4_1/amd", 4.34),
    "V2O5": ("V2O5", "Pmmn", 3.36),
    "MoO3": ("MoO3", "Pnma", 4.69),
    "MnO2-hollandite": ("MnO2", "I4/m", 4.21),
    "TiO2-rutile": ("TiO2", "P4_2/mnm", 4.25),
    "TiO2-anatase": ("TiO2", "I4_1/amd", 3.89),
    "LiNbO3": ("LiNbO3", "R3c", 4.64),
    "Si": ("Si", "Fd-3m", 2.329),
    "Li15Si4": ("Li15Si4", "I-43d", 1.18),
    "Li2O": ("Li2O", "Fm-3m", 2.013),
    "LiCl": ("LiCl", "Fm-3m", 2.068),
}


@pytest.fixture(scope="module")
def hosts():
    return builtin_hosts()


def test_names_cover_expected_set():
    assert builtin_host_names() == list(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_host_crystallography(hosts, name):
    meta, structure = hosts.get(f"host-{name}")
    formula, spacegroup, density = EXPECTED[name]
    assert structure.is_ordered
    assert structure.composition.reduced_formula == formula == meta["formula"]
    assert SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_symbol() == spacegroup
    assert meta["spacegroup_symbol"] == spacegroup
    assert structure.density == pytest.approx(density, rel=0.05)
    distances = structure.distance_matrix + np.eye(len(structure)) * 1e3
    assert distances.min() > 1.5
    assert meta["source"] and any(ch.isdigit() for ch in meta["source"])  # a citation with year / id


def test_known_bond_lengths(hosts):
    """Sharper than density: octahedral Co-O in LiCoO2 is 1.92 A, the vanadyl V=O in V2O5 is 1.58 A."""
    _, licoo2 = hosts.get("host-LiCoO2")
    co = next(site for site in licoo2 if site.specie.symbol == "Co")
    assert min(n.nn_distance for n in licoo2.get_neighbors(co, 2.5)) == pytest.approx(1.92, abs=0.02)
    _, v2o5 = hosts.get("host-V2O5")
    v = next(site for site in v2o5 if site.specie.symbol == "V")
    assert min(n.nn_distance for n in v2o5.get_neighbors(v, 2.5)) == pytest.approx(1.58, abs=0.02)
    _, lifepo4 = hosts.get("host-LiFePO4")
    p = next(site for site in lifepo4 if site.specie.symbol == "P")
    assert len(lifepo4.get_neighbors(p, 1.7)) == 4  # PO4 tetrahedron


def test_working_ions(hosts):
    ions = dict(zip(hosts.row_ids, hosts.column("working_ion")))
    assert ions["host-LiCoO2"] == "Li"
    assert ions["host-MgMn2O4"] == "Mg"
    assert ions["host-V2O5"] is None  # empty host: no working ion yet


def test_subset_order_and_case_insensitive():
    batch = builtin_hosts(["si", "LiCoO2"])
    assert batch.row_ids == ["host-Si", "host-LiCoO2"]
    assert len(batch.structures[0]) == 8


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match="unknown built-in host 'LiXO2'.*LiCoO2.*Li15Si4"):
        builtin_hosts(["LiXO2"])


def test_round_trip_through_batch_file(tmp_path, hosts):
    from battgen.batch import StructureBatch

    again = StructureBatch.read(hosts.write(tmp_path / "hosts.jsonl.gz"))
    assert again.row_ids == hosts.row_ids
    assert again.structures[2].matches(hosts.structures[2])
