"""The embedded known-materials reference: what a discovery must not rediscover.

A versioned, Materials-Project-derived file inside the package (``data/known_materials_v1.jsonl.gz``,
built by :mod:`battgen.known_materials.build`, sources and licence in ``data/README.md``): one record per
MP id with its reduced formula, chemical system, structure (for novelty, may be absent), MP2020-compatible
total energy per atom (for the hull, may be absent) and MP's E_hull. Offline, the discovery judges novelty
against its structures and E_hull against the hull of its energies in each candidate's chemical system.

A compound candidate whose chemical space holds no known *compound* with an energy (only the elements), or
whose formula the reference knows only without an energy, or that falls more than 0.1 eV/atom below the
known hull (missing phases, or an MLIP error), is flagged ``hull_incomplete``: its E_hull is then not a
distance to the real competing phases.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pymatgen.core import Composition
from pymatgen.entries.computed_entries import ComputedEntry

from battgen.batch import StructureBatch, row_to_structure
from battgen.columns import KNOWN_MATERIALS_HULL_COLUMNS

FORMAT = "battgen.known_materials"
FORMAT_VERSION = 1
DEFAULT_PATH = Path(__file__).parent / "data" / f"known_materials_v{FORMAT_VERSION}.jsonl.gz"
RECORD_KEYS = ("material_id", "formula", "chemical_system", "energy_per_atom_eV", "structure")
HULL_COLUMNS = KNOWN_MATERIALS_HULL_COLUMNS
# eV/atom: a candidate further below the known hull than an MLIP's typical error is a sign of missing phases.
BELOW_HULL_TOLERANCE_eV_PER_ATOM = 0.1


# How an MLIP's total energies are placed on the MP2020 hull. CHGNet learned MPtrj's MP2020-*corrected* energies,
# so its predictions are already MP-compatible (measured: CHGNet 0.3.0 on MP's WO3, LiF, NaCl, MgO lands within
# 0.03 eV/atom of the hull; correcting again puts WO3 1.6 eV/atom below it — tests/science/test_known_materials.py;
# formation energy of MP-20 rows 18 meV/atom from MP's, benchmarks/mlip_choice.py). SevenNet-0 and -l3i5 land
# ~0.26 eV/atom above MP's formation energies on transition-metal oxides in the same benchmark (4 rows; the size of
# MP2020's oxide + U corrections), i.e. they predict raw GGA/GGA+U energies, like M3GNet-MP-2021: both get the
# MP2020 correction, as Matbench Discovery does for models of uncorrected energies.
MLIP_CANDIDATE_COMPATIBILITY: dict[str, str | None] = {"chgnet": None, "sevennet": "MP2020", "sevennet_l3i5": "MP2020",
                                                       "m3gnet": "MP2020"}


def candidate_compatibility_for(mlip: str | None) -> str | None:
    """The correction an MLIP's energies need on an MP2020 hull (unknown MLIPs: MP2020, as for raw DFT)."""
    name = (mlip or "").lower().removeprefix("battgen.")
    return MLIP_CANDIDATE_COMPATIBILITY.get(name, "MP2020")


class KnownMaterialsFormatError(ValueError):
    """A known-materials file is not of the expected format or version."""


