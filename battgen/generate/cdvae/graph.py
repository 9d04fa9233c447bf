"""Periodic geometry in torch, batched over many crystals: lattice parameters <-> matrices, fractional
<-> Cartesian coordinates, minimum-image displacements, and the periodic radius graph (cutoff + at most
``max_neighbors`` nearest neighbours per atom) with its triplets.

Conventions: a batch of B crystals with N atoms in all; ``lattices`` (B, 3, 3) has the lattice vectors as
rows (Å); ``frac_coords`` (N, 3); ``num_atoms`` (B,); ``crystal_index`` (N,) the crystal of each atom.
An edge ``e`` goes from ``source[e]`` (neighbour j) to ``target[e]`` (centre i) through lattice image
``offset[e]`` (integers), and its displacement is ``r_j + offset @ L - r_i`` (Å).

Everything here is plain torch so it runs on noisy coordinates inside Langevin sampling (torch-cluster /
pyg-lib ``radius_graph`` is not available on this stack, and is not periodic anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def lattice_params_to_matrix(lengths: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """(B, 3) lengths (Å) and angles (degrees) -> (B, 3, 3) row lattices, pymatgen's ``from_parameters``
    orientation (c along z)."""
    angles = torch.deg2rad(angles_deg)
    cos, sin = torch.cos(angles), torch.sin(angles)
    val = (cos[:, 0] * cos[:, 1] - cos[:, 2]) / (sin[:, 0] * sin[:, 1])
    val = torch.clamp(val, -1.0, 1.0)
    gamma_star = torch.arccos(val)
    zeros = torch.zeros_like(val)
    a = torch.stack([lengths[:, 0] * sin[:, 1], zeros, lengths[:, 0] * cos[:, 1]], dim=1)
    b = torch.stack([-lengths[:, 1] * sin[:, 0] * torch.cos(gamma_star),
                     lengths[:, 1] * sin[:, 0] * torch.sin(gamma_star), lengths[:, 1] * cos[:, 0]], dim=1)
    c = torch.stack([zeros, zeros, lengths[:, 2]], dim=1)
    return torch.stack([a, b, c], dim=1)


def lattice_matrix_to_params(lattices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, 3) -> lengths (Å) and angles (degrees), each (B, 3)."""
    lengths = lattices.norm(dim=-1)
    angles = []
    for i, j in ((1, 2), (0, 2), (0, 1)):  # alpha = angle(b, c), beta = angle(a, c), gamma = angle(a, b)
        cos = (lattices[:, i] * lattices[:, j]).sum(-1) / (lengths[:, i] * lengths[:, j])
        angles.append(torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))))
    return lengths, torch.stack(angles, dim=1)


def crystal_index_of(num_atoms: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(num_atoms), device=num_atoms.device), num_atoms)


