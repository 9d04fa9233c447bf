"""A batch of crystal structures with per-row metadata, stored as one gzipped JSON-lines file.

Thousands of generated candidates travel between workflow steps as one batch file (and, in the AiiDA
layer, as one node). The format is plain JSON so any tool can read it:

line 1: ``{"format": "battgen.structure_batch", "version": 1, "n_rows": N, "columns": [...]}``
then one line per row: ``{"row_id": str, "meta": {...}, "structure": {"lattice": 3x3 Å, "species": [...],
"frac_coords": [[...]]}}`` (``structure`` always last).

Only ordered structures are stored (generated candidates always are); a disordered structure raises
:class:`BatchFormatError` when added, so sources can skip it with a reason.

Speed: a batch remembers the JSON text of each structure it read or wrote, and ``select`` /
``with_columns`` / ``concatenate`` carry it along, so writing a filtered batch re-encodes only the metadata.
Structures in a batch are values: build a new batch rather than changing one in place (a changed
lattice or coordinates is detected and re-encoded; changed species are not).
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Composition, Lattice, Structure

BATCH_FORMAT = "battgen.structure_batch"
BATCH_FORMAT_VERSION = 1
# Decimals kept for fractional coordinates and lattice vectors (Å): 1e-8 is far below any tolerance used.
_FRAC_DECIMALS = 10
_LATTICE_DECIMALS = 10


class BatchFormatError(ValueError):
    """A batch file or a row of it cannot be read, or a structure cannot be stored in a batch."""


def _clean_meta_value(value: Any) -> Any:
    """Make metadata JSON-safe: numpy scalars to Python, NaN/inf to None (JSON has no NaN)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean_meta_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_meta_value(v) for v in value]
    return value


def structure_to_row(structure: Structure) -> dict[str, Any]:
    """Serialise an ordered structure into the compact row form used in batch files."""
    if not structure.is_ordered:
        raise BatchFormatError(f"disordered structure {structure.composition.reduced_formula} cannot be stored")
    lattice = np.round(structure.lattice.matrix, _LATTICE_DECIMALS).tolist()
    frac = np.round(structure.frac_coords, _FRAC_DECIMALS).tolist()
    species = [getattr(specie, "symbol", str(specie)) for specie in structure.species]
    return {"lattice": lattice, "species": species, "frac_coords": frac}


@functools.lru_cache(maxsize=65536)
def _formula_elements(formula: str) -> tuple[str, ...]:
    return tuple(el.symbol for el in Composition(formula).elements)


