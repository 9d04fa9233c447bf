"""The working ions the commands accept and their formal charges (from pymatgen, not a table of our own)."""

from __future__ import annotations

from functools import lru_cache

# Ions that insertion, generation conditions and the electrode tables know (Li, Na, K; Mg, Ca, Zn; Al).
WORKING_IONS = ("Li", "Na", "K", "Mg", "Ca", "Zn", "Al")


def ion_charge(ion: str) -> int:
    """Formal charge Z of a working ion: its largest common positive oxidation state (pymatgen: Li 1, Mg 2, Al 3)."""
    from pymatgen.core import Element

    positive = [state for state in Element(ion).common_oxidation_states if state > 0]
    if not positive:
        raise ValueError(f"{ion} has no common positive oxidation state")
    return int(max(positive))


@lru_cache(maxsize=1)
def _charges() -> tuple[tuple[str, int], ...]:
    return tuple((ion, ion_charge(ion)) for ion in WORKING_IONS)


def ion_charges() -> dict[str, int]:
    """``{ion: Z}`` for every working ion (a new dict each call)."""
    return dict(_charges())
