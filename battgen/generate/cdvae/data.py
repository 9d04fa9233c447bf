"""Structures -> cached tensors for CDVAE, and the standardisation statistics saved with a model.

Each structure is featurised once (:func:`featurize_structure`): Niggli-reduced cell rebuilt from its six
parameters (CDVAE's canonical, rotation-free lattice), atomic numbers, fractional coordinates, the
encoder's periodic graph and its triplets. :func:`collate` concatenates cached crystals into a batch by
shifting indices only, so an epoch never re-runs pymatgen or the neighbour search.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pymatgen.core import Element, Lattice, Structure

from battgen.generate.cdvae.graph import edge_triplets, periodic_radius_graph

MAX_ATOMIC_NUMBER = 100  # CDVAE's MAX_ATOMIC_NUM: atom-type classes are Z = 1 ... 100
ELEMENT_PRESENCE = "element_presence"  # the condition key for known-present / known-absent elements


def canonical_structure(structure: Structure) -> Structure:
    """The Niggli-reduced cell, re-oriented from its lengths and angles (as CDVAE builds its lattices)."""
    reduced = structure.get_reduced_structure(reduction_algo="niggli")
    lattice = Lattice.from_parameters(*reduced.lattice.abc, *reduced.lattice.angles)
    return Structure(lattice, reduced.species, reduced.frac_coords % 1.0, coords_are_cartesian=False)


def lattice_features(lengths_A: np.ndarray, angles_deg: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """CDVAE's ``scale_length`` lattice target: lengths / N^(1/3) (Å) and angles (degrees), shape (B, 6)."""
    return np.concatenate([lengths_A / np.cbrt(n_atoms)[:, None], angles_deg], axis=1)


@dataclass
class Scaler:
    """Standardisation (x - mean) / std, per column; saved with the model as plain lists."""

    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, values: np.ndarray) -> Scaler:
        values = np.asarray(values, dtype=float).reshape(len(values), -1)
        std = values.std(axis=0)
        return cls(mean=values.mean(axis=0).tolist(), std=np.where(std > 1e-8, std, 1.0).tolist())

    def transform(self, values: torch.Tensor) -> torch.Tensor:
        return (values - values.new_tensor(self.mean)) / values.new_tensor(self.std)

    def inverse(self, values: torch.Tensor) -> torch.Tensor:
        return values * values.new_tensor(self.std) + values.new_tensor(self.mean)

    def as_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


@dataclass
class CrystalRecord:
    """One featurised crystal (float64 geometry is downcast at collation)."""

    atom_types: torch.Tensor  # (n,) atomic numbers
    frac_coords: torch.Tensor  # (n, 3)
    lattice: torch.Tensor  # (3, 3) Å, rows
    lengths_A: torch.Tensor  # (3,)
    angles_deg: torch.Tensor  # (3,)
    edge_source: torch.Tensor  # (E,) local indices
    edge_target: torch.Tensor
    edge_offset: torch.Tensor  # (E, 3)
    triplet_in: torch.Tensor  # (T,) local edge indices
    triplet_out: torch.Tensor
    conditions: torch.Tensor = field(default_factory=lambda: torch.zeros(0, device="cpu"))  # (n_scalar_conditions,) raw
    properties: torch.Tensor = field(default_factory=lambda: torch.zeros(0, device="cpu"))  # (n_properties,) raw, nan unknown


def featurize_structure(structure: Structure, cutoff_A: float, max_neighbors: int, canonical: bool = True
                        ) -> CrystalRecord:
    """Cached tensors of one crystal, on the CPU (the cache; batches move to the model's device);
    ``canonical=False`` keeps the cell as given (symmetry tests)."""
    cell = canonical_structure(structure) if canonical else structure
    lengths = torch.tensor(cell.lattice.abc, dtype=torch.float64, device="cpu")
    angles = torch.tensor(cell.lattice.angles, dtype=torch.float64, device="cpu")
    lattice = torch.tensor(cell.lattice.matrix, dtype=torch.float64, device="cpu")[None]  # (1, 3, 3)
    frac = torch.tensor(cell.frac_coords % 1.0, dtype=torch.float64, device="cpu")
    num_atoms = torch.tensor([len(cell)], device="cpu")
    graph = periodic_radius_graph(frac, lattice, num_atoms, cutoff_A, max_neighbors)
    triplets = edge_triplets(graph, len(cell))
    return CrystalRecord(
        atom_types=torch.tensor([site.specie.Z for site in cell], dtype=torch.long, device="cpu"),
        frac_coords=frac, lattice=lattice[0], lengths_A=lengths, angles_deg=angles,
        edge_source=graph.source, edge_target=graph.target, edge_offset=graph.offset,
        triplet_in=triplets.edge_in, triplet_out=triplets.edge_out,
    )