def _meta_json(head: dict[str, Any]) -> str:
    """Compact JSON of a row head; cleans numpy scalars / NaN only when plain encoding refuses them."""
    try:
        return json.dumps(head, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(_clean_meta_value(head), separators=(",", ":"))


_STRUCTURE_KEY = ',"structure":'


@dataclass(frozen=True)
class _Fragment:
    """The JSON text of one structure, with a fingerprint of the geometry it was made from."""

    text: str
    fingerprint: tuple[int, float, float]
    reduced_formula: str | None = None  # filled on first use by StructureBatch.summary

    @staticmethod
    def fingerprint_of(structure: Structure) -> tuple[int, float, float]:
        # Cheap on purpose (Structure.frac_coords rebuilds an array from every site): the cell plus the
        # first and last sites catch strain, rattling, scaling and added/removed sites.
        if not len(structure):
            return 0, float(structure.lattice.matrix.sum()), 0.0
        ends = float(structure[0].frac_coords.sum()) + 1e3 * float(structure[-1].frac_coords.sum())
        return len(structure), float(structure.lattice.matrix.sum()), ends

    def matches(self, structure: Structure) -> bool:
        return self.fingerprint == self.fingerprint_of(structure)


def row_to_structure(row: dict[str, Any]) -> Structure:
    """Rebuild a pymatgen Structure from a row; raises BatchFormatError on malformed rows."""
    try:
        lattice = Lattice(np.asarray(row["lattice"], dtype=float).reshape(3, 3))
        species = list(row["species"])
        frac = np.asarray(row["frac_coords"], dtype=float).reshape(len(species), 3)
        return Structure(lattice, species, frac, coords_are_cartesian=False)
    except (KeyError, TypeError, ValueError) as exc:
        raise BatchFormatError(f"row {row.get('row_id', '?')!r} is not a valid structure row: {exc}") from exc


@dataclass
class StructureBatch:
    """An ordered collection of structures, each with a unique ``row_id`` and free-form metadata.

    Metadata values must be JSON-serialisable; numbers carry their unit in the key name
    (``energy_per_atom_eV``, ``e_above_hull_eV_per_atom``) so a table is self-describing.
    """

    structures: list[Structure] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)
    # Encoded structures (see module docstring); None where not known yet.
    _fragments: list[_Fragment | None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._fragments is None or len(self._fragments) != len(self.structures):
            self._fragments = [None] * len(self.structures)
        if len(self.structures) != len(self.meta):
            raise BatchFormatError(f"{len(self.structures)} structures but {len(self.meta)} metadata rows")
        ids = [m.get("row_id") for m in self.meta]
        if any(not isinstance(i, str) or not i for i in ids):
            raise BatchFormatError("every row needs a non-empty string 'row_id'")
        duplicated = [i for i, n in Counter(ids).items() if n > 1]
        if duplicated:
            raise BatchFormatError(f"duplicate row_id(s) in batch: {duplicated[:5]}")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_structures(
        cls, structures: Iterable[Structure], meta: Iterable[dict[str, Any]] | None = None, prefix: str = "row"
    ) -> StructureBatch:
        """Build a batch; rows without a ``row_id`` get ``{prefix}-{index:06d}``."""
        structures = list(structures)
        meta_list = [dict(m) for m in meta] if meta is not None else [{} for _ in structures]
        for index, row in enumerate(meta_list):
            row.setdefault("row_id", f"{prefix}-{index:06d}")
        return cls(structures, meta_list)

    def append(self, structure: Structure, **meta: Any) -> None:
        if "row_id" not in meta:
            raise BatchFormatError("append() needs a row_id")
        if any(m["row_id"] == meta["row_id"] for m in self.meta):
            raise BatchFormatError(f"duplicate row_id {meta['row_id']!r}")
        self.structures.append(structure)
        self.meta.append(meta)
        self._fragments.append(None)

    # --- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.structures)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], Structure]]:
        return iter(zip(self.meta, self.structures))

    @property
    def row_ids(self) -> list[str]:
        return [m["row_id"] for m in self.meta]

    def index_of(self, row_id: str) -> int:
        for index, row in enumerate(self.meta):
            if row["row_id"] == row_id:
                return index
        raise KeyError(f"no row {row_id!r} in batch")

    def get(self, row_id: str) -> tuple[dict[str, Any], Structure]:
        index = self.index_of(row_id)
        return self.meta[index], self.structures[index]

    def column(self, key: str, default: Any = None) -> list[Any]:
        return [m.get(key, default) for m in self.meta]

    def select(self, keep: Sequence[bool] | Callable[[dict[str, Any], Structure], bool]) -> StructureBatch:
        """A new batch with the rows where ``keep`` is true (a mask or a predicate)."""
        if callable(keep):
            mask = [bool(keep(m, s)) for m, s in self]
        else:
            mask = [bool(k) for k in keep]
            if len(mask) != len(self):
                raise BatchFormatError(f"mask has {len(mask)} entries for {len(self)} rows")
        return StructureBatch(
            [s for s, k in zip(self.structures, mask) if k],
            [dict(m) for m, k in zip(self.meta, mask) if k],
            [f for f, k in zip(self._fragments, mask) if k],
        )

    def copy(self) -> StructureBatch:
        """A new batch sharing the (immutable) structures, with its own metadata dicts."""
        return StructureBatch(list(self.structures), [dict(m) for m in self.meta], list(self._fragments))

    def with_columns(self, **columns: Sequence[Any]) -> StructureBatch:
        """A copy with extra per-row metadata columns (each a sequence as long as the batch)."""
        new_meta = [dict(m) for m in self.meta]
        for key, values in columns.items():
            values = list(values)
            if len(values) != len(self):
                raise BatchFormatError(f"column {key!r} has {len(values)} values for {len(self)} rows")
            for row, value in zip(new_meta, values):
                row[key] = value
        return StructureBatch(list(self.structures), new_meta, list(self._fragments))

    @staticmethod
    def concatenate(batches: Iterable[StructureBatch]) -> StructureBatch:
        structures: list[Structure] = []
        meta: list[dict[str, Any]] = []
        fragments: list[_Fragment | None] = []
        for batch in batches:
            structures.extend(batch.structures)
            meta.extend(dict(m) for m in batch.meta)
            fragments.extend(batch._fragments)
        return StructureBatch(structures, meta, fragments)

    def _structure_text(self, index: int) -> str:
        """JSON of row ``index``'s structure, reusing the remembered text when the geometry is unchanged."""
        structure, fragment = self.structures[index], self._fragments[index]
        if fragment is None or not fragment.matches(structure):
            text = json.dumps(structure_to_row(structure), separators=(",", ":"))
            fragment = self._fragments[index] = _Fragment(text, _Fragment.fingerprint_of(structure))
        return fragment.text

    def _reduced_formula(self, index: int) -> str:
        """Reduced formula of row ``index``, computed once per remembered structure (it is costly)."""
        fragment = self._fragments[index]
        if fragment is not None and fragment.reduced_formula is not None and fragment.matches(self.structures[index]):
            return fragment.reduced_formula
        formula = self.structures[index].composition.reduced_formula
        if fragment is not None:
            object.__setattr__(fragment, "reduced_formula", formula)
        return formula

    def summary(self) -> dict[str, Any]:
        """Scalars worth storing as queryable attributes: counts, elements, size range."""
        formulas = {self._reduced_formula(i) for i in range(len(self))}
        elements = sorted({symbol for formula in formulas for symbol in _formula_elements(formula)})
        nsites = [len(s) for s in self.structures]
        columns = sorted({k for m in self.meta for k in m})
        return {
            "n_rows": len(self),
            "elements": elements,
            "n_reduced_formulas": len(formulas),
            "nsites_min": min(nsites) if nsites else 0,
            "nsites_max": max(nsites) if nsites else 0,
            "columns": columns,
        }

    # --- file I/O -----------------------------------------------------------------------------
    def write(self, path: str | Path) -> Path:
        """Write the batch as gzipped JSON lines; returns the path."""
        path = Path(path)
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=5) as handle:
            self.write_stream(handle)
        return path

    def write_stream(self, handle: io.TextIOBase) -> None:
        header = {
            "format": BATCH_FORMAT,
            "version": BATCH_FORMAT_VERSION,
            "n_rows": len(self),
            "columns": sorted({k for m in self.meta for k in m}),
        }
        handle.write(json.dumps(header) + "\n")
        for index, row_meta in enumerate(self.meta):
            head = {"row_id": row_meta["row_id"], "meta": {k: v for k, v in row_meta.items() if k != "row_id"}}
            text = _meta_json(head)
            handle.write(text[:-1] + _STRUCTURE_KEY + self._structure_text(index) + "}\n")

    @classmethod
    def read(cls, path: str | Path) -> StructureBatch:
        """Read a batch file; a missing, truncated or foreign file raises BatchFormatError."""
        path = Path(path)
        if not path.exists():
            raise BatchFormatError(f"batch file {path} does not exist")
        try:
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                return cls.read_stream(handle, source=str(path))
        except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
            raise BatchFormatError(f"batch file {path} is unreadable or truncated: {exc}") from exc

    @classmethod
    def read_stream(cls, handle: Iterable[str], source: str = "<stream>") -> StructureBatch:
        lines = iter(handle)
        try:
            header = json.loads(next(lines))
        except StopIteration as exc:
            raise BatchFormatError(f"{source}: empty file, no batch header") from exc
        except json.JSONDecodeError as exc:
            raise BatchFormatError(f"{source}: first line is not a batch header: {exc}") from exc
        if not isinstance(header, dict) or header.get("format") != BATCH_FORMAT:
            found = header.get("format") if isinstance(header, dict) else type(header).__name__
            raise BatchFormatError(f"{source}: not a {BATCH_FORMAT} file (format={found!r})")
        if header.get("version", 0) > BATCH_FORMAT_VERSION:
            raise BatchFormatError(f"{source}: batch format version {header['version']} is newer than this reader")
        structures, meta, fragments = [], [], []
        for line_number, line in enumerate(lines, start=2):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BatchFormatError(f"{source}: line {line_number} is not JSON (truncated file?)") from exc
            if not isinstance(row, dict):
                raise BatchFormatError(f"{source}: line {line_number} is not a row object")
            # Early files of format version 1 kept the structure keys at the top level of the row.
            fields = row.get("structure", row)
            if not isinstance(fields, dict) or "lattice" not in fields:
                raise BatchFormatError(f"{source}: line {line_number} has no 'structure'")
            structure = row_to_structure({"row_id": row.get("row_id"), **fields})
            structures.append(structure)
            meta.append({"row_id": row["row_id"], **row.get("meta", {})})
            # ``structure`` is the last key, so its text is the tail of the line (rfind: meta may hold the word).
            start = line.rfind(_STRUCTURE_KEY)
            trusted = "structure" in row and start > 0 and line.endswith("]}}")  # laid out as written here
            fragments.append(
                _Fragment(line[start + len(_STRUCTURE_KEY):-1], _Fragment.fingerprint_of(structure)) if trusted else None
            )
        if len(structures) != header.get("n_rows"):
            raise BatchFormatError(
                f"{source}: header announces {header.get('n_rows')} rows but {len(structures)} were read "
                "(truncated file?)"
            )
        return cls(structures, meta, fragments)
