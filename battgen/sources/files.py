"""Read structures from user files into a :class:`~battgen.batch.StructureBatch`, with a skip report.

Supported: CDVAE-style CSVs with a ``cif`` column (MP-20, the chemeleon MP-40 splits, perov-5,
carbon-24), extended XYZ (ASE), JSON lists/dicts of pymatgen ``ComputedStructureEntry`` (MSON or plain
dicts, optionally gzipped), single CIF files and Materials Project snapshots written by
:mod:`battgen.sources.materials_project`. Every reader returns ``(batch, SkipReport)``: rows that cannot
be used (malformed CIF, disordered sites, atoms closer than 0.5 Å, a required value missing) are skipped,
counted and listed with their reason instead of aborting the whole file.

Filters (all optional, applied to every reader): ``elements`` (rows must contain *all* of them),
``exclude_elements`` (rows must contain none), ``max_sites`` and ``max_rows`` (stop once this many rows
are kept).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import sys
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymatgen.core import Element, Structure
from tqdm.auto import tqdm

from battgen.batch import StructureBatch

# Two atoms closer than this (Å) are a broken structure, not chemistry (the shortest real bond, H-H, is 0.74).
MIN_INTERATOMIC_DISTANCE_A = 0.5

# Skip reasons (stable strings: they end up in AiiDA Dict nodes and are counted by reason).
MALFORMED = "malformed_structure"
DISORDERED = "disordered_structure"
OVERLAPPING = "overlapping_atoms"
MISSING_COLUMN = "missing_column"
DUPLICATE_ID = "duplicate_id"
NO_STRUCTURE = "no_structure"

# CSV column -> metadata key with unit. perov-5 ``heat_ref`` is CDVAE's formation-energy target (eV/atom).
_CSV_FLOAT_COLUMNS = {
    "formation_energy_per_atom": "formation_energy_per_atom_eV",
    "heat_ref": "formation_energy_per_atom_eV",
    "heat_all": "heat_all_eV_per_atom",
    "band_gap": "band_gap_eV",
    "dir_gap": "direct_band_gap_eV",
    "ind_gap": "indirect_band_gap_eV",
    "e_above_hull": "e_above_hull_eV_per_atom",
    "energy_above_hull": "e_above_hull_eV_per_atom",
    "energy_per_atom": "energy_per_atom_eV",
}
_CSV_TEXT_COLUMNS = {
    "pretty_formula": "formula",
    "formula": "formula",
    "space_group_symbol": "spacegroup_symbol",
    "spacegroup.number": "spacegroup_number",
    "space_group_number": "spacegroup_number",
}

SUPPORTED_SUFFIXES = (".csv", ".xyz", ".extxyz", ".json", ".json.gz", ".cif", ".jsonl", ".jsonl.gz")


class SourceFormatError(ValueError):
    """A whole source file is unusable (unknown suffix, missing required column, not parseable)."""


@dataclass
class SkipReport:
    """Which rows of a source were skipped and why; ``filtered`` rows were fine but not asked for."""

    source: str = ""
    n_read: int = 0
    n_kept: int = 0
    n_filtered: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)

    def skip(self, row: str, reason: str, detail: str = "") -> None:
        self.skipped.append({"row": str(row), "reason": reason, "detail": detail[:300]})

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def counts(self) -> dict[str, int]:
        return dict(Counter(item["reason"] for item in self.skipped))

    def as_dict(self, max_examples: int = 100) -> dict[str, Any]:
        """JSON-safe summary: counts by reason and at most ``max_examples`` listed rows."""
        return {
            "source": self.source,
            "n_read": self.n_read,
            "n_kept": self.n_kept,
            "n_filtered": self.n_filtered,
            "n_skipped": self.n_skipped,
            "skipped_by_reason": self.counts(),
            "examples": self.skipped[:max_examples],
            "examples_truncated": self.n_skipped > max_examples,
        }

    def __str__(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts().items())) or "none"
        return (
            f"{self.source}: read {self.n_read}, kept {self.n_kept}, filtered {self.n_filtered}, "
            f"skipped {self.n_skipped} ({reasons})"
        )


@dataclass
class RowFilter:
    """The optional element / size / count filters shared by every reader."""

    elements: list[str] | None = None
    exclude_elements: list[str] | None = None
    max_sites: int | None = None
    max_rows: int | None = None

    def __post_init__(self) -> None:
        for name in ("elements", "exclude_elements"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str):
                value = [value]
            for symbol in value:
                if not Element.is_valid_symbol(symbol):
                    raise ValueError(f"{name}: {symbol!r} is not an element symbol")
            setattr(self, name, list(value))
        for name in ("max_sites", "max_rows"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def accepts(self, structure: Structure) -> bool:
        symbols = {el.symbol for el in structure.composition.elements}
        if self.elements and not set(self.elements) <= symbols:
            return False
        if self.exclude_elements and symbols & set(self.exclude_elements):
            return False
        return self.max_sites is None or len(structure) <= self.max_sites

    def full(self, n_kept: int) -> bool:
        return self.max_rows is not None and n_kept >= self.max_rows


def structure_problem(structure: Structure) -> tuple[str, str] | None:
    """Why a parsed structure cannot go into a batch (reason, detail), or None if it can."""
    if not len(structure):  # an extended-XYZ frame of 0 atoms, a CIF without sites
        return MALFORMED, "no atoms"
    if not structure.is_ordered:
        return DISORDERED, f"partial occupancies in {structure.composition.formula}"
    # Periodic images count too: a cell edge shorter than 0.5 Å is as broken as two stacked atoms.
    centres, _, _, distances = structure.get_neighbor_list(MIN_INTERATOMIC_DISTANCE_A)
    if len(centres):
        return OVERLAPPING, f"atoms {float(min(distances)):.3f} A apart (< {MIN_INTERATOMIC_DISTANCE_A} A)"
    return None


class _Collector:
    """Accumulates kept rows, unique row ids, filter counts and skips for one source file."""

    def __init__(self, source: Path, row_filter: RowFilter) -> None:
        self.filter = row_filter
        self.report = SkipReport(source=source.name)
        self.structures: list[Structure] = []
        self.meta: list[dict[str, Any]] = []
        self._ids: set[str] = set()

    @property
    def full(self) -> bool:
        return self.filter.full(len(self.structures))

    def offer(self, row_id: str, structure: Structure, meta: dict[str, Any], unique_id: bool = True) -> None:
        """Keep the row if it is sound, new and passes the filters; otherwise count why not."""
        problem = structure_problem(structure)
        if problem:
            self.report.skip(row_id, *problem)
            return
        if row_id in self._ids:
            if unique_id:
                self.report.skip(row_id, DUPLICATE_ID, "row id already read from this file")
                return
            row_id = self._unique(row_id)
        if not self.filter.accepts(structure):
            self.report.n_filtered += 1
            return
        self._ids.add(row_id)
        self.structures.append(structure)
        self.meta.append({"row_id": row_id, **meta})

    def _unique(self, row_id: str) -> str:
        suffix = 2
        while f"{row_id}-{suffix}" in self._ids:
            suffix += 1
        return f"{row_id}-{suffix}"

    def result(self) -> tuple[StructureBatch, SkipReport]:
        self.report.n_kept = len(self.structures)
        return StructureBatch(self.structures, self.meta), self.report


def _float_or_none(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _parse_cif(text: str) -> Structure:
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():  # CifParser warns per row about rounding etc.; failures are reported
        warnings.simplefilter("ignore")
        structures = CifParser.from_str(text).parse_structures(primitive=False, on_error="raise")
    if not structures:
        raise ValueError("no structure in CIF")
    return structures[0]


def _progress(iterable: Iterable, desc: str, total: int | None = None) -> Iterator:
    # disable=None: a bar on terminals only, silent in CalcJobs and CI logs.
    return iter(tqdm(iterable, desc=desc, total=total, disable=None, leave=False, file=sys.stderr))


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def _row_filter(**filters: Any) -> RowFilter:
    unknown = set(filters) - {"elements", "exclude_elements", "max_sites", "max_rows"}
    if unknown:
        raise TypeError(f"unknown filter(s) {sorted(unknown)}; use elements, exclude_elements, max_sites, max_rows")
    return RowFilter(**filters)


def read_mp20_csv(
    path: str | Path,
    max_rows: int | None = None,
    elements: list[str] | None = None,
    exclude_elements: list[str] | None = None,
    max_sites: int | None = None,
) -> tuple[StructureBatch, SkipReport]:
    """Read a CDVAE-format CSV (``material_id``, ``cif`` and property columns).

    Works for MP-20 (``formation_energy_per_atom``, ``band_gap``, ``e_above_hull``), the chemeleon MP-40
    splits (``energy_above_hull``, no formation energy), perov-5 (``heat_ref``, ``dir_gap``/``ind_gap``)
    and carbon-24 (``energy_per_atom``). Values go to metadata under unit-carrying keys
    (``formation_energy_per_atom_eV``, ``band_gap_eV``, ``e_above_hull_eV_per_atom`` ...); a property
    absent from the file is simply absent from the metadata.
    """
    path = Path(path)
    collector = _Collector(path, RowFilter(elements, exclude_elements, max_sites, max_rows))
    csv.field_size_limit(2**31 - 1)  # CIF cells are long
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "cif" not in columns:
            raise SourceFormatError(f"{path.name}: no 'cif' column (columns: {columns[:12]})")
        for index, row in enumerate(_progress(reader, f"reading {path.name}")):
            if collector.full:
                break
            collector.report.n_read += 1
            material_id = (row.get("material_id") or "").strip()
            row_id = material_id if material_id and not material_id.isdigit() else f"{path.stem}-{material_id or index}"
            cif = row.get("cif")
            if not cif or not cif.strip():
                collector.report.skip(row_id, MISSING_COLUMN, "empty 'cif' value")
                continue
            try:
                structure = _parse_cif(cif)
            except Exception as exc:  # noqa: BLE001 - any parser failure is a malformed row, reported
                collector.report.skip(row_id, MALFORMED, f"{type(exc).__name__}: {exc}")
                continue
            meta: dict[str, Any] = {"source_file": path.name}
            if material_id:
                meta["material_id"] = material_id
            for column, key in _CSV_FLOAT_COLUMNS.items():
                if column in row:
                    meta[key] = _float_or_none(row[column])
            if "dir_gap" in row and "ind_gap" in row and "band_gap_eV" not in meta:
                gaps = [g for g in (meta["direct_band_gap_eV"], meta["indirect_band_gap_eV"]) if g is not None]
                meta["band_gap_eV"] = min(gaps) if gaps else None  # the fundamental gap
            for column, key in _CSV_TEXT_COLUMNS.items():
                if row.get(column) not in (None, "") and key not in meta:
                    value = row[column]
                    meta[key] = int(value) if key == "spacegroup_number" and value.isdigit() else value
            collector.offer(row_id, structure, meta)
    return collector.result()


def read_extxyz(path: str | Path, **filters: Any) -> tuple[StructureBatch, SkipReport]:
    """Read every frame of an extended-XYZ file (ASE).

    Metadata: ``energy_eV`` / ``energy_per_atom_eV`` and ``max_force_eV_per_A`` when the frame carries
    them, ``config_type`` if present. Row ids come from ``material_id`` / ``id`` in the frame info, else
    ``<file stem>-<index>``; repeated ids (trajectories) get a numeric suffix.
    """
    import numpy as np
    from ase.io import read as ase_read
    from pymatgen.io.ase import AseAtomsAdaptor

    path = Path(path)
    collector = _Collector(path, _row_filter(**filters))
    try:
        frames = ase_read(path, index=":", format="extxyz")
    except Exception as exc:  # noqa: BLE001 - ASE raises many types for a broken file
        raise SourceFormatError(f"{path.name}: not a readable extended-XYZ file: {type(exc).__name__}: {exc}") from exc
    for index, atoms in enumerate(_progress(frames, f"reading {path.name}")):
        if collector.full:
            break
        collector.report.n_read += 1
        info = dict(atoms.info)
        row_id = str(info.get("material_id") or info.get("id") or f"{path.stem}-{index}")
        if not atoms.pbc.all():
            collector.report.skip(row_id, MALFORMED, "frame is not periodic in 3D (pbc must be T T T)")
            continue
        meta: dict[str, Any] = {"source_file": path.name, "frame_index": index}
        energy = None
        if atoms.calc is not None:
            try:
                energy = float(atoms.get_potential_energy())
                forces = atoms.get_forces()
                meta["max_force_eV_per_A"] = float(np.linalg.norm(forces, axis=1).max())
            except Exception:  # noqa: BLE001 - a calculator without forces/energy is fine
                pass
        energy = energy if energy is not None else _float_or_none(info.get("energy"))
        if energy is not None:
            meta["energy_eV"] = energy
            meta["energy_per_atom_eV"] = energy / len(atoms)
        if "config_type" in info:
            meta["config_type"] = str(info["config_type"])
        try:
            structure = AseAtomsAdaptor.get_structure(atoms)
        except Exception as exc:  # noqa: BLE001
            collector.report.skip(row_id, MALFORMED, f"{type(exc).__name__}: {exc}")
            continue
        collector.offer(row_id, structure, meta, unique_id=False)
    return collector.result()


def _iter_entry_objects(data: Any) -> Iterator[tuple[str | None, Any]]:
    """(key, object) pairs from a list, a dict of entries, or a dict holding an ``entries`` list."""
    if isinstance(data, dict) and "@class" not in data and "entries" in data and isinstance(data["entries"], list):
        data = data["entries"]
    if isinstance(data, dict) and ("@class" in data or "structure" in data):
        yield None, data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield str(key), value
    elif isinstance(data, list):
        for value in data:
            yield None, value
    else:
        raise SourceFormatError(f"expected a list or dict of entries, got {type(data).__name__}")


def read_entries_json(path: str | Path, **filters: Any) -> tuple[StructureBatch, SkipReport]:
    """Read a JSON (or .json.gz) list / dict of pymatgen ``ComputedStructureEntry`` objects.

    MSON files (``@class`` tags) are decoded with ``MontyDecoder``; plain dicts are tried as
    ``ComputedStructureEntry.from_dict``. Entries without a structure (plain ``ComputedEntry``) are skipped
    with reason ``no_structure``. Metadata: ``energy_eV`` (corrected total), ``energy_per_atom_eV``,
    ``uncorrected_energy_per_atom_eV``, ``correction_eV`` and ``entry_id``.
    """
    from monty.json import MontyDecoder
    from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

    path = Path(path)
    collector = _Collector(path, _row_filter(**filters))
    try:
        with _open_text(path) as handle:
            data = json.load(handle, cls=MontyDecoder)
    except Exception as exc:  # noqa: BLE001 - broken JSON or an MSON class that cannot be built
        raise SourceFormatError(f"{path.name}: not a readable entries JSON file: {type(exc).__name__}: {exc}") from exc
    items = list(_iter_entry_objects(data))
    for index, (key, obj) in enumerate(_progress(items, f"reading {path.name}")):
        if collector.full:
            break
        collector.report.n_read += 1
        if isinstance(obj, dict):
            try:
                obj = ComputedStructureEntry.from_dict(obj)
            except Exception as exc:  # noqa: BLE001
                collector.report.skip(key or f"{path.stem}-{index}", MALFORMED, f"{type(exc).__name__}: {exc}")
                continue
        if isinstance(obj, Structure):
            collector.offer(key or f"{path.stem}-{index}", obj, {"source_file": path.name})
            continue
        entry_id = getattr(obj, "entry_id", None) or (getattr(obj, "data", {}) or {}).get("material_id")
        row_id = str(entry_id or key or f"{path.stem}-{index}")
        if not isinstance(obj, ComputedStructureEntry):
            what = type(obj).__name__ if not isinstance(obj, ComputedEntry) else "ComputedEntry (no structure)"
            collector.report.skip(row_id, NO_STRUCTURE, what)
            continue
        meta = {
            "source_file": path.name,
            "entry_id": str(entry_id) if entry_id else None,
            "energy_eV": float(obj.energy),
            "energy_per_atom_eV": float(obj.energy_per_atom),
            "uncorrected_energy_per_atom_eV": float(obj.uncorrected_energy_per_atom),
            "correction_eV": float(obj.correction),
        }
        collector.offer(row_id, obj.structure, meta, unique_id=entry_id is not None)
    return collector.result()


def read_cif_file(path: str | Path, **filters: Any) -> tuple[StructureBatch, SkipReport]:
    """Read every data block of a CIF file; row ids ``<file stem>-<index>``."""
    from pymatgen.io.cif import CifParser

    path = Path(path)
    collector = _Collector(path, _row_filter(**filters))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parser = CifParser(path)
            blocks = parser.parse_structures(primitive=False, on_error="ignore")
        except Exception as exc:  # noqa: BLE001
            raise SourceFormatError(f"{path.name}: not a readable CIF file: {type(exc).__name__}: {exc}") from exc
    n_blocks = len(parser._cif.data)  # blocks pymatgen could not turn into a structure are reported too
    collector.report.n_read = n_blocks
    for index, structure in enumerate(blocks):
        if collector.full:
            break
        collector.offer(f"{path.stem}-{index}", structure, {"source_file": path.name})
    for index in range(len(blocks), n_blocks):
        collector.report.skip(f"{path.stem}-{index}", MALFORMED, "data block without a readable structure")
    return collector.result()


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def read_structures(path: str | Path, **filters: Any) -> tuple[StructureBatch, SkipReport]:
    """Read any supported source file, chosen by its suffix (see :data:`SUPPORTED_SUFFIXES`)."""
    path = Path(path)
    if not path.is_file():
        raise SourceFormatError(f"source file {path} does not exist")
    suffix = _suffix(path)
    if suffix == ".csv":
        return read_mp20_csv(path, **filters)
    if suffix in (".xyz", ".extxyz"):
        return read_extxyz(path, **filters)
    if suffix in (".jsonl", ".jsonl.gz"):
        from battgen.sources.materials_project import read_snapshot_batch

        return read_snapshot_batch(path, **filters)
    if suffix in (".json", ".json.gz"):
        return read_entries_json(path, **filters)
    if suffix == ".cif":
        return read_cif_file(path, **filters)
    raise SourceFormatError(
        f"{path.name}: unknown source suffix {suffix!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
    )


def describe_source_file(path: str | Path) -> dict[str, Any]:
    """Cheap validation of a source file without parsing its structures: kind, format and record count.

    Raises :class:`SourceFormatError` when the file cannot be a source (unknown suffix, no ``cif`` column,
    unparseable JSON, not a battgen snapshot ...).
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix in (".jsonl", ".jsonl.gz"):
        from battgen.sources.materials_project import read_snapshot

        header, records = read_snapshot(path)
        return {
            "source_kind": "materials_project",
            "format": header["format"],
            "n_records": len(records),
            "database_version": header.get("database_version"),
            "query": header.get("query", {}),
            "created_at": header.get("created_at"),
        }
    description: dict[str, Any] = {"source_kind": "file", "database_version": None, "query": {}}
    if suffix == ".csv":
        csv.field_size_limit(2**31 - 1)
        with _open_text(path) as handle:
            reader = csv.DictReader(handle)
            if "cif" not in (reader.fieldnames or []):
                raise SourceFormatError(f"{path.name}: no 'cif' column (columns: {(reader.fieldnames or [])[:12]})")
            description.update(format="csv", n_records=sum(1 for _ in reader))
    elif suffix in (".xyz", ".extxyz"):
        from ase.io import iread

        try:
            description.update(format="extxyz", n_records=sum(1 for _ in iread(path, index=":", format="extxyz")))
        except Exception as exc:  # noqa: BLE001
            raise SourceFormatError(f"{path.name}: not a readable extended-XYZ file: {exc}") from exc
    elif suffix in (".json", ".json.gz"):
        try:
            with _open_text(path) as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise SourceFormatError(f"{path.name}: not valid JSON: {exc}") from exc
        description.update(format="entries_json", n_records=len(list(_iter_entry_objects(data))))
    elif suffix == ".cif":
        from pymatgen.io.cif import CifParser

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                n_blocks = len(CifParser(path)._cif.data)
        except Exception as exc:  # noqa: BLE001
            raise SourceFormatError(f"{path.name}: not a readable CIF file: {exc}") from exc
        description.update(format="cif", n_records=n_blocks)
    else:
        raise SourceFormatError(
            f"{path.name}: unknown source suffix {suffix!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    return description
