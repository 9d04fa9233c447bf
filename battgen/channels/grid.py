"""Void space on a real-space grid: clearance field, void fraction and channel dimensionality.

The clearance of a point is its distance to the nearest atom surface, min_a(|x − a| − r_a) in Å. A probe
sphere of radius p fits where clearance ≥ p; the accessible points form periodic clusters, and a cluster's
dimensionality is the rank of the lattice translations along which it is connected to its own images
(0 = isolated pocket, 1 = channel, 2 = layer, 3 = 3-D network). Zeo++'s Python binding (pyzeo) does not
expose its channel dimensionality, so it is computed here on the same radii.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from pymatgen.core import Structure
from scipy import ndimage
from scipy.spatial import cKDTree

# Nearest-atom search radius (Å): clearances beyond it are capped (they only occur in huge voids).
_SEARCH_RADIUS_A = 6.0


def grid_shape(structure: Structure, spacing_A: float) -> tuple[int, int, int]:
    return tuple(max(4, math.ceil(length / spacing_A)) for length in structure.lattice.abc)


def clearance_grid(structure: Structure, radii_A: dict[str, float], spacing_A: float = 0.2,
                   search_radius_A: float = _SEARCH_RADIUS_A) -> np.ndarray:
    """Clearance (Å) at the centres of a grid of about ``spacing_A`` over the cell, shape (na, nb, nc).

    Atoms are searched up to ``search_radius_A`` from each point; where none is that close the clearance is
    reported as ``search_radius_A`` − radius (a lower bound). For the sign of the clearance (void or not) a
    search radius just above the largest atomic radius is enough, and much faster."""
    shape = grid_shape(structure, spacing_A)
    axes = [(np.arange(n) + 0.5) / n for n in shape]
    frac = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    points = frac @ structure.lattice.matrix

    matrix = structure.lattice.matrix
    volume = structure.lattice.volume
    # periodic images needed along each axis so that every atom within the search radius is present
    widths = [volume / np.linalg.norm(np.cross(matrix[(i + 1) % 3], matrix[(i + 2) % 3])) for i in range(3)]
    reach = [math.ceil(search_radius_A / w) + 1 for w in widths]
    shifts = np.array(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")).reshape(3, -1).T
    shift_cart = shifts @ matrix

    clearance = np.full(len(points), np.inf)
    symbols = np.array([site.specie.symbol for site in structure])
    cart = structure.cart_coords
    for symbol in np.unique(symbols):
        centres = (cart[symbols == symbol][None, :, :] + shift_cart[:, None, :]).reshape(-1, 3)
        distance, _ = cKDTree(centres).query(points, k=1, distance_upper_bound=search_radius_A)
        distance = np.where(np.isfinite(distance), distance, search_radius_A)
        np.minimum(clearance, distance - float(radii_A[symbol]), out=clearance)
    return clearance.reshape(shape)


def _periodic_vectors_rank(vectors: list[np.ndarray]) -> int:
    if not vectors:
        return 0
    return int(np.linalg.matrix_rank(np.array(vectors, dtype=float)))


def cluster_dimensionalities(mask: np.ndarray) -> list[int]:
    """Dimensionality (0–3) of every periodic cluster of True voxels (face connectivity)."""
    labels, n_labels = ndimage.label(mask)
    if n_labels == 0:
        return []
    # edges between non-periodic clusters that touch across a cell face, with the lattice shift crossed
    edges: dict[int, list[tuple[int, np.ndarray]]] = {label: [] for label in range(1, n_labels + 1)}
    for axis in range(3):
        last = np.take(labels, -1, axis=axis)
        first = np.take(labels, 0, axis=axis)
        both = (last > 0) & (first > 0)
        pairs = np.unique(np.stack([last[both], first[both]], axis=1), axis=0) if both.any() else []
        shift = np.zeros(3, dtype=int)
        shift[axis] = 1
        for a, b in pairs:
            edges[int(a)].append((int(b), shift))
            edges[int(b)].append((int(a), -shift))

    offset: dict[int, np.ndarray] = {}
    dimensionalities = []
    for start in range(1, n_labels + 1):
        if start in offset:
            continue
        offset[start] = np.zeros(3, dtype=int)
        loops: list[np.ndarray] = []
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for neighbour, shift in edges[node]:
                reached = offset[node] + shift
                if neighbour not in offset:
                    offset[neighbour] = reached
                    queue.append(neighbour)
                elif not np.array_equal(offset[neighbour], reached):
                    loops.append(reached - offset[neighbour])
        dimensionalities.append(_periodic_vectors_rank(loops))
    return dimensionalities


def accessible_dimensionality(clearance: np.ndarray, probe_radius_A: float) -> int:
    """Highest dimensionality of the space where a probe of ``probe_radius_A`` fits (0 if none/pockets)."""
    dims = cluster_dimensionalities(clearance >= probe_radius_A)
    return max(dims, default=0)


def percolation_radius_A(clearance: np.ndarray, tolerance_A: float = 0.01) -> float:
    """Largest probe radius (Å) whose accessible space still percolates (dimensionality ≥ 1), by bisection.

    A grid estimate of Zeo++'s largest-free-sphere radius (Df/2), limited by the grid spacing.
    """
    low, high = 0.0, float(clearance.max())
    if accessible_dimensionality(clearance, low) == 0:
        return 0.0
    while high - low > tolerance_A:
        middle = 0.5 * (low + high)
        if accessible_dimensionality(clearance, middle) >= 1:
            low = middle
        else:
            high = middle
    return low


def periodic_labels(mask: np.ndarray) -> np.ndarray:
    """Cluster id (1, 2, …; 0 = blocked) of every voxel, clusters joined across the periodic cell faces."""
    labels, n_labels = ndimage.label(mask)
    parent = list(range(n_labels + 1))

    def root(label: int) -> int:
        while parent[label] != label:
            parent[label] = parent[parent[label]]
            label = parent[label]
        return label

    for axis in range(3):
        last, first = np.take(labels, -1, axis=axis), np.take(labels, 0, axis=axis)
        both = (last > 0) & (first > 0)
        for a, b in set(zip(last[both].tolist(), first[both].tolist())):
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    lookup = np.array([root(label) for label in range(n_labels + 1)])
    return lookup[labels]
