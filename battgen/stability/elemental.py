"""Ground-state-like structures of the elements, built offline, as the corners of an MLIP convex hull.

A hull computed from MLIP energies needs every element's reference energy from the *same* MLIP, so the
elemental structures are relaxed with it like any candidate. They are built here without any database:

* **crystals** — :func:`ase.build.bulk` with the experimental lattice data of
  :data:`ase.data.reference_states` (bcc Li, hcp Mg, fcc Al, diamond Si, bcc Fe, …);
* **crystals ASE cannot build** (its reference state needs an atomic basis it does not ship) — the
  common ground-state structure from its space group and Wyckoff positions (α-Mn, black P, α-Ga,
  trigonal Se/Te);
* **molecular and gaseous elements** — one molecule in a periodic cubic box of
  :data:`MOLECULE_BOX_A` Å (H2, N2, O2, F2, Cl2, Br2, I2, S8 crown ring; He as an atom). A molecule in a
  box, rather than a molecular crystal, because the molecular crystals' ground states are large
  (α-S has 128 atoms, solid Cl2/Br2/I2 are held by dispersion that GGA-trained MLIPs barely describe)
  and the intermolecular binding (≲ 0.1 eV/atom) is below the accuracy of a hull built from MLIP
  energies. The box is 12 Å, so periodic images are ≥ 9 Å apart, beyond every common MLIP cutoff
  (CHGNet 5 Å, SevenNet 5 Å, M3GNet 5 Å). These rows carry ``fixed_cell: True``: relax the atoms only,
  a cell relaxation would collapse the vacuum.

Elements with no reliable simple structure here (B, Pm, At, Rn, Fr, Ra, Pa, Pu and beyond) raise
:class:`UnsupportedElementError`; pass your own structure through ``overrides``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from ase.build import bulk
from ase.data import atomic_numbers, reference_states
from pymatgen.core import Element, Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from battgen.batch import StructureBatch

# Edge of the cubic box around a molecule (Å): images ≥ 9 Å apart for the largest molecule (S8, I2).
MOLECULE_BOX_A = 12.0

# Diatomic gas/molecular elements: bond lengths (Å) of the free molecule. H, N, O, F from
# ase.data.reference_states; Cl2, Br2, I2 experimental gas-phase bond lengths (NIST CCCBDB).
_DIATOMIC_BOND_A = {"H": 0.74, "N": 1.10, "O": 1.21, "F": 1.42, "Cl": 1.99, "Br": 2.28, "I": 2.67}

# Crystals ASE's reference_states lists without an atomic basis: (space group, lattice, Wyckoff
# sites, provenance). Positions from the ICSD-standard descriptions of the room-temperature phases.
_CRYSTALS_FROM_WYCKOFF = {
    # α-Mn, I-43m, 58 atoms (29 in the primitive cell); Lawson et al., J. Appl. Phys. 76, 7049 (1994).
    "Mn": (
        "I-43m",
        Lattice.cubic(8.911),
        [[0, 0, 0], [0.3179, 0.3179, 0.3179], [0.3571, 0.3571, 0.0347], [0.0896, 0.0896, 0.2819]],
        "alpha-Mn (I-43m, a=8.911 Å; Lawson 1994), primitive cell",
    ),
    # Black phosphorus, Cmce, Brown & Rundqvist, Acta Cryst. 19, 684 (1965).
    "P": (
        "Cmce",
        Lattice.orthorhombic(3.3136, 10.478, 4.3763),
        [[0, 0.10168, 0.08056]],
        "black phosphorus (Cmce; Brown & Rundqvist 1965), primitive cell",
    ),
    # α-Ga, Cmce, Sharma & Donohue, Z. Kristallogr. 117, 293 (1962).
    "Ga": (
        "Cmce",
        Lattice.orthorhombic(4.5192, 7.6586, 4.5258),
        [[0, 0.1549, 0.0810]],
        "alpha-Ga (Cmce; Sharma & Donohue 1962), primitive cell",
    ),
    # Trigonal helical chains, P3_121 (Wyckoff 3a).
    "Se": ("P3_121", Lattice.hexagonal(4.3662, 4.9536), [[0.2254, 0, 1 / 3]], "trigonal Se (P3_121, chains)"),
    "Te": ("P3_121", Lattice.hexagonal(4.4572, 5.9290), [[0.2636, 0, 1 / 3]], "trigonal Te (P3_121, chains)"),
}

# Elements deliberately not built: no simple, trustworthy ground-state structure (α-B has a 12-atom
# icosahedral cell with refined positions; the rest are radioactive or have no ASE data).
_UNSUPPORTED = {"B", "Pm", "At", "Rn", "Fr", "Ra", "Pa", "Pu"}


class UnsupportedElementError(ValueError):
    """An element has no elemental reference structure here (or is not an element at all)."""


def _molecule_in_box(positions: np.ndarray, symbol: str) -> Structure:
    """Centre a molecule (Cartesian Å) in a cubic box of MOLECULE_BOX_A Å."""
    positions = np.asarray(positions, dtype=float)
    centred = positions - positions.mean(axis=0) + MOLECULE_BOX_A / 2
    return Structure(Lattice.cubic(MOLECULE_BOX_A), [symbol] * len(positions), centred, coords_are_cartesian=True)


def _s8_crown(bond_A: float = 2.06, angle_deg: float = 108.0) -> np.ndarray:
    """Cartesian positions of the S8 crown ring (D4d): 8 atoms on a circle, alternately up and down.

    The 1–3 distance 2·d·sin(θ/2) equals r·√2 for atoms 90° apart, which fixes the radius r; the bond
    length then fixes the height ±h.
    """
    radius = 2 * bond_A * np.sin(np.radians(angle_deg) / 2) / np.sqrt(2)
    half_height = 0.5 * np.sqrt(bond_A**2 - 2 * radius**2 * (1 - np.cos(np.pi / 4)))
    phi = np.arange(8) * np.pi / 4
    z = np.where(np.arange(8) % 2 == 0, half_height, -half_height)
    return np.column_stack([radius * np.cos(phi), radius * np.sin(phi), z])


def elemental_reference_structure(symbol: str) -> tuple[Structure, dict]:
    """One element's reference structure and the metadata saying how it was built."""
    try:
        element = Element(symbol)
    except ValueError as exc:
        raise UnsupportedElementError(f"{symbol!r} is not a chemical element") from exc
    symbol = element.symbol
    if symbol in _DIATOMIC_BOND_A:
        bond = _DIATOMIC_BOND_A[symbol]
        structure = _molecule_in_box([[0, 0, 0], [bond, 0, 0]], symbol)
        return structure, {
            "source": f"{symbol}2 molecule (d={bond} Å) in a {MOLECULE_BOX_A:g} Å cubic box",
            "structure_kind": "molecule_in_box",
            "fixed_cell": True,
        }
    if symbol == "S":
        return _molecule_in_box(_s8_crown(), "S"), {
            "source": f"S8 crown ring (d=2.06 Å, 108°) in a {MOLECULE_BOX_A:g} Å cubic box",
            "structure_kind": "molecule_in_box",
            "fixed_cell": True,
        }
    if symbol == "He":
        return _molecule_in_box([[0, 0, 0]], "He"), {
            "source": f"He atom in a {MOLECULE_BOX_A:g} Å cubic box",
            "structure_kind": "molecule_in_box",
            "fixed_cell": True,
        }
    if symbol in _CRYSTALS_FROM_WYCKOFF:
        spacegroup, lattice, sites, description = _CRYSTALS_FROM_WYCKOFF[symbol]
        conventional = Structure.from_spacegroup(spacegroup, lattice, [symbol] * len(sites), sites)
        return conventional.get_primitive_structure(), {
            "source": description,
            "structure_kind": "crystal",
            "fixed_cell": False,
        }
    state = reference_states[atomic_numbers[symbol]] if symbol in atomic_numbers else None
    if symbol in _UNSUPPORTED or not state:
        raise UnsupportedElementError(
            f"no elemental reference structure for {symbol}: pass one through overrides={{'{symbol}': structure}}"
        )
    try:
        atoms = bulk(symbol)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UnsupportedElementError(f"ase.build.bulk cannot build {symbol} ({state}): {exc}") from exc
    parameters = ", ".join(f"{k}={v}" for k, v in state.items() if k != "basis" and v is not None)
    return AseAtomsAdaptor.get_structure(atoms), {
        "source": f"ase.build.bulk from ase.data.reference_states ({parameters})",
        "structure_kind": "crystal",
        "fixed_cell": False,
    }


