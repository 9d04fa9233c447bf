"""The Voronoi network of a framework as a graph (CAVD's Zeo++ fork exposes nodes and edges), and what a
probe sphere can do on it: Di, Df, Dif and the channel dimensionality from one unit-cell decomposition.

Nodes are the centres of locally largest empty spheres (radius in Å); an edge joins two nodes (possibly in
neighbouring cells: ``shift`` is the lattice translation of its end) and its radius is the bottleneck a
sphere meets along it. A probe of radius p can use nodes and edges of radius ≥ p; the dimensionality of a
connected cluster is the rank of the lattice translations along which it reaches its own images. The
largest free sphere Df is twice the largest p for which some cluster percolates (dimensionality ≥ 1) — the
same definition Zeo++ uses, so it reproduces pyzeo's Df (tested).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

_SHIFTS = np.array(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij")).reshape(3, -1).T


@dataclass
class VoidNetwork:
    lattice: np.ndarray  # 3×3 Å, rows are the cell vectors of the engine's (CSSR) frame
    node_frac: np.ndarray  # (N, 3) fractional in that frame
    node_radius_A: np.ndarray  # (N,)
    edges: list[tuple[int, int, tuple[int, int, int], float]]  # (from, to, shift of "to", bottleneck radius Å)


def _edge_shifts(lattice: np.ndarray, start: np.ndarray, end: np.ndarray, bottleneck: np.ndarray,
                 length_A: np.ndarray) -> np.ndarray:
    """Lattice translation of each edge's end (E, 3): the image whose segment from ``start`` passes through
    the bottleneck point and has the edge's length (all edges at once)."""
    a = start @ lattice  # (E, 3)
    b = bottleneck @ lattice
    ends = (end[:, None, :] + _SHIFTS[None, :, :]) @ lattice  # (E, 27, 3)
    segment = ends - a[:, None, :]
    squared = np.maximum((segment**2).sum(axis=2), 1e-12)
    t = np.clip(np.einsum("ek,esk->es", b - a, segment) / squared, 0.0, 1.0)
    off_segment = np.linalg.norm(a[:, None, :] + t[:, :, None] * segment - b[:, None, :], axis=2)
    length_error = np.abs(np.sqrt(squared) - length_A[:, None])
    return _SHIFTS[np.argmin(off_segment + length_error, axis=1)]


def cavd_network(framework: Structure, radii_A: dict[str, float], scratch: Path) -> VoidNetwork:
    """Voronoi network of ``framework`` (atoms as spheres of ``radii_A``) from CAVD, computed in ``scratch``."""
    from cavd.netstorage import AtomNetwork
    from pymatgen.io.zeopp import ZeoCssr

    cssr, rad = scratch / "network.cssr", scratch / "network.rad"
    ZeoCssr(framework).write_file(str(cssr))
    rad.write_text("".join(f"{symbol} {radius}\n" for symbol, radius in radii_A.items()))
    network = AtomNetwork.read_from_CSSR(str(cssr), True, str(rad))
    voronoi = network.perform_voronoi_decomposition()[0]
    lattice = np.array(voronoi.lattice, dtype=float)
    node_frac = np.array([node[2] for node in voronoi.nodes], dtype=float).reshape(-1, 3)
    node_radius = np.array([node[3] for node in voronoi.nodes], dtype=float)
    raw = voronoi.edges
    if not raw:
        return VoidNetwork(lattice, node_frac, node_radius, [])
    origin = np.array([e[0] for e in raw], dtype=int)
    ending = np.array([e[1] for e in raw], dtype=int)
    shifts = _edge_shifts(lattice, node_frac[origin], node_frac[ending], np.array([e[2] for e in raw], dtype=float),
                          np.array([e[4] for e in raw], dtype=float))
    edges = [(int(i), int(j), tuple(int(k) for k in shift), float(e[3]))
             for i, j, shift, e in zip(origin, ending, shifts, raw)]
    return VoidNetwork(lattice, node_frac, node_radius, edges)


def _clusters(network: VoidNetwork, probe_radius_A: float) -> list[tuple[list[int], int]]:
    """(nodes, dimensionality) of every cluster a probe of ``probe_radius_A`` can explore."""
    open_nodes = network.node_radius_A >= probe_radius_A
    adjacency: dict[int, list[tuple[int, np.ndarray]]] = {i: [] for i in np.flatnonzero(open_nodes).tolist()}
    for origin, ending, shift, radius in network.edges:
        if radius >= probe_radius_A and open_nodes[origin] and open_nodes[ending]:
            adjacency[origin].append((ending, np.array(shift)))
            adjacency[ending].append((origin, -np.array(shift)))
    offset: dict[int, np.ndarray] = {}
    clusters = []
    for start in adjacency:
        if start in offset:
            continue
        offset[start] = np.zeros(3, dtype=int)
        members, loops, queue = [start], [], deque([start])
        while queue:
            node = queue.popleft()
            for neighbour, shift in adjacency[node]:
                reached = offset[node] + shift
                if neighbour not in offset:
                    offset[neighbour] = reached
                    members.append(neighbour)
                    queue.append(neighbour)
                elif not np.array_equal(offset[neighbour], reached):
                    loops.append(reached - offset[neighbour])
        rank = int(np.linalg.matrix_rank(np.array(loops, dtype=float))) if loops else 0
        clusters.append((members, rank))
    return clusters


def dimensionality(network: VoidNetwork, probe_radius_A: float) -> int:
    """Highest dimensionality (0–3) of the channels open to a probe of ``probe_radius_A`` (Å)."""
    return max((rank for _, rank in _clusters(network, probe_radius_A)), default=0)


def free_sphere_diameters_A(network: VoidNetwork) -> tuple[float, float, float]:
    """(Di, Df, Dif) in Å: largest included sphere, largest free sphere, largest included sphere on its path."""
    if len(network.node_radius_A) == 0:
        return 0.0, 0.0, 0.0
    di = 2.0 * float(network.node_radius_A.max())
    candidates = np.unique([radius for *_, radius in network.edges])[::-1]  # widest bottleneck first
    low, high = 0, len(candidates) - 1
    found = None
    while low <= high:  # the first (largest) radius that still percolates; percolation is monotone in p
        middle = (low + high) // 2
        if dimensionality(network, candidates[middle]) >= 1:
            found, high = middle, middle - 1
        else:
            low = middle + 1
    if found is None:
        return di, 0.0, 0.0
    free = float(candidates[found])
    on_path = [network.node_radius_A[members].max() for members, rank in _clusters(network, free) if rank >= 1]
    return di, 2.0 * free, 2.0 * float(max(on_path))
