"""A small built-in set of classic battery host structures, built from published crystallography.

Each structure is generated with :meth:`pymatgen.core.Structure.from_spacegroup` from a space group,
lattice constants and Wyckoff positions taken from the cited experimental refinement, so no data file is
needed and the provenance of every number is in this file. Coordinates are given in the *setting pymatgen
uses* for that space-group symbol: for Fd-3m and I4_1/amd this is origin choice 1, so values published in
origin choice 2 are shifted (by +1/8,+1/8,+1/8 for Fd-3m and by 0,-1/4,+1/8 for I4_1/amd; noted per entry).

Use these as seeds for substitution, as references in tests, or as a quick sanity set; for production
screening pull relaxed structures from Materials Project (:mod:`battgen.sources.materials_project`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.groups import SpaceGroup

from battgen.batch import StructureBatch

ROW_ID_PREFIX = "host-"


@dataclass(frozen=True)
class HostSpec:
    """Published crystallography of one host: enough to rebuild the conventional cell."""

    name: str
    spacegroup: str  # symbol in the setting of the coordinates below (pymatgen's setting)
    abc_angstrom: tuple[float, float, float]
    angles_degree: tuple[float, float, float]
    species: tuple[str, ...]
    wyckoff_coords: tuple[tuple[float, float, float], ...]  # one representative per Wyckoff orbit
    source: str
    working_ion: str | None = None

    def build(self) -> Structure:
        lattice = Lattice.from_parameters(*self.abc_angstrom, *self.angles_degree)
        with warnings.catch_warnings():  # pymatgen warns that non-standard settings (Pbnm) lack a full symbol
            warnings.simplefilter("ignore", UserWarning)
            return Structure.from_spacegroup(self.spacegroup, lattice, list(self.species), list(self.wyckoff_coords))

    @property
    def spacegroup_number(self) -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return SpaceGroup(self.spacegroup).int_number

    @property
    def standard_spacegroup_symbol(self) -> str:
        """Short Hermann-Mauguin symbol of the standard setting (e.g. Pnma for a Pbnm description)."""
        return SpaceGroup.from_int_number(self.spacegroup_number).symbol


_CUBIC = (90.0, 90.0, 90.0)
_HEXAGONAL = (90.0, 90.0, 120.0)

_HOSTS: tuple[HostSpec, ...] = (
    HostSpec(
        "LiCoO2", "R-3m", (2.8156, 2.8156, 14.0542), _HEXAGONAL,
        ("Li", "Co", "O"), ((0, 0, 0), (0, 0, 0.5), (0, 0, 0.2396)),
        "Akimoto, Gotoh, Oosawa, J. Solid State Chem. 141, 298 (1998); Li 3a, Co 3b, O 6c; "
        "Materials Project mp-22526",
        "Li",
    ),
    HostSpec(
        "LiFePO4", "Pnma", (10.332, 6.010, 4.692), _CUBIC,
        ("Li", "Fe", "P", "O", "O", "O"),
        ((0, 0, 0), (0.28222, 0.25, 0.97472), (0.09486, 0.25, 0.41820), (0.09678, 0.25, 0.74279),
         (0.45710, 0.25, 0.20602), (0.16558, 0.04646, 0.28478)),
        "Streltsov, Belokoneva, Tsirelson, Hansen, Acta Cryst. B49, 147 (1993) (olivine triphylite); "
        "Materials Project mp-19017",
        "Li",
    ),
    HostSpec(
        # Published in origin choice 2: Li 8a (1/8,1/8,1/8), Mn 16d (1/2,1/2,1/2), O 32e x = 0.2631.
        "LiMn2O4", "Fd-3m", (8.2476, 8.2476, 8.2476), _CUBIC,
        ("Li", "Mn", "O"), ((0, 0, 0), (0.625, 0.625, 0.625), (0.3881, 0.3881, 0.3881)),
        "Cubic spinel LiMn2O4 at room temperature, a = 8.2476 A, x(O) = 0.2631 (origin 2): Thackeray, David, "
        "Bruce, Goodenough, Mater. Res. Bull. 18, 461 (1983) and later neutron refinements",
        "Li",
    ),
    HostSpec(
        # Hausmannite-type tetragonal spinel. Origin choice 2: Mg 4a (0,3/4,1/8), Mn 8d (0,0,1/2),
        # O 16h (0, 0.4734, 0.2604); shifted by (0,-1/4,+1/8) to pymatgen's origin choice 1.
        "MgMn2O4", "I4_1/amd", (5.72, 5.72, 9.28), _CUBIC,
        ("Mg", "Mn", "O"), ((0, 0.5, 0.25), (0, 0.75, 0.625), (0, 0.2234, 0.3854)),
        "Tetragonal (Jahn-Teller) spinel MgMn2O4, a = 5.72 A, c = 9.28 A (c/a_cubic = 1.15) as reported for "
        "the normal spinel in the ICSD; oxygen 16h "
        "parameters of the isostructural hausmannite Mn3O4 (Jarosch, Mineral. Petrol. 37, 15 (1987)). "
        "Approximate: rounded lattice constants",
        "Mg",
    ),
    HostSpec(
        # Published with the long axis as a (Pmmn origin 2); here in pymatgen's Pmmn setting (origin 1,
        # long axis b): (x, 1/4, z)_published -> (0, 3/4 - x, z - 1/2).
        "V2O5", "Pmmn", (3.564, 11.512, 4.368), _CUBIC,
        ("V", "O", "O", "O"),
        ((0, 0.64882, 0.39205), (0, 0.6457, 0.0313), (0, 0.8189, 0.5028), (0, 0.5, 0.4990)),
        "Enjalbert & Galy, Acta Cryst. C42, 1467 (1986) (shcherbinaite, alpha-V2O5); Materials Project mp-25279",
    ),
    HostSpec(
        "MoO3", "Pbnm", (3.9628, 13.855, 3.6964), _CUBIC,
        ("Mo", "O", "O", "O"),
        ((0.08669, 0.10164, 0.25), (0.4994, 0.0865, 0.25), (-0.0212, 0.2214, 0.25), (0.5212, 0.4351, 0.25)),
        "alpha-MoO3 (molybdite) in the Pbnm setting of Pnma: Kihlborg, Arkiv Kemi 21, 357 (1963); "
        "Materials Project mp-20589",
    ),
    HostSpec(
        "MnO2-hollandite", "I4/m", (9.815, 9.815, 2.847), _CUBIC,
        ("Mn", "O", "O"), ((0.3485, 0.1669, 0), (0.1537, 0.2024, 0), (0.5410, 0.1652, 0)),
        "alpha-MnO2 (hollandite, empty 2x2 tunnels): Rossouw, Liles, Thackeray, David, Hull, "
        "Mater. Res. Bull. 27, 221 (1992)",
    ),
    HostSpec(
        "TiO2-rutile", "P4_2/mnm", (4.5937, 4.5937, 2.9587), _CUBIC,
        ("Ti", "O"), ((0, 0, 0), (0.30478, 0.30478, 0)),
        "Burdett, Hughbanks, Miller, Richardson, Smith, J. Am. Chem. Soc. 109, 3639 (1987) (15 K neutron); "
        "Materials Project mp-2657",
    ),
    HostSpec(
        # Origin choice 1: Ti 4a (0,0,0), O 8e (0,0,z) with z = 0.20806 (= 0.08306 + 1/8 of origin 2).
        "TiO2-anatase", "I4_1/amd", (3.7845, 3.7845, 9.5143), _CUBIC,
        ("Ti", "O"), ((0, 0, 0), (0, 0, 0.20806)),
        "Burdett, Hughbanks, Miller, Richardson, Smith, J. Am. Chem. Soc. 109, 3639 (1987); "
        "Materials Project mp-390",
    ),
    HostSpec(
        # The Nb oxide of the set: lithium niobate (30-atom hexagonal cell, 10-atom primitive), a Li-containing
        # Nb(V) oxide used as a cathode coating and a well-refined, small cell; T-Nb2O5 is too large and
        # partially occupied for a built-in seed.
        "LiNbO3", "R3c", (5.14829, 5.14829, 13.8631), _HEXAGONAL,
        ("Li", "Nb", "O"), ((0, 0, 0.2829), (0, 0, 0), (0.0492, 0.3446, 0.0647)),
        "Abrahams, Reddy, Bernstein, J. Phys. Chem. Solids 27, 997 (1966); Materials Project mp-3731",
        "Li",
    ),
    HostSpec(
        "Si", "Fd-3m", (5.4309, 5.4309, 5.4309), _CUBIC,
        ("Si",), ((0, 0, 0),),
        "Diamond-cubic silicon, a = 5.4309 A at 295 K (CODATA/NIST lattice parameter); Materials Project mp-149",
    ),
    HostSpec(
        # Cu15Si4 type: Li1 12a, Li2 48e, Si 16c; 76 atoms per conventional cell (Z = 4).
        "Li15Si4", "I-43d", (10.685, 10.685, 10.685), _CUBIC,
        ("Li", "Li", "Si"), ((0.375, 0, 0.25), (0.1199, 0.1584, 0.9563), (0.4586, 0.4586, 0.4586)),
        "Obrovac & Christensen, Electrochem. Solid-State Lett. 7, A93 (2004) and Hatchard & Dahn, "
        "J. Electrochem. Soc. 151, A838 (2004): a = 10.685 A, Cu15Si4 structure type "
        "(Li 12a + 48e, Si 16c); approximate positional parameters",
        "Li",
    ),
    HostSpec(
        "Li2O", "Fm-3m", (4.6114, 4.6114, 4.6114), _CUBIC,
        ("Li", "O"), ((0.25, 0.25, 0.25), (0, 0, 0)),
        "Antifluorite Li2O: Farley, Hayes, Hull, Hutchings, Vrtis, J. Phys.: Condens. Matter 3, 4761 (1991); "
        "Materials Project mp-1960",
        "Li",
    ),
    HostSpec(
        "LiCl", "Fm-3m", (5.1295, 5.1295, 5.1295), _CUBIC,
        ("Li", "Cl"), ((0, 0, 0), (0.5, 0.5, 0.5)),
        "Rock-salt LiCl, a = 5.1295 A at room temperature; Materials Project mp-22905",
        "Li",
    ),
)

_BY_NAME: dict[str, HostSpec] = {spec.name: spec for spec in _HOSTS}


def builtin_host_names() -> list[str]:
    """Names accepted by :func:`builtin_hosts`, in a fixed order."""
    return [spec.name for spec in _HOSTS]


def get_host_spec(name: str) -> HostSpec:
    """The published crystallography behind one built-in host (case-insensitive name)."""
    lookup = {key.lower(): spec for key, spec in _BY_NAME.items()}
    try:
        return lookup[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown built-in host {name!r}; known hosts: {', '.join(builtin_host_names())}"
        ) from None


def builtin_hosts(names: list[str] | None = None) -> StructureBatch:
    """The built-in hosts as a batch (all of them, or ``names`` in the order given).

    Rows have ``row_id`` ``host-<name>`` and metadata ``name``, ``formula`` (reduced), ``source`` (citation),
    ``spacegroup_symbol`` / ``spacegroup_number`` (standard setting) and ``working_ion`` when the host
    already contains one (Li, Mg).
    """
    specs = [get_host_spec(name) for name in (builtin_host_names() if names is None else names)]
    structures, meta = [], []
    for spec in specs:
        structure = spec.build()
        row = {
            "row_id": f"{ROW_ID_PREFIX}{spec.name}",
            "name": spec.name,
            "formula": structure.composition.reduced_formula,
            "source": spec.source,
            "spacegroup_symbol": spec.standard_spacegroup_symbol,
            "spacegroup_number": spec.spacegroup_number,
        }
        if spec.working_ion:
            row["working_ion"] = spec.working_ion
        structures.append(structure)
        meta.append(row)
    return StructureBatch(structures, meta)
