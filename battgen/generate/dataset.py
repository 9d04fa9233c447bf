"""Training-data preparation for the generative models (seed 000 §2.1).

The seed trains on the "TMO" set: Materials Project structures that are binary ... senary, contain a
transition metal and oxygen, and have fewer than 45 atoms in the cell, split 60/20/20 at random. Here the
same filters apply to any batch (an MP snapshot or a file source), and the split is drawn with
``numpy.random.default_rng(seed)`` and written next to the model (``split.json``: the row ids of each
part), so a trained model says exactly which structures it saw.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Element

from battgen.batch import StructureBatch

SPLIT_FILENAME = "split.json"
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class TrainingFilter:
    """Which rows of a batch are training material. Defaults are the seed's TMO set."""

    require_transition_metal: bool = True
    require_elements: tuple[str, ...] = ("O",)
    min_elements: int = 2  # binary ...
    max_elements: int = 6  # ... senary
    max_atoms: int | None = 44  # "< 45 atoms" per cell
    forbidden_elements: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> TrainingFilter:
        """From a config mapping; ``{"preset": "none"}`` keeps every row, ``"tmo"`` (default) the seed's set."""
        config = dict(config or {})
        preset = config.pop("preset", "tmo")
        if preset == "none":
            base = cls(False, (), 1, 118, None, ())
        elif preset == "tmo":
            base = cls()
        else:
            raise ValueError(f"unknown training filter preset {preset!r}; use 'tmo' or 'none'")
        unknown = sorted(set(config) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown training filter key(s) {unknown}; allowed: {sorted(cls.__dataclass_fields__)}")
        values = {**base.__dict__, **config}
        for key in ("require_elements", "forbidden_elements"):
            values[key] = tuple(str(s) for s in values[key])
            for symbol in values[key]:
                if not Element.is_valid_symbol(symbol):
                    raise ValueError(f"{key}: {symbol!r} is not an element symbol")
        if values["min_elements"] > values["max_elements"]:
            raise ValueError("min_elements is larger than max_elements")
        return cls(**values)

    def reason_rejected(self, elements: set[str], n_atoms: int) -> str | None:
        """Why a structure with these elements and atom count is not training material (None: it is)."""
        if not self.min_elements <= len(elements) <= self.max_elements:
            return "number_of_elements"
        if self.max_atoms is not None and n_atoms > self.max_atoms:
            return "too_many_atoms"
        missing = [s for s in self.require_elements if s not in elements]
        if missing:
            return "missing_required_element"
        if self.require_transition_metal and not any(Element(s).is_transition_metal for s in elements):
            return "no_transition_metal"
        if any(s in elements for s in self.forbidden_elements):
            return "forbidden_element"
        return None


def filter_training_rows(batch: StructureBatch, training_filter: TrainingFilter) -> tuple[StructureBatch, dict[str, int]]:
    """The rows that pass ``training_filter`` and a count of rejections per reason."""
    keep: list[bool] = []
    rejected: dict[str, int] = {}
    for _, structure in batch:
        elements = {el.symbol for el in structure.composition.elements}
        reason = training_filter.reason_rejected(elements, len(structure))
        keep.append(reason is None)
        if reason is not None:
            rejected[reason] = rejected.get(reason, 0) + 1
    return batch.select(keep), rejected


@dataclass
class DatasetSplits:
    """Train / validation / test parts of one batch, and how they were drawn."""

    train: StructureBatch
    val: StructureBatch
    test: StructureBatch
    seed: int
    fractions: tuple[float, float, float]
    source_sha256: str = ""
    filter_counts: dict[str, int] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What ``split.json`` holds: enough to rebuild the split from the source batch."""
        return {
            "seed": self.seed,
            "fractions": list(self.fractions),
            "source_sha256": self.source_sha256,
            "rejected_by_filter": dict(self.filter_counts),
            **{name: getattr(self, name).row_ids for name in SPLIT_NAMES},
        }

    def write(self, model_dir: Path) -> Path:
        path = Path(model_dir) / SPLIT_FILENAME
        path.write_text(json.dumps(self.record(), indent=1), encoding="utf-8")
        return path


def batch_sha256(batch: StructureBatch) -> str:
    """A content hash of a batch's row ids and structures (independent of file compression)."""
    digest = hashlib.sha256()
    for index, row_id in enumerate(batch.row_ids):
        digest.update(row_id.encode())
        digest.update(batch._structure_text(index).encode())
    return digest.hexdigest()


def split_batch(
    batch: StructureBatch, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0
) -> DatasetSplits:
    """Random split (seed's 60/20/20 by default); every part gets at least one row when the batch has three."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    n = len(batch)
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    if n >= 3:  # keep every part non-empty on tiny sets so validation and test have something to score
        n_train = min(max(n_train, 1), n - 2)
        n_val = min(max(n_val, 1), n - n_train - 1)
    parts = np.split(order, [n_train, n_train + n_val])
    masks = []
    for part in parts:
        mask = np.zeros(n, dtype=bool)
        mask[part] = True
        masks.append(mask)
    # select() keeps the source order inside each part: the split is defined by membership only.
    return DatasetSplits(*(batch.select(mask.tolist()) for mask in masks), seed=seed, fractions=fractions,
                         source_sha256=batch_sha256(batch))


def prepare_training_data(
    batch: StructureBatch, filter_config: dict[str, Any] | None = None,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0,
) -> DatasetSplits:
    """Filter (TMO preset by default) then split; raises ValueError when nothing is left to train on."""
    training_filter = TrainingFilter.from_config(filter_config)
    kept, rejected = filter_training_rows(batch, training_filter)
    if len(kept) == 0:
        raise ValueError(f"no training structures left after filtering {len(batch)} rows (rejected: {rejected})")
    splits = split_batch(kept, fractions, seed)
    splits.source_sha256 = batch_sha256(batch)
    splits.filter_counts = {"n_input": len(batch), "n_kept": len(kept), **rejected}
    return splits


def read_split(model_dir: Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / SPLIT_FILENAME).read_text(encoding="utf-8"))
