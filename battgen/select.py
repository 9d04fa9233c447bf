"""Rank and select rows of a batch by metadata columns (shortlists, pre-relaxation cuts)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from battgen.batch import StructureBatch

_KNOWN_KEYS = {"sort_by", "ascending", "top_k", "max_values", "min_values", "equals"}


@dataclass
class SelectionCriteria:
    """``top_k`` rows by ``sort_by`` after thresholds; threshold keys are metadata column names."""

    sort_by: str | None = None
    ascending: bool = True
    top_k: int | None = None
    max_values: dict[str, float] = field(default_factory=dict)
    min_values: dict[str, float] = field(default_factory=dict)
    equals: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> SelectionCriteria:
        unknown = set(settings) - _KNOWN_KEYS
        if unknown:
            raise ValueError(f"unknown selection key(s) {sorted(unknown)}; allowed: {sorted(_KNOWN_KEYS)}")
        criteria = cls(**settings)
        if criteria.top_k is not None and (not isinstance(criteria.top_k, int) or criteria.top_k < 0):
            raise ValueError(f"top_k must be a non-negative integer, got {criteria.top_k!r}")
        return criteria


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def select_rows(batch: StructureBatch, criteria: SelectionCriteria) -> tuple[StructureBatch, StructureBatch]:
    """Split into (selected, rejected). Selected rows get ``rank`` (1 = best); rejected get a reason."""
    reasons: list[str | None] = []
    for meta in batch.meta:
        reason = None
        for column, expected in criteria.equals.items():
            if meta.get(column) != expected:
                reason = f"{column}={meta.get(column)!r}, required {expected!r}"
                break
        bounds = [(c, b, ">") for c, b in criteria.max_values.items()]
        bounds += [(c, b, "<") for c, b in criteria.min_values.items()]
        for column, bound, violation in bounds:
            if reason:
                break
            value = _number(meta.get(column))
            if value is None:
                reason = f"no value for {column}"
            elif (value > bound) if violation == ">" else (value < bound):
                reason = f"{column}={value:.4g} {violation} {bound:.4g}"
        if not reason and criteria.sort_by and _number(meta.get(criteria.sort_by)) is None:
            reason = f"no value for {criteria.sort_by}"
        reasons.append(reason)

    passing = [i for i, reason in enumerate(reasons) if reason is None]
    if criteria.sort_by:
        sign = 1.0 if criteria.ascending else -1.0
        # Ties broken by row_id so the selection is deterministic.
        passing.sort(key=lambda i: (sign * _number(batch.meta[i][criteria.sort_by]), batch.meta[i]["row_id"]))
    if criteria.top_k is not None:
        for i in passing[criteria.top_k:]:
            reasons[i] = f"outside top {criteria.top_k} by {criteria.sort_by or 'order'}"
        passing = passing[: criteria.top_k]

    selected = StructureBatch(
        [batch.structures[i] for i in passing],
        [{**batch.meta[i], "rank": rank} for rank, i in enumerate(passing, start=1)],
    )
    rejected_idx = [i for i, reason in enumerate(reasons) if reason is not None]
    rejected = StructureBatch(
        [batch.structures[i] for i in rejected_idx],
        [{**batch.meta[i], "rejected_by": "selection", "reject_reason": reasons[i]} for i in rejected_idx],
    )
    return selected, rejected