def frac_to_cart(frac_coords: torch.Tensor, lattices: torch.Tensor, crystal_index: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ni,nij->nj", frac_coords, lattices[crystal_index])


def cart_to_frac(cart_coords: torch.Tensor, lattices: torch.Tensor, crystal_index: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ni,nij->nj", cart_coords, torch.linalg.inv(lattices)[crystal_index])


def minimum_image_displacement(
    frac_from: torch.Tensor, frac_to: torch.Tensor, lattices: torch.Tensor, crystal_index: torch.Tensor
) -> torch.Tensor:
    """Cartesian vector (Å) from ``frac_from`` to the nearest image of ``frac_to``, per atom.

    Rounds the fractional difference and then checks the 27 neighbouring images, which is exact for any
    cell whose shortest displacement lies within one image of the rounded one (all Niggli-reduced cells).
    """
    delta = frac_to - frac_from
    delta = delta - torch.round(delta)
    shifts = _image_grid(1, delta.device, delta.dtype)  # (27, 3)
    candidates = torch.einsum("nki,nij->nkj", delta[:, None, :] + shifts[None], lattices[crystal_index])
    best = candidates.norm(dim=-1).argmin(dim=1)
    return candidates[torch.arange(len(delta), device=delta.device), best]


def _image_grid(reach: int | tuple[int, int, int], device, dtype) -> torch.Tensor:
    reach = (reach,) * 3 if isinstance(reach, int) else reach
    axes = [torch.arange(-r, r + 1, device=device, dtype=dtype) for r in reach]
    return torch.cartesian_prod(*axes)


def images_needed(lattices: torch.Tensor, cutoff: float) -> tuple[int, int, int]:
    """Images along each lattice vector needed so that every neighbour within ``cutoff`` (Å) is found
    for fractional coordinates in [0, 1): ceil(cutoff / interplanar spacing), the maximum over the batch."""
    # |row i of inv(L)^T| = 1 / (spacing of the lattice planes spanned by the two other vectors)
    inverse_norms = torch.linalg.inv(lattices).transpose(1, 2).norm(dim=-1)  # (B, 3)
    reach = torch.ceil(cutoff * inverse_norms).amax(dim=0)
    return tuple(int(r) for r in reach.tolist())


@dataclass
class PeriodicGraph:
    """Edges of a periodic radius graph, sorted by target atom then distance."""

    source: torch.Tensor  # (E,) neighbour j
    target: torch.Tensor  # (E,) centre i
    offset: torch.Tensor  # (E, 3) lattice image of j (float integers)

    def displacement(self, frac_coords: torch.Tensor, lattices: torch.Tensor, crystal_index: torch.Tensor) -> torch.Tensor:
        """r_j + offset @ L - r_i (Å), differentiable in coordinates and lattice."""
        frac_delta = frac_coords[self.source] + self.offset - frac_coords[self.target]
        return torch.einsum("ei,eij->ej", frac_delta, lattices[crystal_index[self.target]])

    def __len__(self) -> int:
        return len(self.source)


@torch.no_grad()
def periodic_radius_graph(
    frac_coords: torch.Tensor,
    lattices: torch.Tensor,
    num_atoms: torch.Tensor,
    cutoff: float,
    max_neighbors: int | None = None,
    max_images_per_axis: int = 8,
) -> PeriodicGraph:
    """All (j, image) within ``cutoff`` Å of each atom i (its own images included, itself excluded),
    keeping the ``max_neighbors`` nearest per atom (ties broken by index, as a stable sort does).

    Works pair-by-pair inside each crystal over the image grid that covers the cutoff for the largest
    reach in the batch (capped at ``max_images_per_axis`` images each way, which only matters for
    degenerate cells met while sampling)."""
    device, dtype = frac_coords.device, frac_coords.dtype
    frac_coords = frac_coords - torch.floor(frac_coords)  # wrapped: the image reach assumes [0, 1)
    reach = tuple(min(r, max_images_per_axis) for r in images_needed(lattices, cutoff))
    shifts = _image_grid(reach, device, dtype)  # (K, 3)

    # every ordered pair (i, j) within the same crystal
    first_atom = torch.cumsum(num_atoms, 0) - num_atoms
    pairs_per_crystal = num_atoms * num_atoms
    pair_crystal = torch.repeat_interleave(torch.arange(len(num_atoms), device=device), pairs_per_crystal)
    local = torch.arange(int(pairs_per_crystal.sum()), device=device) - torch.repeat_interleave(
        torch.cumsum(pairs_per_crystal, 0) - pairs_per_crystal, pairs_per_crystal)
    n_of_pair = num_atoms[pair_crystal]
    target = first_atom[pair_crystal] + local // n_of_pair
    source = first_atom[pair_crystal] + local % n_of_pair

    frac_delta = frac_coords[source] - frac_coords[target]  # (P, 3)
    cart_delta = torch.einsum("pi,pij->pj", frac_delta, lattices[pair_crystal])
    cart_shifts = torch.einsum("ki,bij->bkj", shifts, lattices)[pair_crystal]  # (P, K, 3)
    distance = (cart_delta[:, None, :] + cart_shifts).norm(dim=-1)  # (P, K)
    zero_shift = (shifts == 0).all(dim=1)
    is_self = (source == target)[:, None] & zero_shift[None, :]
    keep = (distance <= cutoff) & ~is_self
    pair_index, shift_index = keep.nonzero(as_tuple=True)
    edge_distance = distance[pair_index, shift_index]
    source, target, offset = source[pair_index], target[pair_index], shifts[shift_index]

    # nearest first within each target: sort by distance, then stably by target
    order = torch.argsort(edge_distance, stable=True)
    order = order[torch.argsort(target[order], stable=True)]
    source, target, offset, edge_distance = source[order], target[order], offset[order], edge_distance[order]
    if max_neighbors is not None and len(target):
        counts = torch.bincount(target, minlength=len(frac_coords))
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(target), device=device) - starts[target]
        nearest = rank < max_neighbors
        source, target, offset = source[nearest], target[nearest], offset[nearest]
    return PeriodicGraph(source=source, target=target, offset=offset)


@dataclass
class Triplets:
    """Pairs of edges (k -> j, j -> i) meeting at atom j, without the back-and-forth pair (k = i, same image)."""

    edge_in: torch.Tensor  # (T,) the edge k -> j
    edge_out: torch.Tensor  # (T,) the edge j -> i


@torch.no_grad()
def edge_triplets(graph: PeriodicGraph, n_atoms_total: int) -> Triplets:
    """Every triplet of edges sharing an atom j; ``graph`` must be sorted by target (as built)."""
    device = graph.source.device
    counts = torch.bincount(graph.target, minlength=n_atoms_total)
    starts = torch.cumsum(counts, 0) - counts
    per_edge = counts[graph.source]  # edges arriving at j for each edge j -> i
    edge_out = torch.repeat_interleave(torch.arange(len(graph), device=device), per_edge)
    within = torch.arange(int(per_edge.sum()), device=device) - torch.repeat_interleave(
        torch.cumsum(per_edge, 0) - per_edge, per_edge)
    edge_in = starts[graph.source[edge_out]] + within
    back_and_forth = (graph.source[edge_in] == graph.target[edge_out]) & (
        (graph.offset[edge_in] + graph.offset[edge_out]) == 0).all(dim=1)
    return Triplets(edge_in=edge_in[~back_and_forth], edge_out=edge_out[~back_and_forth])


def triplet_cosines(displacement: torch.Tensor, triplets: Triplets) -> torch.Tensor:
    """cos of the angle at j between j -> i and j -> k for each triplet."""
    to_i = -displacement[triplets.edge_out]  # r_i - r_j
    to_k = displacement[triplets.edge_in]  # r_k - r_j
    cos = (to_i * to_k).sum(-1) / (to_i.norm(dim=-1) * to_k.norm(dim=-1)).clamp_min(1e-9)
    return cos.clamp(-1.0, 1.0)
