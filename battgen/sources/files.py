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
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from battgen.batch import StructureBatch
from battgen.sources.common import (  # noqa: F401 - re-exported: the readers' shared primitives
    DISORDERED, DUPLICATE_ID, MALFORMED, MIN_INTERATOMIC_DISTANCE_A, MISSING_COLUMN, NO_STRUCTURE, OVERLAPPING,
    RowFilter, SkipReport, SourceFormatError, _Collector, _progress, structure_problem,
)
from battgen.sources.materials_project import read_snapshot, read_snapshot_batch

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

SUPPORTED_SUFFIXES = (".csv", ".xyz", ".extxyz", ".json", ".json.gz", ".cif", ".jsonl", ".jsonl.gz", ".db",
                      ".vasp", ".poscar")


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


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def _row_filter(**filters: Any) -> RowFilter:
    unknown = set(filters) - {"elements", "exclude_elements", "max_sites", "max_rows"}
    if unknown:
        raise TypeError(f"unknown filter(s) {sorted(unknown)}; use elements, exclude_elements, max_sites, max_rows")
    return RowFilter(**filters)


# Columns tried, in order, for a CSV row's id when ``id_column`` is not given (case-insensitive).
CSV_ID_COLUMNS = ("material_id", "name", "id")


def _csv_columns(path: Path, fieldnames: list[str] | None, id_column: str | None) -> tuple[str, str | None]:
    """The actual names of the CIF column and of the id column (column names are case-insensitive)."""
    by_lower = {name.strip().lower(): name for name in fieldnames or []}
    if "cif" not in by_lower:
        raise SourceFormatError(f"{path.name}: no 'cif' column (any case; columns: {(fieldnames or [])[:12]})")
    if id_column is not None:
        if id_column.strip().lower() not in by_lower:
            raise SourceFormatError(f"{path.name}: no id column {id_column!r} (columns: {(fieldnames or [])[:12]})")
        return by_lower["cif"], by_lower[id_column.strip().lower()]
    return by_lower["cif"], next((by_lower[c] for c in CSV_ID_COLUMNS if c in by_lower), None)