class KnownMaterials:
    """The records of a known-materials file, with structure and hull views. Use :meth:`load`."""

    def __init__(self, header: dict[str, Any], records: list[dict[str, Any]], sha256: str, path: Path) -> None:
        self.header = header
        self.records = records
        self.sha256 = sha256
        self.path = path
        self._hulls: dict[frozenset[str], Any] = {}
        self.by_formula: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            self.by_formula.setdefault(record["formula"], []).append(record)

    @classmethod
    def load(cls, path: str | Path | None = None) -> KnownMaterials:
        """Read and validate a reference file (default: the embedded one)."""
        return _load_cached(str(Path(path) if path else DEFAULT_PATH))

    @classmethod
    def from_bytes(cls, payload: bytes, source: str = "<bytes>") -> KnownMaterials:
        try:
            lines = gzip.decompress(payload).decode("utf-8").splitlines()
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise KnownMaterialsFormatError(f"{source}: not a gzipped {FORMAT} file ({exc})") from exc
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError as exc:
            raise KnownMaterialsFormatError(f"{source}: header is not JSON ({exc})") from exc
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            found = header.get("format") if isinstance(header, dict) else None
            raise KnownMaterialsFormatError(f"{source}: not a {FORMAT} file (format={found!r})")
        if header.get("version") != FORMAT_VERSION:
            raise KnownMaterialsFormatError(
                f"{source}: {FORMAT} version {header.get('version')!r}, this battgen reads version {FORMAT_VERSION}")
        records = []
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise KnownMaterialsFormatError(f"{source}: line {number} is not JSON ({exc})") from exc
            missing = [key for key in RECORD_KEYS if key not in record] if isinstance(record, dict) else RECORD_KEYS
            if missing:
                raise KnownMaterialsFormatError(f"{source}: line {number} lacks {list(missing)}")
            records.append(record)
        if len(records) != header.get("n_records"):
            raise KnownMaterialsFormatError(
                f"{source}: header says {header.get('n_records')} records, file holds {len(records)} (truncated?)")
        return cls(header, records, hashlib.sha256(payload).hexdigest(), Path(source))

    # --- description ------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return int(self.header["version"])

    @property
    def label(self) -> str:
        if self.header.get("database_version"):  # fetched from MP (battgen.known_materials.online)
            return f"Materials Project {self.header['database_version']} (fetched per chemical system, " \
                   f"sha256 {self.sha256[:12]})"
        return f"known materials v{self.version} (Materials Project derived, sha256 {self.sha256[:12]})"

    def describe(self) -> dict[str, Any]:
        keys = ("name", "version", "licence", "energy_scheme", "n_records", "n_structures", "n_energies",
                "n_chemical_systems", "n_chemical_systems_with_energies", "database_version")
        return {**{key: self.header.get(key) for key in keys}, "sha256": self.sha256, "label": self.label}

    # --- novelty ------------------------------------------------------------------------------------
    def structure_batch(self) -> StructureBatch:
        """Every record with a structure, as a batch (``material_id`` names each row)."""
        return _structure_batch(self)

    # --- hull ----------------------------------------------------------------------------------------
    def entries_in(self, elements: Iterable[str]) -> list[ComputedEntry]:
        """Entries (MP2020-compatible energies, eV) of every record with an energy inside the chemical space."""
        space = set(elements)
        entries = []
        for record in self.records:
            energy = record["energy_per_atom_eV"]
            if energy is None or not set(record["chemical_system"].split("-")) <= space:
                continue
            composition = Composition(record["formula"])
            entries.append(ComputedEntry(composition, energy * composition.num_atoms, entry_id=record["material_id"]))
        return entries

    def hull_for(self, elements: Iterable[str]):
        """The :class:`~battgen.stability.hull.ReferenceHull` of a chemical space (energies as stored)."""
        from battgen.stability.hull import ReferenceHull

        key = frozenset(elements)
        if key not in self._hulls:
            label = f"{self.label}: {'-'.join(sorted(key))}"
            self._hulls[key] = ReferenceHull.from_entries(self.entries_in(key), label, compatibility=None)
        return self._hulls[key]

    def n_competing_compounds(self, elements: Iterable[str]) -> int:
        """Known compounds (two or more elements) with an energy inside the chemical space."""
        return sum(len(entry.composition.elements) > 1 for entry in self.entries_in(elements))

    def nearest_known(self, formula: str, decomposition: dict[str, float] | None = None) -> str:
        """Same reduced formula in the reference (its MP ids), else the hull phases it decomposes into."""
        same = self.by_formula.get(Composition(formula).reduced_formula, [])
        if same:
            return f"{same[0]['formula']} (" + ", ".join(r["material_id"] for r in same[:3]) + ")"
        if decomposition:
            return " + ".join(sorted(decomposition, key=lambda f: -decomposition[f]))
        return ""

    def coverage(self, chemical_systems: Iterable[str]) -> dict[str, Any]:
        """For each chemical system: known records in it, competing compounds with energies in its space."""
        systems = sorted(set(chemical_systems))
        per_system = {}
        for system in systems:
            elements = system.split("-")
            per_system[system] = {
                "n_records_in_system": sum(r["chemical_system"] == system for r in self.records),
                "n_competing_compounds": self.n_competing_compounds(elements),
            }
        covered = sum(v["n_competing_compounds"] > 0 for v in per_system.values())
        return {"n_chemical_systems": len(systems), "n_with_competing_compounds": covered, "systems": per_system}


@functools.lru_cache(maxsize=4)
def _load_cached(path: str) -> KnownMaterials:
    try:
        payload = Path(path).read_bytes()
    except OSError as exc:
        raise KnownMaterialsFormatError(f"cannot read the known-materials file {path}: {exc}") from exc
    return KnownMaterials.from_bytes(payload, source=path)


