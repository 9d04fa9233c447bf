"""Materials Project through ``mp-api``: query once, keep an immutable snapshot, read the snapshot after.

A live query is not reproducible (the database changes between releases), so the workflow never queries
MP directly: ``battgen query-mp`` writes a JSON-lines *snapshot* (a header with the query, the MP
database version and the UTC date, then one line per material) and every later step reads that file.
The API key is resolved from ``MP_API_KEY`` or pymatgen's ``PMG_MAPI_KEY`` setting and is never written
to the snapshot, the summary, nor any message or log.

Snapshot energies: ``energy_per_atom_eV`` is MP's corrected energy (MP2020 mixing scheme of the summary
endpoint), ``uncorrected_energy_per_atom_eV`` the raw DFT energy. The ``entry`` of each record is a
``ComputedStructureEntry`` built from these two summary-document numbers (energy = uncorrected total,
correction = corrected - uncorrected), not from ``get_entries``: one request per query instead of one
per material, and consistent with the summary's ``energy_above_hull``.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pymatgen.core import Element, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry

from battgen.batch import StructureBatch
from battgen.sources.common import RowFilter, SkipReport, SourceFormatError, _Collector, _progress

LOGGER = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "battgen.mp_snapshot"
SNAPSHOT_FORMAT_VERSION = 1
ENTRY_SOURCE = "summary_doc"  # how record["entry"] was built (see module docstring)

# Summary-endpoint fields requested; everything else MP offers is left out of the snapshot.
SUMMARY_FIELDS = [
    "material_id", "structure", "formula_pretty", "nsites", "formation_energy_per_atom", "band_gap",
    "energy_above_hull", "energy_per_atom", "uncorrected_energy_per_atom", "is_stable", "theoretical",
    "symmetry",
]


class MaterialsProjectError(RuntimeError):
    """Base class of the errors of this module."""


class MissingApiKeyError(MaterialsProjectError):
    """No Materials Project API key was found."""


class InvalidApiKeyError(MaterialsProjectError):
    """Materials Project rejected the API key (HTTP 401/403)."""


class EmptyQueryError(MaterialsProjectError):
    """The query matched no material."""


class SnapshotFormatError(SourceFormatError):
    """A file is not a readable battgen Materials Project snapshot."""


@dataclass
class MPQuery:
    """Criteria of a Materials Project summary search (energies in eV/atom, band gaps in eV).

    ``elements``: materials must contain all of them; ``chemsys``: e.g. ``"Li-Fe-O"`` (exactly these
    elements); ``working_ion`` is added to ``elements`` (the material must contain it). ``limit`` caps the
    number of records (it is applied through ``num_chunks``/``chunk_size`` and by truncation).
    """

    elements: list[str] | None = None
    chemsys: str | list[str] | None = None
    exclude_elements: list[str] | None = None
    nsites_max: int | None = None
    energy_above_hull_max: float | None = None
    is_stable: bool | None = None
    band_gap_min: float | None = None
    band_gap_max: float | None = None
    working_ion: str | None = None
    num_chunks: int | None = None
    chunk_size: int = 1000
    limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("elements", "exclude_elements"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [value])
        symbols = list(self.elements or []) + list(self.exclude_elements or [])
        symbols += [self.working_ion] if self.working_ion else []
        for symbol in symbols:
            if not Element.is_valid_symbol(symbol):
                raise ValueError(f"{symbol!r} is not an element symbol")
        for name in ("nsites_max", "num_chunks", "limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.band_gap_min is not None and self.band_gap_max is not None and self.band_gap_min > self.band_gap_max:
            raise ValueError(f"band_gap_min {self.band_gap_min} eV > band_gap_max {self.band_gap_max} eV")
        if self.elements is None and self.chemsys is None and self.working_ion is None and self.limit is None:
            # An unrestricted summary search downloads ~150k documents: demand an explicit choice.
            raise ValueError("give elements, chemsys, working_ion or limit: refusing to download all of MP")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MPQuery:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown query key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    def search_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``MPRester().materials.summary.search``."""
        kwargs: dict[str, Any] = {"fields": list(SUMMARY_FIELDS)}
        elements = list(self.elements or [])
        if self.working_ion and self.working_ion not in elements:
            elements.append(self.working_ion)
        if elements:
            kwargs["elements"] = elements
        if self.chemsys:
            kwargs["chemsys"] = self.chemsys
        if self.exclude_elements:
            kwargs["exclude_elements"] = list(self.exclude_elements)
        if self.nsites_max is not None:
            kwargs["num_sites"] = (1, self.nsites_max)
        if self.energy_above_hull_max is not None:
            kwargs["energy_above_hull"] = (0.0, float(self.energy_above_hull_max))
        if self.is_stable is not None:
            kwargs["is_stable"] = bool(self.is_stable)
        if self.band_gap_min is not None or self.band_gap_max is not None:
            kwargs["band_gap"] = (
                float(self.band_gap_min if self.band_gap_min is not None else 0.0),
                float(self.band_gap_max if self.band_gap_max is not None else 1000.0),
            )
        chunk_size = self.chunk_size
        num_chunks = self.num_chunks
        if self.limit is not None:
            chunk_size = min(chunk_size, self.limit)
            num_chunks = min(num_chunks or math.inf, math.ceil(self.limit / chunk_size))
        kwargs["chunk_size"] = int(chunk_size)
        if num_chunks is not None:
            kwargs["num_chunks"] = int(num_chunks)
        return kwargs