@dataclass
class CrystalBatch:
    """Many crystals as one set of tensors (float32 geometry)."""

    atom_types: torch.Tensor  # (N,)
    frac_coords: torch.Tensor  # (N, 3)
    lattices: torch.Tensor  # (B, 3, 3) Å
    lengths_A: torch.Tensor  # (B, 3)
    angles_deg: torch.Tensor  # (B, 3)
    num_atoms: torch.Tensor  # (B,)
    crystal_index: torch.Tensor  # (N,)
    edge_source: torch.Tensor
    edge_target: torch.Tensor
    edge_offset: torch.Tensor
    triplet_in: torch.Tensor
    triplet_out: torch.Tensor
    conditions: torch.Tensor  # (B, n_scalar_conditions) raw values
    properties: torch.Tensor  # (B, n_properties) raw values, nan where unknown

    @property
    def n_crystals(self) -> int:
        return len(self.num_atoms)

    def to(self, device) -> CrystalBatch:
        """The batch on ``device`` (the model's): collation happens on the CPU where the cache lives."""
        return CrystalBatch(**{name: getattr(self, name).to(device, non_blocking=True)
                               for name in self.__dataclass_fields__})


def collate(records: list[CrystalRecord]) -> CrystalBatch:
    """One CPU batch of cached crystals (move it with :meth:`CrystalBatch.to`)."""
    num_atoms = torch.tensor([len(r.atom_types) for r in records], device="cpu")
    atom_shift = torch.cumsum(num_atoms, 0) - num_atoms
    n_edges = torch.tensor([len(r.edge_source) for r in records], device="cpu")
    edge_shift = torch.cumsum(n_edges, 0) - n_edges

    def shifted(name: str, shifts: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(r, name) + int(s) for r, s in zip(records, shifts)])

    return CrystalBatch(
        atom_types=torch.cat([r.atom_types for r in records]),
        frac_coords=torch.cat([r.frac_coords for r in records]).float(),
        lattices=torch.stack([r.lattice for r in records]).float(),
        lengths_A=torch.stack([r.lengths_A for r in records]).float(),
        angles_deg=torch.stack([r.angles_deg for r in records]).float(),
        num_atoms=num_atoms,
        crystal_index=torch.repeat_interleave(torch.arange(len(records), device="cpu"), num_atoms),
        edge_source=shifted("edge_source", atom_shift),
        edge_target=shifted("edge_target", atom_shift),
        edge_offset=torch.cat([r.edge_offset for r in records]).float(),
        triplet_in=shifted("triplet_in", edge_shift),
        triplet_out=shifted("triplet_out", edge_shift),
        conditions=torch.stack([r.conditions for r in records]).float(),
        properties=torch.stack([r.properties for r in records]).float(),
    )


def element_symbols_to_numbers(symbols: list[str]) -> list[int]:
    return [Element(symbol).Z for symbol in symbols]


def condition_scalar_keys(conditions: list[str]) -> list[str]:
    """The scalar condition keys among a model's ``conditions`` (everything but element presence)."""
    return [key for key in conditions if key != ELEMENT_PRESENCE]


def records_to_arrays(records: list[CrystalRecord]) -> dict[str, Any]:
    """Per-crystal numpy arrays used to fit the scalers."""
    return {
        "lengths_A": np.stack([r.lengths_A.numpy() for r in records]),
        "angles_deg": np.stack([r.angles_deg.numpy() for r in records]),
        "num_atoms": np.array([len(r.atom_types) for r in records], dtype=float),
    }
