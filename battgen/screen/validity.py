"""Structure validity exactly as CDVAE's ``structure_validity`` (also used by DiffCSP and MatterGen).

A structure is valid when no two distinct sites are closer than ``cutoff`` (0.5 Å) under the minimum
image convention, and the cell volume is at least ``min_volume`` (0.1 Å³). As in CDVAE, the distance of a
site to its own periodic image is not checked (a one-atom cell with a 0.3 Å lattice vector passes); set
``check_self_images=True`` to also require every lattice vector to be at least ``cutoff`` long.
"""

from __future__ import annotations

import numpy as np
from pymatgen.core import Structure

DEFAULT_MIN_DISTANCE_A = 0.5
DEFAULT_MIN_VOLUME_A3 = 0.1


def min_interatomic_distance(structure: Structure) -> float:
    """Shortest distance (Å) between two distinct sites including periodic images; inf for one site."""
    if len(structure) < 2:
        return float("inf")
    distances = structure.distance_matrix.copy()
    np.fill_diagonal(distances, np.inf)
    return float(distances.min())


def validity_reason(
    structure: Structure,
    cutoff: float = DEFAULT_MIN_DISTANCE_A,
    min_volume: float = DEFAULT_MIN_VOLUME_A3,
    check_self_images: bool = False,
) -> str | None:
    """``None`` when the structure is valid, else why not (e.g. ``"min distance 0.31 Å < 0.5 Å"``)."""
    min_distance = min_interatomic_distance(structure)
    if min_distance < cutoff:
        return f"min distance {min_distance:.2f} Å < {cutoff} Å"
    if structure.volume < min_volume:
        return f"volume {structure.volume:.3g} Å³ < {min_volume} Å³"
    if check_self_images:
        shortest_vector = float(min(structure.lattice.abc))
        if shortest_vector < cutoff:
            return f"lattice vector {shortest_vector:.2f} Å < {cutoff} Å (site overlaps its own image)"
    return None


def structure_validity(structure: Structure, cutoff: float = DEFAULT_MIN_DISTANCE_A) -> bool:
    """CDVAE's boolean ``structure_validity(crystal, cutoff=0.5)``."""
    return validity_reason(structure, cutoff=cutoff) is None