def resolve_api_key(explicit: str | None = None) -> str:
    """The MP API key: ``explicit``, else ``MP_API_KEY``, else pymatgen's ``PMG_MAPI_KEY`` setting."""
    if explicit:
        return explicit.strip()
    key = os.environ.get("MP_API_KEY", "").strip()
    if key:
        return key
    from pymatgen.core import SETTINGS

    key = str(SETTINGS.get("PMG_MAPI_KEY") or "").strip()
    if key:
        return key
    raise MissingApiKeyError(
        "no Materials Project API key: set the MP_API_KEY environment variable (or PMG_MAPI_KEY in "
        "~/.config/.pmgrc.yaml); get a key at https://next-gen.materialsproject.org/api"
    )


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _is_auth_failure(exc: Exception) -> bool:
    message = str(exc).lower()
    return bool(re.search(r"\b(401|403)\b", message)) or "api key" in message or "api_key" in message


def doc_value(doc: Any, name: str) -> Any:
    """A field of an MP summary document, whether a document model or a plain dict."""
    return doc.get(name) if isinstance(doc, dict) else getattr(doc, name, None)


def _doc_to_record(doc: Any) -> dict[str, Any]:
    """One snapshot record (plain JSON) from an MP summary document (document model or dict)."""
    structure = doc_value(doc, "structure")
    if isinstance(structure, dict):
        structure = Structure.from_dict(structure)
    material_id = str(doc_value(doc, "material_id"))
    energy = doc_value(doc, "energy_per_atom")
    uncorrected = doc_value(doc, "uncorrected_energy_per_atom")
    symmetry = doc_value(doc, "symmetry")
    record: dict[str, Any] = {
        "material_id": material_id,
        "formula": doc_value(doc, "formula_pretty") or structure.composition.reduced_formula,
        "structure": structure.as_dict(),
        "formation_energy_per_atom_eV": doc_value(doc, "formation_energy_per_atom"),
        "band_gap_eV": doc_value(doc, "band_gap"),
        "e_above_hull_eV_per_atom": doc_value(doc, "energy_above_hull"),
        "energy_per_atom_eV": energy,
        "uncorrected_energy_per_atom_eV": uncorrected,
        "is_stable": doc_value(doc, "is_stable"),
        "theoretical": doc_value(doc, "theoretical"),
        "spacegroup_symbol": doc_value(symmetry, "symbol") if symmetry is not None else None,
        "entry": None,
    }
    if energy is not None and uncorrected is not None:
        n_atoms = len(structure)
        entry = ComputedStructureEntry(
            structure,
            energy=float(uncorrected) * n_atoms,
            correction=(float(energy) - float(uncorrected)) * n_atoms,
            entry_id=material_id,
            data={"source": "materials_project_summary"},
        )
        record["entry"] = entry.as_dict()
    return record


