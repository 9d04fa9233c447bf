"""The CDVAE periodic neighbour list and triplets, checked against pymatgen."""

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from battgen.generate.cdvae.graph import (
    crystal_index_of,
    edge_triplets,
    lattice_matrix_to_params,
    lattice_params_to_matrix,
    minimum_image_displacement,
    periodic_radius_graph,
)


def _cells():
    licl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.13), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    triclinic = Structure(Lattice.from_parameters(3.1, 4.2, 5.3, 75, 95, 110), ["Si", "O", "O"],
                          [[0.1, 0.2, 0.3], [0.6, 0.7, 0.9], [0.95, 0.05, 0.5]])
    one_atom = Structure(Lattice.from_parameters(2.5, 2.7, 3.0, 80, 85, 100), ["Cu"], [[0.3, 0.3, 0.3]])
    return [licl, triclinic, one_atom]


def _batched(structures):
    frac = torch.tensor(np.concatenate([s.frac_coords for s in structures]), dtype=torch.float64)
    lattices = torch.tensor(np.stack([s.lattice.matrix for s in structures]), dtype=torch.float64)
    return frac, lattices, torch.tensor([len(s) for s in structures])


@pytest.mark.parametrize("max_neighbors", [None, 20])
def test_periodic_graph_matches_pymatgen_counts_and_distances(max_neighbors):
    structures = _cells()
    frac, lattices, num_atoms = _batched(structures)  # all three cells in one batch
    graph = periodic_radius_graph(frac, lattices, num_atoms, 7.0, max_neighbors)
    distances = graph.displacement(frac, lattices, crystal_index_of(num_atoms)).norm(dim=1).numpy()
    start = 0
    for structure in structures:
        for site_index, neighbours in enumerate(structure.get_all_neighbors(7.0)):
            expected = np.sort([n.nn_distance for n in neighbours])[:max_neighbors]
            found = np.sort(distances[graph.target.numpy() == start + site_index])
            assert len(found) == len(expected), structure.composition
            np.testing.assert_allclose(found, expected, atol=1e-8)
        start += len(structure)
    # the one-atom cell has only its own images as neighbours
    last = graph.target == start - 1
    assert last.any() and (graph.source[last] == start - 1).all()


def test_max_neighbors_keeps_the_nearest_and_graph_is_sorted():
    frac, lattices, num_atoms = _batched(_cells()[:1])
    graph = periodic_radius_graph(frac, lattices, num_atoms, 7.0, 6)
    distances = graph.displacement(frac, lattices, crystal_index_of(num_atoms)).norm(dim=1)
    assert torch.all(graph.target[1:] >= graph.target[:-1])
    assert torch.bincount(graph.target).tolist() == [6] * len(frac)
    np.testing.assert_allclose(distances.numpy(), 5.13 / 2, atol=1e-8)  # rock-salt first shell: 6 at a/2


def test_unwrapped_coordinates_give_the_same_graph():
    frac, lattices, num_atoms = _batched(_cells()[1:2])
    shifted = frac + torch.tensor([[2.0, -1.0, 3.0]], dtype=torch.float64)
    reference = periodic_radius_graph(frac, lattices, num_atoms, 6.0)
    graph = periodic_radius_graph(shifted, lattices, num_atoms, 6.0)
    assert len(graph) == len(reference) > 0
    assert torch.equal(graph.source, reference.source) and torch.equal(graph.target, reference.target)


def test_triplets_exclude_only_the_back_and_forth_edge():
    frac, lattices, num_atoms = _batched(_cells()[2:])  # one atom: every edge is to an image of itself
    graph = periodic_radius_graph(frac, lattices, num_atoms, 4.0)
    triplets = edge_triplets(graph, 1)
    n_edges = len(graph)
    assert len(triplets.edge_in) == n_edges * (n_edges - 1)  # each image pairs with all others but its inverse
    offsets_sum = graph.offset[triplets.edge_in] + graph.offset[triplets.edge_out]
    assert not (offsets_sum == 0).all(dim=1).any()


def test_lattice_parameters_round_trip_like_pymatgen():
    lengths = torch.tensor([[3.1, 4.2, 5.3]], dtype=torch.float64)
    angles = torch.tensor([[75.0, 95.0, 110.0]], dtype=torch.float64)
    matrix = lattice_params_to_matrix(lengths, angles)
    np.testing.assert_allclose(matrix[0].numpy(), Lattice.from_parameters(3.1, 4.2, 5.3, 75, 95, 110).matrix, atol=1e-10)
    back_lengths, back_angles = lattice_matrix_to_params(matrix)
    np.testing.assert_allclose(back_lengths.numpy(), lengths.numpy())
    np.testing.assert_allclose(back_angles.numpy(), angles.numpy())


def test_minimum_image_displacement_matches_pymatgen_distance():
    structure = _cells()[1]
    lattice = torch.tensor(structure.lattice.matrix, dtype=torch.float64)[None]
    a = torch.tensor([[0.02, 0.97, 0.5]], dtype=torch.float64)
    b = torch.tensor([[0.91, 0.12, 0.45]], dtype=torch.float64)
    vector = minimum_image_displacement(a, b, lattice, torch.zeros(1, dtype=torch.long))
    expected = structure.lattice.get_distance_and_image(a[0].numpy(), b[0].numpy())[0]
    assert float(vector.norm()) == pytest.approx(expected, abs=1e-9)
