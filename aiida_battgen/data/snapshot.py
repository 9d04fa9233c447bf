"""``battgen.snapshot``: an immutable source file of structures (MP snapshot or a user file) as a node.

Where the structures of a discovery run came from is part of its provenance: a Materials Project
snapshot written by ``battgen query-mp`` (query, database version and date in its header) or a user file
(CDVAE-style CSV, extended XYZ, entries JSON, CIF). The node validates the file on construction without
parsing every structure, and stores queryable attributes: ``source_kind`` (``materials_project`` or
``file``), ``original_filename``, ``original_path`` (absolute), ``format``, ``database_version``, ``query`` (never an API key),
``n_records``, ``created_at`` (UTC) and ``sha256`` of the bytes. Turn it into structures with the
``battgen.batch_from_snapshot`` calcfunction.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path
from typing import Any

from aiida import orm

from battgen.sources.files import SourceFormatError, describe_source_file


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _without_secrets(query: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (query or {}).items() if "key" not in str(k).lower()}


class SourceSnapshotData(orm.SinglefileData):
    """A validated source file of structures with provenance attributes (see module docstring)."""

    def __init__(self, file: str | Path, filename: str | None = None, **kwargs: Any) -> None:
        path = Path(file).expanduser().resolve()  # relative to the caller's working directory, recorded absolute
        if not path.is_file():
            raise ValueError(f"source snapshot file {path} does not exist")
        filename = filename or path.name
        try:
            description = describe_source_file(path)
        except SourceFormatError as exc:
            raise ValueError(f"not a usable structure source: {exc}") from exc
        super().__init__(file=str(path), filename=filename, **kwargs)
        attributes = self.base.attributes
        attributes.set("source_kind", description["source_kind"])
        attributes.set("format", description["format"])
        attributes.set("original_filename", filename)
        attributes.set("original_path", str(path))
        attributes.set("database_version", description.get("database_version"))
        attributes.set("query", _without_secrets(description.get("query") or {}))
        attributes.set("n_records", int(description["n_records"]))
        attributes.set(
            "created_at", description.get("created_at") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        )
        attributes.set("sha256", _sha256(path))

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> SourceSnapshotData:
        """Wrap a file (its suffix picks the reader: .csv, .extxyz/.xyz, .json[.gz], .cif, .jsonl[.gz])."""
        return cls(file=path, **kwargs)

    def set_file(self, *args: Any, **kwargs: Any) -> None:
        # The attributes describe the content given at construction: replacing it later would lie.
        if self.base.attributes.get("sha256", None) is not None:
            raise ValueError("a SourceSnapshotData is immutable; create a new node for a new file")
        super().set_file(*args, **kwargs)

    @property
    def source_kind(self) -> str:
        return self.base.attributes.get("source_kind")

    @property
    def n_records(self) -> int:
        return self.base.attributes.get("n_records", 0)

    @property
    def database_version(self) -> str | None:
        return self.base.attributes.get("database_version", None)

    @property
    def query(self) -> dict[str, Any]:
        return self.base.attributes.get("query", {})

    @property
    def sha256(self) -> str:
        return self.base.attributes.get("sha256")
