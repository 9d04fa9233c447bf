"""Cells for diffusion MD: a near-cubic supercell of at least N atoms, then working-ion vacancies.

Seed 002 (Computational Details, §2.2): "a supercell for each structure that initially contains at least
512 atoms, but with one-fifth of the Mg atoms deleted randomly to create ionic migration interstices".

* :func:`make_supercell` takes the conventional standard cell (axes along x, y, z) and searches integer
  transformation matrices with ASE's
  ``find_optimal_cell_shape`` (Hart/Erhard scheme: minimise the deviation of the supercell from a
  simple cube of the same volume) over a few cell counts at or above ``ceil(min_atoms / n_sites)`` and
  keeps the most cubic one. A near-cubic box maximises the shortest periodic image distance for a given
  atom count, which is what limits finite-size effects in the MSD.
* :func:`remove_working_ions` deletes exactly ``round(fraction * n_ion)`` (or ``count``) working ions
  chosen with a seeded ``numpy.random.default_rng``; the record lists the removed site indices.

Charge compensation: removing ions of charge +Z leaves the cell formally charged by ``-Z`` per vacancy.
MLIPs have no explicit total charge, so, as in the seed, nothing is done; the framework is implicitly
oxidised (the electrons stay with the host). The record states the formal charge left behind so that
a reader (or a later compensating step, e.g. reducing a transition metal) knows it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pymatgen.core import Structure

from battgen.contracts.ions import ion_charge  # noqa: F401 - re-exported (the formal charge from pymatgen)

DEFAULT_MIN_ATOMS = 512
DEFAULT_VACANCY_FRACTION = 0.2
# How many cell counts above the minimum are tried: a slightly larger cell can be far more cubic
# (e.g. 4x4x4 conventional fcc = 64 cells vs 63).
DEFAULT_EXTRA_SIZES = 4


def cubicity(lattice_matrix: np.ndarray) -> float:
    """Shortest perpendicular width of the cell divided by the edge of the cube of equal volume (1 = cube).

    The perpendicular width along axis i is V / |a_j x a_k|; twice the largest sphere that fits in the cell.
    """
    matrix = np.asarray(lattice_matrix, dtype=float)
    volume = abs(np.linalg.det(matrix))
    widths = [volume / np.linalg.norm(np.cross(matrix[(i + 1) % 3], matrix[(i + 2) % 3])) for i in range(3)]
    return float(min(widths) / volume ** (1.0 / 3.0))


def naive_diagonal_multiplier(n_sites: int, min_atoms: int) -> int:
    """Smallest n with n**3 * n_sites >= min_atoms (the isotropic n x n x n supercell)."""
    n = max(1, math.ceil((min_atoms / n_sites) ** (1.0 / 3.0) - 1e-9))
    while n**3 * n_sites < min_atoms:
        n += 1
    return n


@dataclass(frozen=True)
class SupercellRecord:
    scaling_matrix: list[list[int]]
    n_atoms: int
    cubicity: float  # see :func:`cubicity`; 1 for a cube
    min_width_A: float  # shortest perpendicular width of the supercell
    method: str = "conventional standard cell + ase.build.supercells.find_optimal_cell_shape(target_shape='sc')"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def conventional_cell(structure: Structure, symprec: float = 0.01) -> Structure:
    """Conventional standard cell (spglib), or ``structure`` itself if that fails or changes the density."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        conventional = SpacegroupAnalyzer(structure, symprec=symprec).get_conventional_standard_structure()
    except Exception:  # noqa: BLE001 - symmetry detection is a convenience here, not a requirement
        return structure
    per_atom = structure.volume / len(structure)
    same_density = abs(conventional.volume / len(conventional) - per_atom) < 1e-6 * per_atom
    same_formula = conventional.composition.reduced_formula == structure.composition.reduced_formula
    return conventional if same_density and same_formula else structure


CUBICITY_TOLERANCE = 0.05  # cubicity a smaller supercell may give up