@functools.lru_cache(maxsize=4)
def _cached_batch(sha256: str, known: KnownMaterials) -> StructureBatch:
    structures, meta = [], []
    for record in known.records:
        if record["structure"] is None:
            continue
        structures.append(row_to_structure(record["structure"]))
        meta.append({"row_id": record["material_id"], "material_id": record["material_id"],
                     "formula": record["formula"],
                     "e_above_hull_mp_eV_per_atom": record.get("e_above_hull_mp_eV_per_atom")})
    return StructureBatch(structures, meta)


def _structure_batch(known: KnownMaterials) -> StructureBatch:
    return _cached_batch(known.sha256, known)


def annotate_against_known(batch: StructureBatch, known: KnownMaterials, candidate_compatibility: str | None = "MP2020",
                           match_relaxed: bool = False) -> tuple[StructureBatch, dict[str, Any]]:
    """E_hull of every row against the known hull of its own chemical space, plus the hull flags.

    MLIP energies are corrected as MP-style GGA(+U) entries with MP2020 (``candidate_compatibility``,
    see :func:`battgen.stability.hull.mp_style_entry`) because the reference energies are MP2020's.
    Adds the columns of :func:`battgen.stability.hull.annotate_batch` and ``hull_incomplete`` (a compound
    whose chemical space holds no known compound with an energy, whose formula the reference knows only
    without an energy, or that lies more than ``BELOW_HULL_TOLERANCE_eV_PER_ATOM`` below the known hull;
    the reason in ``hull_incomplete_reason``), ``hull_n_competing_compounds``,
    ``nearest_known_compound``; with ``match_relaxed`` also ``relaxed_matches_known`` (the MP id the
    row's structure matches with StructureMatcher, else None: a relaxation can fall into a known
    structure that the unrelaxed candidate did not match). Returns the batch and a description
    (reference, coverage).
    """
    from battgen.screen.novelty import build_reference_index
    from battgen.stability.hull import ANNOTATION_COLUMNS, HullError, annotate_batch

    index = None
    if match_relaxed:
        reference = known.structure_batch()
        index = build_reference_index(reference.structures, reference.column("material_id"))

    columns: dict[str, list[Any]] = {key: [] for key in (*ANNOTATION_COLUMNS, *HULL_COLUMNS)}
    systems = []
    for meta, structure in batch:
        elements = sorted(el.symbol for el in structure.composition.elements)
        systems.append("-".join(elements))
        try:
            hull = known.hull_for(elements)
            values = annotate_batch(StructureBatch([structure], [dict(meta)]), hull, candidate_compatibility).meta[0]
        except HullError as exc:
            values = {key: None for key in ANNOTATION_COLUMNS}
            values["hull_error"] = str(exc)
        n_competing = known.n_competing_compounds(elements)
        # An element competes with its own ground state (a hull corner). A compound needs known compounds
        # with energies, and if the reference knows its formula only without an energy (SnO2 from MP-40),
        # the hull lacks that very ground state and E_hull would be far too low.
        same_formula = known.by_formula.get(structure.composition.reduced_formula, [])
        formula_without_energy = bool(same_formula) and all(r["energy_per_atom_eV"] is None for r in same_formula)
        # Far below a hull of known compounds (beyond MLIP error) means the reference misses phases of that
        # space (Nb2O5 below NbO2 + O2: MP's Nb2O5 is not in it), not a new ground state.
        e_hull = values.get("e_above_hull_eV_per_atom")
        far_below = e_hull is not None and e_hull < -BELOW_HULL_TOLERANCE_eV_PER_ATOM
        reason = ("no known compound with an energy in this chemical space" if n_competing == 0 else
                  "formula known without an energy" if formula_without_energy else
                  f"{-e_hull:.2f} eV/atom below the known hull" if far_below else None)
        values["hull_incomplete"] = len(elements) > 1 and reason is not None
        values["hull_incomplete_reason"] = reason if values["hull_incomplete"] else None
        values["hull_n_competing_compounds"] = n_competing
        values["nearest_known_compound"] = known.nearest_known(structure.composition.reduced_formula,
                                                               values.get("decomposition"))
        values["relaxed_matches_known"] = index.find(structure) if index is not None else None
        for key in columns:
            columns[key].append(values.get(key))
    description = {**known.describe(), "source": "known_materials", "compatibility": "MP2020 (stored energies)",
                   "candidate_compatibility": candidate_compatibility, "coverage": known.coverage(systems)}
    return batch.with_columns(**columns), description


__all__ = ["DEFAULT_PATH", "FORMAT", "FORMAT_VERSION", "KnownMaterials", "KnownMaterialsFormatError",
           "annotate_against_known"]
