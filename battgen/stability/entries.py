"""Reading reference entries (pymatgen ComputedEntry / ComputedStructureEntry) from the files they come in.

Accepted layouts:

* ``.json`` / ``.json.gz`` in pymatgen's MSON format: a list of entries (pymatgen and emmet test files),
  a ``{key: entry}`` mapping (matbench-discovery's elemental references), or a single entry; entries
  without ``@class`` tags are read with ``ComputedStructureEntry.from_dict`` / ``ComputedEntry.from_dict``;
* ``.jsonl`` / ``.jsonl.gz`` snapshots: a header line, then one JSON object per line carrying the entry
  dict under ``entry`` (the ``battgen.snapshot`` source-snapshot format); lines that are themselves
  entry dicts are accepted too.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from monty.json import MontyDecoder
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry


class EntriesFormatError(ValueError):
    """A file or record does not hold readable pymatgen computed entries."""


def entry_from_dict(record: Any) -> ComputedEntry:
    """One ComputedEntry / ComputedStructureEntry from its dict (with or without MSON ``@class`` tags)."""
    if isinstance(record, ComputedEntry):
        return record
    if not isinstance(record, dict):
        raise EntriesFormatError(f"expected an entry dict, got {type(record).__name__}")
    try:
        if "@class" in record:
            decoded = MontyDecoder().process_decoded(record)
            if isinstance(decoded, ComputedEntry):
                return decoded
            raise EntriesFormatError(f"record is a {type(decoded).__name__}, not a ComputedEntry")
        if "structure" in record:
            return ComputedStructureEntry.from_dict(record)
        return ComputedEntry.from_dict(record)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, EntriesFormatError):
            raise
        raise EntriesFormatError(f"record is not a computed entry: {exc}") from exc


def entries_from_json_lines(lines: Iterable[str], source: str = "<stream>") -> list[ComputedEntry]:
    """Entries from snapshot JSON lines: records with an ``entry`` key, or bare entry dicts.

    Lines without either (the header line, rows of a snapshot that holds no entry) are skipped; a file
    that yields no entry at all raises :class:`EntriesFormatError`.
    """
    entries = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EntriesFormatError(f"{source}: line {line_number} is not JSON (truncated file?)") from exc
        if isinstance(record, dict) and isinstance(record.get("entry"), dict):
            entries.append(entry_from_dict(record["entry"]))
        elif isinstance(record, dict) and "energy" in record and ("composition" in record or "structure" in record):
            entries.append(entry_from_dict(record))
    if not entries:
        raise EntriesFormatError(f"{source}: no computed entries found (expected rows with an 'entry' dict)")
    return entries


def entries_from_json(data: Any, source: str = "<json>") -> list[ComputedEntry]:
    """Entries from decoded JSON: a list, a ``{key: entry}`` mapping or a single entry dict."""
    if isinstance(data, dict) and ("@class" in data or "energy" in data):
        records = [data]
    elif isinstance(data, dict):
        records = list(data.values())
    elif isinstance(data, list):
        records = data
    else:
        raise EntriesFormatError(f"{source}: expected a list or mapping of entries, got {type(data).__name__}")
    if not records:
        raise EntriesFormatError(f"{source}: holds no entries")
    return [entry_from_dict(record) for record in records]


def entries_from_bytes(payload: bytes, source: str = "<bytes>") -> list[ComputedEntry]:
    """Entries from file content of unknown layout: gzipped or not, one JSON document or JSON lines."""
    if payload[:2] == b"\x1f\x8b":
        try:
            payload = gzip.decompress(payload)
        except (OSError, EOFError) as exc:
            raise EntriesFormatError(f"{source}: truncated gzip data: {exc}") from exc
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EntriesFormatError(f"{source}: not UTF-8 text") from exc
    try:
        return entries_from_json(json.loads(text), source=source)
    except json.JSONDecodeError:
        return entries_from_json_lines(text.splitlines(), source=source)


def load_entries(path: str | Path) -> list[ComputedEntry]:
    """Read entries from a ``.json[.gz]`` (MSON list/mapping) or ``.jsonl[.gz]`` (snapshot) file."""
    path = Path(path)
    if not path.exists():
        raise EntriesFormatError(f"entries file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    stem_suffix = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            if stem_suffix == ".jsonl":
                return entries_from_json_lines(handle, source=str(path))
            return entries_from_json(json.load(handle), source=str(path))
    except (OSError, EOFError, json.JSONDecodeError) as exc:
        raise EntriesFormatError(f"entries file {path} is unreadable: {exc}") from exc