def make_supercell(
    structure: Structure, min_atoms: int = DEFAULT_MIN_ATOMS, extra_sizes: int = DEFAULT_EXTRA_SIZES,
) -> tuple[Structure, SupercellRecord]:
    """Near-cubic supercell with at least ``min_atoms`` atoms; returns (supercell, record)."""
    from ase.build.supercells import find_optimal_cell_shape

    if min_atoms < 1:
        raise ValueError(f"min_atoms must be positive, got {min_atoms}")
    # The search compares with a cube aligned with the Cartesian axes: start from the conventional standard
    # cell (a along x, symmetry axes along x, y, z), where that cube is commensurate with the crystal.
    structure = conventional_cell(structure)
    n_sites = len(structure)
    smallest = max(1, math.ceil(min_atoms / n_sites))
    matrix = structure.lattice.matrix
    candidates: list[tuple[float, int, np.ndarray]] = []
    for n_cells in range(smallest, smallest + extra_sizes + 1):
        if n_cells == 1:
            candidate = np.eye(3, dtype=int)
        else:
            candidate = np.asarray(find_optimal_cell_shape(matrix, n_cells, "sc", verbose=False), dtype=int)
        if round(abs(np.linalg.det(candidate))) != n_cells:
            continue
        if np.linalg.det(candidate) < 0:  # keep a right-handed cell
            candidate = -candidate
        candidates.append((cubicity(candidate @ matrix), n_cells, candidate))
        if candidates[-1][0] > 0.999:
            break
    diagonal = naive_diagonal_multiplier(n_sites, min_atoms)
    diagonal_matrix = np.diag([diagonal] * 3)
    candidates.append((cubicity(diagonal_matrix @ matrix), diagonal**3, diagonal_matrix))
    # The smallest cell within CUBICITY_TOLERANCE of the most cubic one: a perfect cube is not worth 50 %
    # more atoms (Li2O at 512 would become 768 atoms and ~13 GB with CHGNet).
    best_score = max(score for score, _, _ in candidates)
    best = min((c for c in candidates if c[0] >= best_score - CUBICITY_TOLERANCE), key=lambda c: (c[1], -c[0]))
    supercell = structure.copy()
    supercell.make_supercell(best[2])
    widths_matrix = supercell.lattice.matrix
    record = SupercellRecord(
        scaling_matrix=best[2].astype(int).tolist(),
        n_atoms=len(supercell),
        cubicity=round(best[0], 6),
        min_width_A=round(cubicity(widths_matrix) * supercell.volume ** (1.0 / 3.0), 4),
    )
    return supercell, record


@dataclass(frozen=True)
class VacancyRecord:
    ion: str
    n_ions_before: int
    n_removed: int
    removed_site_indices: list[int]  # indices in the structure *before* removal
    seed: int
    formal_charge_left_e: float  # -Z per removed ion; not compensated (see the module docstring)
    note: str = field(default=(
        "working-ion vacancies are not charge compensated: the MLIP has no total-charge input, the host "
        "framework is implicitly oxidised (as in seed 002)"
    ))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def remove_working_ions(
    structure: Structure, ion: str, fraction: float | None = DEFAULT_VACANCY_FRACTION,
    count: int | None = None, seed: int = 0,
) -> tuple[Structure, VacancyRecord]:
    """Remove ``count`` or ``round(fraction * n_ion)`` randomly chosen ``ion`` sites (seeded).

    Python's ``round`` (half to even) is used so the count is well defined; ``count`` overrides
    ``fraction``. Returns (structure without those sites, record with the removed indices).
    """
    indices = [i for i, site in enumerate(structure) if site.specie.symbol == ion]
    if not indices:
        raise ValueError(f"no {ion} in {structure.composition.reduced_formula}")
    if count is None:
        if fraction is None or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        count = int(round(fraction * len(indices)))
    if not 0 <= count <= len(indices):
        raise ValueError(f"cannot remove {count} of {len(indices)} {ion}")
    rng = np.random.default_rng(seed)
    removed = sorted(int(i) for i in rng.choice(indices, size=count, replace=False))
    reduced = structure.copy()
    reduced.remove_sites(removed)
    record = VacancyRecord(
        ion=ion, n_ions_before=len(indices), n_removed=count, removed_site_indices=removed, seed=int(seed),
        formal_charge_left_e=float(-ion_charge(ion) * count),
    )
    return reduced, record
