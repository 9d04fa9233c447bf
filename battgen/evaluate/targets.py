"""How close conditionally generated samples land to their targets (seed 004 §3.4, Fig. 5B).

A row is conditional on scalar condition ``key`` (one of
:data:`battgen.generate.conditions.SCALAR_CONDITIONS`) when its metadata carries ``target_<key>`` (as the
crystal LM writes) or ``conditions: {key: value}``. The achieved value is
:func:`battgen.generate.conditions.condition_value` (a metadata value such as a predictor's output if the
row has one, else computed: capacity from the composition, channel radius with Zeo++).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from battgen.batch import StructureBatch
from battgen.generate.conditions import SCALAR_CONDITIONS, condition_value, target_error

# "Close enough" per condition (same unit as the condition): a few percent of a typical value.
DEFAULT_TARGET_TOLERANCES: dict[str, float] = {
    "formation_energy_per_atom_eV": 0.1,
    "band_gap_eV": 0.2,
    "e_above_hull_eV_per_atom": 0.05,
    "gravimetric_capacity_mAh_per_g": 50.0,
    "channel_radius_A": 0.25,
}
MAX_DISTINCT_TARGETS = 12  # more distinct requested values than this: a continuous target, no per-value table


def row_target(meta: Mapping[str, Any], key: str) -> float | None:
    """The row's target for condition ``key`` (``target_<key>``, else ``conditions[key]``), or None."""
    value = meta.get(f"target_{key}")
    if value is None and isinstance(meta.get("conditions"), Mapping):
        value = meta["conditions"].get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def target_agreement(
    batch: StructureBatch,
    tolerances: Mapping[str, float] | None = None,
    working_ion: str = "Li",
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per condition with at least one targeted row: counts, mean/median |achieved − target| (the
    condition's unit), percent within tolerance, and the (target, achieved) pairs for plots."""
    tolerances = {**DEFAULT_TARGET_TOLERANCES, **(tolerances or {})}
    results: dict[str, dict[str, Any]] = {}
    for key in SCALAR_CONDITIONS:
        targeted = [(meta, structure, target) for meta, structure in batch
                    if (target := row_target(meta, key)) is not None]
        if not targeted:
            continue
        targets, achieved = [], []
        for meta, structure, target in tqdm(targeted, desc=f"target {key}", disable=not progress):
            ion = str(meta.get("working_ion") or working_ion)
            targets.append(target)
            achieved.append(condition_value(key, meta, structure, ion))
        errors = np.array([target_error(value, target) for value, target in zip(achieved, targets)])
        known = errors[~np.isnan(errors)]
        tolerance = float(tolerances[key])
        results[key] = {
            "n_targeted": len(targeted),
            "n_achieved_known": int(known.size),
            "mean_abs_error": float(known.mean()) if known.size else None,
            "median_abs_error": float(np.median(known)) if known.size else None,
            "tolerance": tolerance,
            "within_tolerance_percent": 100.0 * float((known <= tolerance).mean()) if known.size else None,
            "per_target": per_target_statistics(targets, achieved, tolerance),
            "targets": targets,
            "achieved": achieved,
        }
    return results


def per_target_statistics(targets: list[float], achieved: list[float | None], tolerance: float,
                          max_targets: int = MAX_DISTINCT_TARGETS) -> list[dict[str, Any]]:
    """Seed 004 Fig. 5B as numbers: for each distinct requested value, the achieved median and quartiles and
    the percent within ``tolerance`` (rows whose achieved value is unknown are left out); empty when the
    targets are continuous (more than ``max_targets`` distinct values)."""
    distinct = sorted(set(targets))
    if len(distinct) > max_targets:
        return []
    rows = []
    for target in distinct:
        values = np.array([a for t, a in zip(targets, achieved) if t == target and a is not None and np.isfinite(a)])
        row: dict[str, Any] = {"target": target, "n_achieved_known": int(values.size)}
        if values.size:
            q25, median, q75 = np.percentile(values, [25, 50, 75])
            row.update({"median_achieved": float(median), "q25_achieved": float(q25), "q75_achieved": float(q75),
                        "within_tolerance_percent": 100.0 * float((np.abs(values - target) <= tolerance).mean())})
        rows.append(row)
    return rows


def agreement_scalars(agreement: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Flat ``target_<key>_<statistic>`` scalars (the key carries the unit), without the value lists."""
    return {
        f"target_{key}_{name}": value
        for key, stats in agreement.items()
        for name, value in stats.items()
        if name not in ("targets", "achieved", "per_target")
    }