def read_mp20_csv(
    path: str | Path,
    max_rows: int | None = None,
    elements: list[str] | None = None,
    exclude_elements: list[str] | None = None,
    max_sites: int | None = None,
    id_column: str | None = None,
) -> tuple[StructureBatch, SkipReport]:
    """Read a CSV of CIF texts: CDVAE format (``material_id``, ``cif`` and property columns) or any file
    with a ``cif`` column, such as seed 000's published ``filtered_structures_unconditional.csv``
    (``Name,CIF``). Column names are case-insensitive; the row id comes from ``id_column``, else the
    first of :data:`CSV_ID_COLUMNS` present, else ``<file stem>-<row index>``.

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
        cif_column, id_name = _csv_columns(path, reader.fieldnames, id_column)
        for index, raw in enumerate(_progress(reader, f"reading {path.name}")):
            if collector.full:
                break
            row = {(key or "").strip().lower(): value for key, value in raw.items()}
            collector.report.n_read += 1
            material_id = (raw.get(id_name) or "").strip() if id_name else ""
            row_id = material_id if material_id and not material_id.isdigit() else f"{path.stem}-{material_id or index}"
            cif = raw.get(cif_column)
            if not cif or not cif.strip():
                collector.report.skip(row_id, MISSING_COLUMN, f"empty {cif_column!r} value")
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


# Single-structure files pymatgen reads by name (a folder of them is a source too).
POSCAR_NAMES = ("POSCAR", "CONTCAR")
POSCAR_SUFFIXES = (".vasp", ".poscar")
FOLDER_SUFFIXES = (".cif", *POSCAR_SUFFIXES)


def _is_poscar(path: Path) -> bool:
    return path.name.upper().startswith(POSCAR_NAMES) or path.suffix.lower() in POSCAR_SUFFIXES


def _folder_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and (p.suffix.lower() == ".cif" or _is_poscar(p)))


def read_poscar_file(path: str | Path, **filters: Any) -> tuple[StructureBatch, SkipReport]:
    """Read one VASP POSCAR/CONTCAR file; row id: the file name (stem for ``*.vasp``)."""
    from pymatgen.io.vasp import Poscar

    path = Path(path)
    collector = _Collector(path, _row_filter(**filters))
    collector.report.n_read = 1
    row_id = path.stem if path.suffix.lower() in POSCAR_SUFFIXES else path.name
    try:
        structure = Poscar.from_file(path, check_for_potcar=False).structure
    except Exception as exc:  # noqa: BLE001
        raise SourceFormatError(f"{path.name}: not a readable POSCAR file: {type(exc).__name__}: {exc}") from exc
    collector.offer(row_id, structure, {"source_file": path.name})
    return collector.result()


def read_folder(path: str | Path, **filters: Any) -> tuple[StructureBatch, SkipReport]:
    """Every CIF (``*.cif``, all data blocks) and POSCAR (``POSCAR*``, ``CONTCAR*``, ``*.vasp``) file of a
    folder, in name order; row ids are the file stems (``-<index>`` for CIF blocks after the first)."""
    path = Path(path)
    files = _folder_files(path)
    if not files:
        raise SourceFormatError(f"{path}: folder without CIF or POSCAR files ({', '.join(FOLDER_SUFFIXES)}, "
                                f"{', '.join(n + '*' for n in POSCAR_NAMES)})")
    row_filter = _row_filter(**filters)
    collector = _Collector(path, row_filter)
    for file in files:
        if collector.full:
            break
        try:
            batch, report = (read_poscar_file if _is_poscar(file) else read_cif_file)(file)
        except SourceFormatError as exc:
            collector.report.n_read += 1
            collector.report.skip(file.name, MALFORMED, str(exc))
            continue
        collector.report.n_read += report.n_read
        for reason_row in report.skipped:
            collector.report.skipped.append(reason_row)
        for index, (meta, structure) in enumerate(batch):
            row_id = file.stem if file.suffix.lower() == ".cif" and index == 0 else meta["row_id"]
            collector.offer(row_id, structure, {k: v for k, v in meta.items() if k != "row_id"})
    return collector.result()


def read_ase_db(path: str | Path, **filters: Any) -> tuple[StructureBatch, SkipReport]:
    """Every row of an ASE database (``*.db``, SQLite); row ids from the key-value pairs ``material_id`` /
    ``name``, else ``<file stem>-<db id>``; energies (eV) when the row stores them."""
    from ase.db import connect
    from pymatgen.io.ase import AseAtomsAdaptor

    path = Path(path)
    collector = _Collector(path, _row_filter(**filters))
    try:
        rows = list(connect(str(path), type="db").select())
    except Exception as exc:  # noqa: BLE001 - sqlite3 / ASE errors for a foreign file
        raise SourceFormatError(f"{path.name}: not a readable ASE database: {type(exc).__name__}: {exc}") from exc
    for row in rows:
        if collector.full:
            break
        collector.report.n_read += 1
        pairs = dict(row.key_value_pairs)
        row_id = str(pairs.get("material_id") or pairs.get("name") or f"{path.stem}-{row.id}")
        atoms = row.toatoms()
        if not atoms.pbc.all():
            collector.report.skip(row_id, MALFORMED, "row is not periodic in 3D (pbc must be T T T)")
            continue
        meta: dict[str, Any] = {"source_file": path.name, "ase_db_id": row.id}
        energy = row.get("energy")
        if energy is not None:
            meta["energy_eV"] = float(energy)
            meta["energy_per_atom_eV"] = float(energy) / len(atoms)
        collector.offer(row_id, AseAtomsAdaptor.get_structure(atoms), meta)
    return collector.result()


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def read_structures(path: str | Path, **filters: Any) -> tuple[StructureBatch, SkipReport]:
    """Read any supported source file, chosen by its suffix (see :data:`SUPPORTED_SUFFIXES`; also
    ``POSCAR*`` / ``CONTCAR*`` by name), or a folder of CIF/POSCAR files. ``id_column`` (CSV only) names
    the row-id column."""
    path = Path(path)
    id_column = filters.pop("id_column", None)
    if path.is_dir():
        return read_folder(path, **filters)
    if not path.is_file():
        raise SourceFormatError(f"source file {path} does not exist")
    suffix = _suffix(path)
    if suffix == ".csv":
        return read_mp20_csv(path, id_column=id_column, **filters)
    if id_column is not None:
        raise SourceFormatError(f"{path.name}: `id_column` applies to CSV files only")
    if suffix == ".db":
        return read_ase_db(path, **filters)
    if _is_poscar(path):
        return read_poscar_file(path, **filters)
    if suffix in (".xyz", ".extxyz"):
        return read_extxyz(path, **filters)
    if suffix in (".jsonl", ".jsonl.gz"):
        return read_snapshot_batch(path, **filters)
    if suffix in (".json", ".json.gz"):
        return read_entries_json(path, **filters)
    if suffix == ".cif":
        return read_cif_file(path, **filters)
    raise SourceFormatError(
        f"{path.name}: unknown source suffix {suffix!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
    )


def is_battgen_batch(path: str | Path) -> bool:
    """Whether ``path`` is a battgen batch file (gzipped JSON lines with the batch header)."""
    from battgen.batch import BATCH_FORMAT

    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            header = json.loads(handle.readline())
    except (OSError, EOFError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(header, dict) and header.get("format") == BATCH_FORMAT


def read_input_batch(path: str | Path) -> StructureBatch:
    """The structures of a command's ``input``: a battgen batch file, or any source :func:`read_structures`
    reads (CSV, extended XYZ, entries JSON, CIF, POSCAR, MP snapshot, ASE database, a folder of CIF/POSCAR
    files). Unusable rows of a source are skipped (counted in a warning); an unusable file raises
    :class:`~battgen.batch.BatchFormatError` naming what is accepted."""
    from battgen.batch import BatchFormatError

    path = Path(path)
    if not path.exists():
        raise BatchFormatError(f"input {path.name} does not exist")
    if path.is_file() and is_battgen_batch(path):
        return StructureBatch.read(path)
    try:
        batch, report = read_structures(path)
    except SourceFormatError as exc:
        raise BatchFormatError(f"{path.name} is neither a battgen batch file nor a structure source the readers "
                               f"know ({', '.join(SUPPORTED_SUFFIXES)}, POSCAR, a folder of CIF/POSCAR files): {exc}"
                               ) from exc
    if report.n_skipped:
        warnings.warn(f"{path.name}: {report}", stacklevel=2)
    return batch


def describe_source_file(path: str | Path) -> dict[str, Any]:
    """Cheap validation of a source file without parsing its structures: kind, format and record count.

    Raises :class:`SourceFormatError` when the file cannot be a source (unknown suffix, no ``cif`` column,
    unparseable JSON, not a battgen snapshot ...).
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix in (".jsonl", ".jsonl.gz"):
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
            _csv_columns(path, reader.fieldnames, None)
            description.update(format="csv", n_records=sum(1 for _ in reader))
    elif suffix == ".db":
        description.update(format="ase_db", n_records=read_ase_db(path)[1].n_read)
    elif _is_poscar(path):
        read_poscar_file(path)
        description.update(format="poscar", n_records=1)
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
