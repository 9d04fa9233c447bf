"""``battgen.structure_batch``: many structures with per-row metadata in one node.

The rows live in the node's repository as one gzipped JSON-lines file (the :mod:`battgen.batch`
format); queryable scalars (row count, elements, size range, content hash) are attributes. A discovery
step costs one node whatever the number of candidates.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from aiida import orm
from pymatgen.core import Structure

from battgen.batch import StructureBatch

# Batches parsed or written in this process, by content hash: a chain of calcfunctions hands each step's
# output straight to the next without re-parsing thousands of structures. Bounded by total rows.
_PARSED_CACHE: OrderedDict[str, StructureBatch] = OrderedDict()
_PARSED_CACHE_MAX_ROWS = 200_000


def _remember(content_sha256: str, batch: StructureBatch) -> None:
    _PARSED_CACHE[content_sha256] = batch.copy()
    _PARSED_CACHE.move_to_end(content_sha256)
    while sum(len(b) for b in _PARSED_CACHE.values()) > _PARSED_CACHE_MAX_ROWS and len(_PARSED_CACHE) > 1:
        _PARSED_CACHE.popitem(last=False)


def clear_parsed_cache() -> None:
    """Forget every remembered batch (benchmarks use it to measure cold reads)."""
    _PARSED_CACHE.clear()


class StructureBatchData(orm.Data):
    """A batch of structures (one repository file) with summary attributes."""

    FILENAME = "structures.jsonl.gz"

    def __init__(self, batch: StructureBatch | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if batch is not None:
            self.set_batch(batch)

    def set_batch(self, batch: StructureBatch) -> None:
        text = io.StringIO()
        batch.write_stream(text)
        raw = text.getvalue().encode("utf-8")
        # mtime=0 keeps the bytes (and so the node hash used by caching) reproducible.
        payload = gzip.compress(raw, compresslevel=5, mtime=0)
        self.base.repository.put_object_from_bytes(payload, self.FILENAME)
        for key, value in batch.summary().items():
            self.base.attributes.set(key, value)
        content_sha256 = hashlib.sha256(raw).hexdigest()
        self.base.attributes.set("content_sha256", content_sha256)
        _remember(content_sha256, batch)

    @property
    def n_rows(self) -> int:
        return self.base.attributes.get("n_rows", 0)

    def __len__(self) -> int:
        return self.n_rows

    def get_batch(self) -> StructureBatch:
        """The rows as a StructureBatch (a fresh copy: changing it never changes the node)."""
        content_sha256 = self.base.attributes.get("content_sha256", None)
        if content_sha256 in _PARSED_CACHE:
            _PARSED_CACHE.move_to_end(content_sha256)
            return _PARSED_CACHE[content_sha256].copy()
        with self.base.repository.open(self.FILENAME, mode="rb") as handle:
            with gzip.open(handle, "rt", encoding="utf-8") as text:
                batch = StructureBatch.read_stream(text, source=f"StructureBatchData<{self.pk}>")
        if content_sha256:
            _remember(content_sha256, batch)
        return batch

    def iter_structures(self) -> Iterator[tuple[dict[str, Any], Structure]]:
        """Iterate (row metadata, pymatgen Structure)."""
        yield from self.get_batch()

    def get_row(self, row_id: str) -> tuple[dict[str, Any], Structure]:
        return self.get_batch().get(row_id)

    def get_structuredata(self, row_id: str) -> orm.StructureData:
        """An unstored StructureData of one row; use the ``extract_structure`` calcfunction for provenance."""
        return orm.StructureData(pymatgen=self.get_row(row_id)[1])

    def export_file(self, path: str) -> None:
        """Copy the batch file out of the repository (readable with ``StructureBatch.read``)."""
        with self.base.repository.open(self.FILENAME, mode="rb") as source, open(path, "wb") as target:
            target.write(source.read())
