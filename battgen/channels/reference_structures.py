"""Known open-channel structures built from published cell parameters and Wyckoff positions.

Used by the tests (channel radius against a hand calculation on the channel axis) and handy for users who
want a quick check of the void analysis on a textbook case. Lengths in Å.
"""

from __future__ import annotations

from pymatgen.core import Lattice, Structure


def rutile_tio2() -> Structure:
    """Rutile TiO2, P4_2/mnm: a = 4.5937 Å, c = 2.9587 Å, Ti 2a (0, 0, 0), O 4f (x, x, 0) with x = 0.30479
    (Burdett, Hughbanks, Miller, Richardson, Smith, J. Am. Chem. Soc. 109, 3639 (1987), 295 K). Empty 1-D
    channels run along c through (1/2, 0, z) and (0, 1/2, z)."""
    return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.5937, 2.9587), ["Ti", "O"],
                                     [[0, 0, 0], [0.30479, 0.30479, 0]])


def hollandite_mno2() -> Structure:
    """α-MnO2 (hollandite framework without tunnel cations), I4/m: a = 9.815 Å, c = 2.847 Å, Mn 8h
    (0.3485, 0.1669, 0), O1 8h (0.1537, 0.2019, 0), O2 8h (0.5418, 0.1661, 0) — the hollandite-type values
    commonly used for α-MnO2 (quoted from memory of the published refinements; not re-checked against the
    paper offline, which is why the tests verify the geometry itself: MnO6 octahedra with Mn–O 1.88–1.95 Å).
    The 2×2 tunnels run along c through (0, 0, z) and (1/2, 1/2, z)."""
    return Structure.from_spacegroup("I4/m", Lattice.tetragonal(9.815, 2.847), ["Mn", "O", "O"],
                                     [[0.3485, 0.1669, 0], [0.1537, 0.2019, 0], [0.5418, 0.1661, 0]])


def olivine_lifepo4() -> Structure:
    """LiFePO4 (triphylite), Pnma: a = 10.332 Å, b = 6.010 Å, c = 4.692 Å, Li 4a (0, 0, 0), Fe 4c (0.28222,
    1/4, 0.97472), P 4c (0.09486, 1/4, 0.41820), O1 4c (0.09678, 1/4, 0.74279), O2 4c (0.45710, 1/4, 0.20602),
    O3 8d (0.16558, 0.04646, 0.28478) (Streltsov, Belokoneva, Tsirelson, Hansen, Acta Cryst. B49, 147 (1993)).
    Li⁺ moves along 1-D channels parallel to b."""
    return Structure.from_spacegroup(
        "Pnma", Lattice.orthorhombic(10.332, 6.010, 4.692), ["Li", "Fe", "P", "O", "O", "O"],
        [[0, 0, 0], [0.28222, 0.25, 0.97472], [0.09486, 0.25, 0.41820], [0.09678, 0.25, 0.74279],
         [0.45710, 0.25, 0.20602], [0.16558, 0.04646, 0.28478]])
