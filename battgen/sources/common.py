"""Primitives shared by every structure-source reader (user files, Materials Project snapshots): the skip
report, the row filters, the soundness check of a parsed structure and the row collector.

Kept apart from the readers' dispatcher (:mod:`battgen.sources.files`) so that the Materials Project reader
and the file readers both import this module and neither imports the other at module level.
"""

from __future__ import annotations

import sys
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


def _progress(iterable: Iterable, desc: str, total: int | None = None) -> Iterator:
    # disable=None: a bar on terminals only, silent in CalcJobs and CI logs.
    return iter(tqdm(iterable, desc=desc, total=total, disable=None, leave=False, file=sys.stderr))