def elemental_reference_structures(
    elements: Iterable[str | Element], overrides: Mapping[str, Structure] | None = None
) -> StructureBatch:
    """A batch with one reference structure per element (sorted by symbol), row ids ``element-<Symbol>``.

    ``overrides`` maps a symbol to a structure of your own (e.g. from a database) for elements not
    supported here or where you want a specific polymorph; its ``source`` reads ``user override``.
    Raises :class:`UnsupportedElementError` naming every element that cannot be built.
    """
    overrides = dict(overrides or {})
    symbols = sorted({getattr(e, "symbol", str(e)) for e in elements})
    structures, meta, failures = [], [], []
    for symbol in symbols:
        if symbol in overrides:
            structure = overrides[symbol]
            if {el.symbol for el in structure.composition.elements} != {symbol}:
                raise UnsupportedElementError(f"override for {symbol} is {structure.composition.reduced_formula}")
            info = {"source": "user override", "structure_kind": "crystal", "fixed_cell": False}
        else:
            try:
                structure, info = elemental_reference_structure(symbol)
            except UnsupportedElementError as exc:
                failures.append(str(exc))
                continue
        structures.append(structure)
        meta.append({"row_id": f"element-{symbol}", "element": symbol, **info})
    if failures:
        raise UnsupportedElementError("; ".join(failures))
    return StructureBatch(structures, meta)
