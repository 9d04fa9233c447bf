"""Crystals as plain text, in the format of crystal-text-llm (Gruver et al., ICLR 2024)::

    5.1 5.1 5.1          lattice lengths a b c (Å), 1 decimal
    90 90 90             lattice angles alpha beta gamma (degrees), 0 decimals
    Li                   element symbol of site 1
    0.00 0.00 0.00       its fractional coordinates, 2 decimals
    Cl
    0.50 0.50 0.50
    ...

Fractional coordinates are wrapped into [0, 1) before printing (a value that rounds up to 1.00 prints as
0.00), so structure -> text -> structure reproduces the structure to the printed precision and
text -> structure -> text reproduces the text exactly.

Parsing reports *why* a text is not a crystal (:class:`CrystalTextError.reason`, one of
:data:`PARSE_FAILURE_REASONS`); atoms that overlap are not a parse failure (screening rejects them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pymatgen.core import Element, Lattice, Structure

# Why a generated text did not become a structure (counted per reason by the generator).
EMPTY = "empty"
TRUNCATED = "truncated"  # generation stopped (token budget) before the end-of-sequence token
UNPARSEABLE_LATTICE = "unparseable_lattice"  # the two lattice lines are not three numbers each
INVALID_LATTICE = "invalid_lattice"  # numbers that do not make a cell (length <= 0, impossible angles)
UNKNOWN_ELEMENT = "unknown_element"
WRONG_COORDINATE_COUNT = "wrong_coordinate_count"  # a coordinate line without exactly three numbers
NO_SITES = "no_sites"
PARSE_FAILURE_REASONS = (
    EMPTY, TRUNCATED, UNPARSEABLE_LATTICE, INVALID_LATTICE, UNKNOWN_ELEMENT, WRONG_COORDINATE_COUNT, NO_SITES,
)


class CrystalTextError(ValueError):
    """A text is not a crystal in the crystal-text format; ``reason`` is one of PARSE_FAILURE_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class TextFormat:
    """Decimals printed for lattice lengths (Å), angles (degrees) and fractional coordinates."""

    length_decimals: int = 1
    angle_decimals: int = 0
    coordinate_decimals: int = 2

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> TextFormat:
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown text-format key(s) {unknown}; allowed: {sorted(cls.__dataclass_fields__)}")
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 6:
                raise ValueError(f"{key} must be an integer between 0 and 6, got {value!r}")
        return cls(**values)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _format_number(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    # "-0.0" and "0.0" are the same number; one spelling keeps the text canonical.
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def wrapped_rounded_coordinates(frac_coords: np.ndarray, decimals: int) -> np.ndarray:
    """Fractional coordinates in [0, 1) rounded to ``decimals`` (1.00 after rounding becomes 0.00)."""
    rounded = np.round(np.mod(np.asarray(frac_coords, dtype=float), 1.0), decimals)
    rounded[rounded >= 1.0] -= 1.0
    return rounded + 0.0  # turns -0.0 into 0.0


def structure_to_text(structure: Structure, decimals: TextFormat | dict[str, int] | None = None) -> str:
    """The crystal-text form of an ordered structure (sites in the structure's order)."""
    fmt = decimals if isinstance(decimals, TextFormat) else TextFormat.from_dict(decimals)
    lattice = structure.lattice
    lines = [
        " ".join(_format_number(x, fmt.length_decimals) for x in lattice.abc),
        " ".join(_format_number(x, fmt.angle_decimals) for x in lattice.angles),
    ]
    coords = wrapped_rounded_coordinates(structure.frac_coords, fmt.coordinate_decimals)
    for site, xyz in zip(structure, coords):
        lines.append(site.specie.symbol)
        lines.append(" ".join(_format_number(x, fmt.coordinate_decimals) for x in xyz))
    return "\n".join(lines) + "\n"


def _numbers(line: str, reason: str, what: str) -> list[float]:
    try:
        values = [float(token) for token in line.split()]
    except ValueError as exc:
        raise CrystalTextError(reason, f"{what} line {line!r} is not numbers") from exc
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise CrystalTextError(reason, f"{what} line {line!r} does not hold three finite numbers")
    return values


def lattice_from_parameters(lengths: list[float], angles: list[float]) -> Lattice:
    """A lattice from a b c (Å) and alpha beta gamma (degrees); CrystalTextError when it is not a cell."""
    if min(lengths) <= 0:
        raise CrystalTextError(INVALID_LATTICE, f"lattice length(s) {lengths} not positive")
    if not all(0 < angle < 180 for angle in angles):
        raise CrystalTextError(INVALID_LATTICE, f"lattice angle(s) {angles} outside (0, 180) degrees")
    # The three angles make a cell only when the metric tensor is positive definite (volume² > 0).
    cosines = np.cos(np.radians(angles))
    volume_factor = 1 - (cosines**2).sum() + 2 * cosines.prod()
    if not volume_factor > 1e-8:
        raise CrystalTextError(INVALID_LATTICE, f"angles {angles} do not make a cell")
    return Lattice.from_parameters(*lengths, *angles)


def text_to_structure(text: str) -> Structure:
    """Parse a crystal text; raises :class:`CrystalTextError` with the reason when it is not one.

    A trailing element line without its coordinate line (a cut-off text) is ``truncated``.
    """
    lines = [line.strip() for line in text.strip().splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise CrystalTextError(EMPTY, "no text")
    if len(lines) < 2:
        raise CrystalTextError(UNPARSEABLE_LATTICE, "fewer than two lattice lines")
    lengths = _numbers(lines[0], UNPARSEABLE_LATTICE, "lattice length")
    angles = _numbers(lines[1], UNPARSEABLE_LATTICE, "lattice angle")
    lattice = lattice_from_parameters(lengths, angles)
    site_lines = lines[2:]
    if not site_lines:
        raise CrystalTextError(NO_SITES, "a lattice without sites")
    species, coords = [], []
    for index in range(0, len(site_lines), 2):
        symbol = site_lines[index]
        if not Element.is_valid_symbol(symbol):
            raise CrystalTextError(UNKNOWN_ELEMENT, f"{symbol!r} is not an element symbol")
        if index + 1 >= len(site_lines):
            raise CrystalTextError(TRUNCATED, f"site {index // 2 + 1} ({symbol}) has no coordinate line")
        coords.append(_numbers(site_lines[index + 1], WRONG_COORDINATE_COUNT, "coordinate"))
        species.append(symbol)
    return Structure(lattice, species, coords, coords_are_cartesian=False)


# --- augmentation: the model must learn that site order and origin carry no information ---------------
def permute_sites(structure: Structure, rng: np.random.Generator) -> Structure:
    order = rng.permutation(len(structure))
    return Structure(structure.lattice, [structure[i].specie for i in order], structure.frac_coords[order])


def translate_sites(structure: Structure, rng: np.random.Generator) -> Structure:
    """All sites shifted by one random fractional vector, wrapped back into the cell."""
    shift = rng.random(3)
    return Structure(structure.lattice, structure.species, np.mod(structure.frac_coords + shift, 1.0))


def augment_structure(
    structure: Structure, rng: np.random.Generator, permute: bool = True, translate: bool = True
) -> Structure:
    if permute:
        structure = permute_sites(structure, rng)
    if translate:
        structure = translate_sites(structure, rng)
    return structure


def mask_element_text(structure: Structure, element: str, decimals: TextFormat, mask: str) -> str:
    """The crystal text with every site of ``element`` printed as ``mask`` (the infilling task's input)."""
    lines = structure_to_text(structure, decimals).splitlines()
    return "\n".join(mask if i >= 2 and i % 2 == 0 and line == element else line for i, line in enumerate(lines)) + "\n"