def query_materials_project(query: MPQuery, api_key: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Run ``query`` against the MP summary endpoint; returns (records, database version).

    Raises :class:`MissingApiKeyError`, :class:`InvalidApiKeyError` (message without the key) and
    :class:`EmptyQueryError`.
    """
    key = resolve_api_key(api_key)
    try:
        from mp_api.client import MPRester
    except ImportError as exc:  # mp-api is the optional [mp] extra
        raise MaterialsProjectError("mp-api is not installed: pip install 'aiida-battgen[mp]'") from exc

    kwargs = query.search_kwargs()
    LOGGER.info("Materials Project summary search: %s", {k: v for k, v in kwargs.items() if k != "fields"})
    try:
        with MPRester(api_key=key, mute_progress_bars=True) as rester:
            database_version = rester.get_database_version()
            docs = list(rester.materials.summary.search(**kwargs))
    except Exception as exc:  # noqa: BLE001 - mp-api raises MPRestError, ValueError, requests errors
        if _is_auth_failure(exc):
            raise InvalidApiKeyError(
                "Materials Project rejected the API key (HTTP 401/403): check MP_API_KEY; keys from the "
                "legacy API do not work with mp-api"
            ) from None
        raise MaterialsProjectError(f"Materials Project query failed: {_scrub(str(exc), key)}") from None
    if query.limit is not None:
        docs = docs[: query.limit]
    if not docs:
        raise EmptyQueryError(f"the Materials Project query {query.as_dict()} matched no material")
    records = [_doc_to_record(doc) for doc in _progress(docs, "MP documents")]
    LOGGER.info("Materials Project returned %d materials (database %s)", len(records), database_version)
    return records, database_version


def write_snapshot(
    records: list[dict[str, Any]], path: str | Path, query: MPQuery | dict[str, Any], database_version: str | None
) -> Path:
    """Write records as a snapshot (JSON lines; gzipped if ``path`` ends in .gz). Never contains a key."""
    path = Path(path)
    query_dict = query.as_dict() if isinstance(query, MPQuery) else dict(query)
    query_dict = {k: v for k, v in query_dict.items() if "key" not in k.lower()}
    header = {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_FORMAT_VERSION,
        "query": query_dict,
        "database_version": database_version,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n_records": len(records),
        "entry_source": ENTRY_SOURCE,
        "energy_units": {"energy_per_atom_eV": "eV/atom (MP corrected)", "band_gap_eV": "eV"},
    }
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(header) + "\n")
        for record in records:
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")
    return path


def read_snapshot(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read a snapshot; returns (header, records). Raises :class:`SnapshotFormatError` if it is not one."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            lines = [line for line in handle if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise SnapshotFormatError(f"{path.name}: unreadable snapshot: {exc}") from exc
    if not lines:
        raise SnapshotFormatError(f"{path.name}: empty file, no snapshot header")
    try:
        header = json.loads(lines[0])
        records = [json.loads(line) for line in lines[1:]]
    except json.JSONDecodeError as exc:
        raise SnapshotFormatError(f"{path.name}: not JSON lines (truncated file?): {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotFormatError(f"{path.name}: not a {SNAPSHOT_FORMAT} file")
    if header.get("version", 0) > SNAPSHOT_FORMAT_VERSION:
        raise SnapshotFormatError(f"{path.name}: snapshot version {header['version']} is newer than this reader")
    if header.get("n_records") != len(records):
        raise SnapshotFormatError(
            f"{path.name}: header announces {header.get('n_records')} records but {len(records)} were read"
        )
    return header, records


_RECORD_META_KEYS = (
    "material_id", "formula", "formation_energy_per_atom_eV", "band_gap_eV", "e_above_hull_eV_per_atom",
    "energy_per_atom_eV", "uncorrected_energy_per_atom_eV", "is_stable", "theoretical", "spacegroup_symbol",
)


def read_snapshot_batch(path: str | Path, **filters: Any) -> tuple[StructureBatch, SkipReport]:
    """A snapshot as a batch (row ids = material ids) plus the skip report; same filters as the file readers."""
    path = Path(path)
    header, records = read_snapshot(path)
    collector = _Collector(path, RowFilter(**filters))
    for index, record in enumerate(_progress(records, f"reading {path.name}")):
        if collector.full:
            break
        collector.report.n_read += 1
        row_id = str(record.get("material_id") or f"{path.stem}-{index}")
        try:
            structure = Structure.from_dict(record["structure"])
        except Exception as exc:  # noqa: BLE001
            collector.report.skip(row_id, "malformed_structure", f"{type(exc).__name__}: {exc}")
            continue
        meta = {key: record.get(key) for key in _RECORD_META_KEYS if key in record}
        meta["source_file"] = path.name
        meta["database_version"] = header.get("database_version")
        collector.offer(row_id, structure, meta)
    return collector.result()


def snapshot_to_batch(path: str | Path, **filters: Any) -> StructureBatch:
    """The structures of a snapshot as a :class:`StructureBatch` (see :func:`read_snapshot_batch`)."""
    return read_snapshot_batch(path, **filters)[0]


def run_query_command(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """``battgen query-mp``: query MP and write ``snapshot`` (default ``mp_snapshot.jsonl.gz``) and the batch.

    Config: ``query:`` (the :class:`MPQuery` fields), optional ``snapshot`` and ``batch`` file names. The API
    key comes from the environment only, never from the config (the config is copied into the summary).
    """
    from battgen.errors import InvalidInputError

    unknown = set(config) - {"query", "snapshot", "batch"}
    if unknown & {"api_key", "mp_api_key", "key"}:
        raise InvalidInputError("do not put the API key in the config (it is recorded); set MP_API_KEY instead")
    if unknown:
        raise InvalidInputError(f"unknown config key(s) {sorted(unknown)}; known: query, snapshot, batch")
    try:
        query = MPQuery.from_dict(dict(config.get("query") or {}))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"invalid query: {exc}") from None
    snapshot_name = str(config.get("snapshot", "mp_snapshot.jsonl.gz"))
    batch_name = str(config.get("batch", "structures.jsonl.gz"))
    try:
        records, database_version = query_materials_project(query)
    except (MissingApiKeyError, InvalidApiKeyError, EmptyQueryError) as exc:
        raise InvalidInputError(str(exc)) from None
    snapshot_path = write_snapshot(records, workdir / snapshot_name, query, database_version)
    batch, report = read_snapshot_batch(snapshot_path)
    batch.write(workdir / batch_name)
    return {
        "snapshot": snapshot_name,
        "batch": batch_name,
        "n_records": len(records),
        "n_rows": len(batch),
        "n_skipped": report.n_skipped,
        "database_version": database_version,
        "units": {"energies": "eV/atom", "band_gap": "eV"},
    }
