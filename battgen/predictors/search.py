"""A small hyper-parameter search for any registered predictor, scored on the validation split.

Seed 001 tuned its descriptor CNNs with Keras-Tuner's Bayesian optimisation (75 trials, validation RMSE
as the objective) over filters, kernel size, number of layers, dropout and learning rate. On a shared
2-core machine a Bayesian tuner buys little over a handful of trials, so this is a plain random (or grid)
search over a declared space: every trial trains through the common interface
(``Predictor.fit`` into ``work_dir/trial-NNN``), the trained model predicts the validation split, and the
trial with the lowest validation RMSE wins. The test split is never looked at. (A predictor that early-
stops on the validation split, as the descriptor CNNs do, sees it during training too, exactly as the
authors' Keras checkpointing did; the test split stays the unbiased number.)
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from battgen.generate.training import merge_hyperparameters
from battgen.models import write_manifest
from battgen.predictors.base import Predictor, predictor_class
from battgen.report import format_table

# The space of seed 001's tuner where it overlaps the knobs we search (filters 32-256, kernel 3-9,
# dropout 0.3-0.5); lr without the tuner's 1e-1 (Adam diverges there on standardised targets); batch
# size, which the seed does not tune, around Keras' default 32.
DESCRIPTOR_CNN_SEARCH_SPACE: dict[str, list[Any]] = {
    "lr": [1e-2, 1e-3, 1e-4],
    "conv_filters": [32, 64, 128, 256],
    "kernel_size": [3, 5, 7, 9],
    "dropout": [0.3, 0.4, 0.5],
    "batch_size": [32, 64, 128],
}


@dataclass
class SearchResult:
    """The winning configuration (full hyper-parameters), its validation RMSE and every trial."""

    predictor: str
    target: str
    best_hyperparameters: dict[str, Any]
    best_trial: int
    best_val_rmse: float
    searched_keys: list[str]
    trials: list[dict[str, Any]] = field(default_factory=list)

    def table(self) -> str:
        columns = ["trial", *self.searched_keys, "val_rmse", "val_mae", "fit_time_s", "status"]
        return format_table(self.trials, columns, float_format="{:.4g}")


def candidate_configs(space: dict[str, list[Any]], n_trials: int | None, seed: int = 0,
                      strategy: str = "random") -> list[dict[str, Any]]:
    """``n_trials`` distinct points of ``space``: drawn without replacement ("random", seeded) or the first
    ``n_trials`` of the full grid in declaration order ("grid"; ``None`` = the whole grid)."""
    if not space or any(not values for values in space.values()):
        raise ValueError("the search space needs at least one key, each with at least one value")
    keys = list(space)
    grid = [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]
    if strategy == "grid":
        return grid if n_trials is None else grid[:n_trials]
    if strategy == "random":
        n = len(grid) if n_trials is None else min(n_trials, len(grid))
        picked = np.random.default_rng(seed).choice(len(grid), size=n, replace=False)
        return [grid[i] for i in picked]
    raise ValueError(f"unknown search strategy {strategy!r}; use 'random' or 'grid'")


def validation_errors(predictor: Predictor, splits: Any, target: str) -> tuple[float, float]:
    """RMSE and MAE of a trained predictor on the validation split (rows with a known target)."""
    true = np.array([_as_float(meta.get(target)) for meta in splits.val.meta])
    predicted = np.asarray(predictor.predict(splits.val)[target], float)
    mask = np.isfinite(true) & np.isfinite(predicted)
    if not mask.any():
        return float("nan"), float("nan")
    error = predicted[mask] - true[mask]
    return float(np.sqrt(np.mean(error**2))), float(np.mean(np.abs(error)))


def hyperparameter_search(
    predictor: str | type[Predictor],
    splits: Any,
    target: str,
    work_dir: Path,
    space: dict[str, list[Any]] | None = None,
    n_trials: int | None = 8,
    strategy: str = "random",
    base_hyperparameters: dict[str, Any] | None = None,
    seed: int = 0,
) -> SearchResult:
    """Train ``n_trials`` configurations of ``predictor`` on ``splits.train`` and pick the lowest
    validation RMSE of ``target``. ``space`` maps hyper-parameter names to candidate values (default:
    :data:`DESCRIPTOR_CNN_SEARCH_SPACE`); each trial's model stays in ``work_dir/trial-NNN``."""
    cls = predictor_class(predictor) if isinstance(predictor, str) else predictor
    space = dict(space or DESCRIPTOR_CNN_SEARCH_SPACE)
    base = merge_hyperparameters(cls.default_hyperparameters(), base_hyperparameters)
    unknown = sorted(set(space) - set(base))
    if unknown:
        raise ValueError(f"search space key(s) {unknown} are not hyper-parameters of {cls.name}; known: {sorted(base)}")
    work_dir = Path(work_dir)
    trials: list[dict[str, Any]] = []
    configs = candidate_configs(space, n_trials, seed, strategy)
    for index, point in enumerate(tqdm(configs, desc=f"{cls.name} search", leave=False)):
        hyperparameters = merge_hyperparameters(base, point)
        model_dir = work_dir / f"trial-{index:03d}"
        model_dir.mkdir(parents=True, exist_ok=True)
        row: dict[str, Any] = {"trial": index, **point, "model_dir": str(model_dir)}
        started = time.perf_counter()
        try:
            result = cls.fit(splits, [target], model_dir, hyperparameters, seed=seed)
            write_manifest(model_dir, "predictor", cls.architecture, hyperparameters, result.get("training"), result.get("metrics"))
            val_rmse, val_mae = validation_errors(cls(model_dir), splits, target)
            row.update(val_rmse=val_rmse, val_mae=val_mae, status="ok")
        except Exception as exc:  # noqa: BLE001 - a diverging or invalid configuration loses, it does not end the search
            row.update(val_rmse=float("nan"), val_mae=float("nan"), status=f"failed: {type(exc).__name__}: {exc}")
        row["fit_time_s"] = round(time.perf_counter() - started, 2)
        trials.append(row)
    scored = [t for t in trials if np.isfinite(t["val_rmse"])]
    if not scored:
        raise RuntimeError(f"every one of the {len(trials)} trial(s) of {cls.name} failed: {[t['status'] for t in trials]}")
    best = min(scored, key=lambda t: t["val_rmse"])
    return SearchResult(
        predictor=cls.name, target=target,
        best_hyperparameters=merge_hyperparameters(base, {k: best[k] for k in space}),
        best_trial=best["trial"], best_val_rmse=best["val_rmse"], searched_keys=list(space), trials=trials,
    )


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
