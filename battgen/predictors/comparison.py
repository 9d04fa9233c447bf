"""Model comparison report (seed 001 Fig. 10a): train several predictors on one split, score them on its
test part, and put the seed's published numbers beside ours.

Every model goes through the common interface (``predictor_class(name).fit`` -> model directory with a
manifest -> ``predictor_class(name)(model_dir).predict``), so any registered predictor can be compared.
A predictor that cannot be imported or configured is listed as ``skipped`` with the reason; one that
raises while training or predicting is listed as ``failed``; neither stops the others.

Outputs in ``output_dir``: ``comparison.csv``, ``comparison.txt`` (the same table as text) and
``comparison.png`` (bars: ours vs the seed's, the training-mean baseline as a dashed line).
The seed's numbers come from a different data set (10,123 MP TMO structures, 2,026 test rows), so
they are a reference scale, not a like-for-like score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from battgen.generate.dataset import DatasetSplits
from battgen.generate.training import merge_hyperparameters
from battgen.models import write_manifest
from battgen.predictors.base import predictor_class
from battgen.predictors.descriptors import clear_descriptor_caches
from battgen.report import format_table, write_csv

# Seed 001 §3.2 / Fig. 10: formation energy test RMSE (and ALIGNN's MAE), eV/atom, 2,026 TMO test rows.
SEED_001_TEST_RMSE_eV_per_atom = {"magpie-cnn": 0.25, "xrd-cnn": 0.56, "megnet": 0.13, "deepergatgnn": 0.11, "alignn": 0.11}
SEED_001_TEST_MAE_eV_per_atom = {"alignn": 0.05}
SEED_001_LABEL = "seed 001 (10,123 MP TMOs)"
BASELINE_NAME = "training-mean"


@dataclass
class ModelSpec:
    """One model of a comparison: a registered predictor name and hyper-parameters over its defaults."""

    name: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: ModelSpec | str | tuple[str, dict[str, Any]]) -> ModelSpec:
        if isinstance(value, ModelSpec):
            return value
        if isinstance(value, str):
            return cls(value)
        name, hyperparameters = value
        return cls(name, dict(hyperparameters or {}))


@dataclass
class ComparisonReport:
    target: str
    unit: str
    rows: list[dict[str, Any]]
    columns: list[str]
    csv_path: Path
    text_path: Path
    figure_path: Path

    def row(self, model: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["model"] == model)

    @property
    def text(self) -> str:
        return self.text_path.read_text(encoding="utf-8")


def unit_of(target: str) -> str:
    """The unit slug a target key ends with (``formation_energy_per_atom_eV`` -> ``eV_per_atom``)."""
    if "_per_atom_" in target or target.endswith("_eV_per_atom"):
        return "eV_per_atom"
    return target.rsplit("_", 1)[-1] if "_" in target else "unitless"


# Hyper-parameters through which predictors accept a wall-time limit, with the factor from minutes.
TIME_LIMIT_KEYS = {"max_train_minutes": 1.0, "max_train_time_s": 60.0}
EPOCH_KEYS = ("max_epochs", "epochs")
_CALIBRATION_ROWS = 32


def time_budget_hyperparameters(name: str, hyperparameters: dict[str, Any], minutes: float, splits: Any,
                                target: str, work_dir: Path, seed: int = 0,
                                calibrate: bool = True) -> tuple[dict[str, Any], str]:
    """``hyperparameters`` of predictor ``name`` limited to about ``minutes`` of training, and how.

    A predictor with a wall-time hyper-parameter (:data:`TIME_LIMIT_KEYS`) gets it set. Otherwise its
    epoch count is calibrated: one epoch on ``_CALIBRATION_ROWS`` training rows (graph building and
    featurisation included, so the estimate errs long) is scaled to the full training split, and the
    epochs are cut to fit ``minutes`` (at least one, never more than the configured number). With
    ``calibrate=False`` (smoke runs) such a predictor trains one epoch."""
    cls = predictor_class(name)
    merged = merge_hyperparameters(cls.default_hyperparameters(), hyperparameters)
    for key, factor in TIME_LIMIT_KEYS.items():
        if key in merged:
            return {**hyperparameters, key: minutes * factor}, f"{key}={minutes * factor:g}"
    epoch_key = next((key for key in EPOCH_KEYS if key in merged), None)
    if epoch_key is None:
        return dict(hyperparameters), "no time or epoch hyper-parameter: defaults, unbudgeted"
    if not calibrate:
        return {**hyperparameters, epoch_key: 1}, f"{epoch_key}=1 (not calibrated)"
    n_rows = min(_CALIBRATION_ROWS, len(splits.train))
    calibration = DatasetSplits(
        splits.train.select([i < n_rows for i in range(len(splits.train))]),
        splits.val.select([i < 4 for i in range(len(splits.val))]),
        splits.test.select([i < 4 for i in range(len(splits.test))]),
        seed=splits.seed, fractions=splits.fractions,
    )
    calibration_dir = Path(work_dir) / f"calibrate-{name}"
    started = time.perf_counter()
    cls.fit(calibration, [target], calibration_dir, {**merged, epoch_key: 1}, seed=seed)
    per_epoch_s = (time.perf_counter() - started) * len(splits.train) / max(n_rows, 1)
    epochs = int(max(1, min(int(merged[epoch_key]), (60.0 * minutes) // max(per_epoch_s, 1e-9))))
    return ({**hyperparameters, epoch_key: epochs},
            f"{epoch_key}={epochs} (calibrated: ~{per_epoch_s:.1f} s per epoch on {len(splits.train)} rows)")


def compare_predictors(
    splits: Any,
    models: list[ModelSpec | str | tuple[str, dict[str, Any]]],
    target: str,
    output_dir: Path,
    seed: int = 0,
    reference_rmse: dict[str, float] | None = None,
    reference_mae: dict[str, float] | None = None,
    reference_label: str = SEED_001_LABEL,
    title: str | None = None,
) -> ComparisonReport:
    """Train, test and tabulate ``models`` on ``splits`` (see module docstring). ``reference_rmse`` /
    ``reference_mae`` (default: seed 001's, eV/atom) are drawn beside ours for models of the same name."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    unit = unit_of(target)
    # Seed 001's numbers are formation energies in eV/atom: the default reference only for such a target.
    seed_001_applies = unit == "eV_per_atom"
    if reference_rmse is None:
        reference_rmse = SEED_001_TEST_RMSE_eV_per_atom if seed_001_applies else {}
    if reference_mae is None:
        reference_mae = SEED_001_TEST_MAE_eV_per_atom if seed_001_applies else {}
    train_true = _target_values(splits.train, target)
    test_true = _target_values(splits.test, target)
    train_mean = float(np.nanmean(train_true)) if np.isfinite(train_true).any() else float("nan")

    rows = [_baseline_row(train_mean, test_true, len(splits.train), unit)]
    for spec in (ModelSpec.coerce(m) for m in models):
        rows.append(_evaluate_model(spec, splits, target, test_true, output_dir / "models" / spec.name, seed, unit))
    for row in rows:
        row[f"reference_test_rmse_{unit}"] = reference_rmse.get(row["model"])
        row[f"reference_test_mae_{unit}"] = reference_mae.get(row["model"])

    columns = ["model", "status", f"test_rmse_{unit}", f"test_mae_{unit}", "train_time_s",
               "inference_structures_per_s", "n_train", "n_test", "n_not_predicted",
               f"reference_test_rmse_{unit}", f"reference_test_mae_{unit}", "reason"]
    csv_path = write_csv(rows, columns, output_dir / "comparison.csv")
    text_path = output_dir / "comparison.txt"
    header = (f"{title or 'Model comparison'}: {target} on {len(splits.test)} test rows "
              f"(train {len(splits.train)}, val {len(splits.val)}, split seed {splits.seed}); "
              f"reference = {reference_label}, a different data set\n")
    text_path.write_text(header + format_table(rows, columns, float_format="{:.4g}") + "\n", encoding="utf-8")
    figure_path = plot_comparison(rows, unit, output_dir / "comparison.png", reference_label,
                                  title or f"{target}: test error", reference_rmse, reference_mae)
    return ComparisonReport(target, unit, rows, columns, csv_path, text_path, figure_path)


def _target_values(batch: Any, target: str) -> np.ndarray:
    values = []
    for meta in batch.meta:
        try:
            values.append(float(meta.get(target)))
        except (TypeError, ValueError):
            values.append(float("nan"))
    return np.array(values, dtype=float)


def _errors(predicted: np.ndarray, true: np.ndarray) -> tuple[float, float, int]:
    mask = np.isfinite(predicted) & np.isfinite(true)
    if not mask.any():
        return float("nan"), float("nan"), 0
    error = predicted[mask] - true[mask]
    return float(np.sqrt(np.mean(error**2))), float(np.mean(np.abs(error))), int(mask.sum())


def _baseline_row(train_mean: float, test_true: np.ndarray, n_train: int, unit: str) -> dict[str, Any]:
    rmse, mae, n = _errors(np.full_like(test_true, train_mean), test_true)
    return {"model": BASELINE_NAME, "status": "baseline", f"test_rmse_{unit}": rmse, f"test_mae_{unit}": mae,
            "train_time_s": 0.0, "inference_structures_per_s": None, "n_train": n_train, "n_test": n,
            "n_not_predicted": 0, "reason": f"predicts the training mean {train_mean:.4g} for every row"}


def _evaluate_model(spec: ModelSpec, splits: Any, target: str, test_true: np.ndarray, model_dir: Path,
                    seed: int, unit: str) -> dict[str, Any]:
    row: dict[str, Any] = {"model": spec.name, "n_train": len(splits.train), "n_test": len(splits.test)}
    try:
        cls = predictor_class(spec.name)
        hyperparameters = merge_hyperparameters(cls.default_hyperparameters(), spec.hyperparameters)
    except Exception as exc:  # noqa: BLE001 - a missing optional stack (DGL, matgl ...) skips one model
        return {**row, "status": "skipped", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        splits.write(model_dir)
        started = time.perf_counter()
        result = cls.fit(splits, [target], model_dir, hyperparameters, seed=seed)
        row["train_time_s"] = round(time.perf_counter() - started, 2)
        training = {"targets": [target], "split_seed": splits.seed, "seed": seed, **(result.get("training") or {})}
        write_manifest(model_dir, "predictor", cls.architecture, hyperparameters, training, result.get("metrics"))
        predictor = cls(model_dir)
        clear_descriptor_caches()  # throughput must include featurising structures the model has not seen
        started = time.perf_counter()
        predicted = np.asarray(predictor.predict(splits.test)[target], float)
        elapsed = time.perf_counter() - started
    except Exception as exc:  # noqa: BLE001 - one model failing must not lose the others' results
        return {**row, "status": "failed", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    rmse, mae, n = _errors(predicted, test_true)
    row.update({
        "status": "ok", f"test_rmse_{unit}": rmse, f"test_mae_{unit}": mae, "n_test": n,
        "n_not_predicted": int((~np.isfinite(predicted) & np.isfinite(test_true)).sum()),
        "inference_structures_per_s": round(len(splits.test) / elapsed, 1) if elapsed > 0 else None,
        "reason": "",
    })
    return row


def plot_comparison(rows: list[dict[str, Any]], unit: str, path: Path, reference_label: str, title: str,
                    reference_rmse: dict[str, float] | None = None, reference_mae: dict[str, float] | None = None) -> Path:
    """Seed 001 Fig. 10a style: RMSE bars per model (ours solid, the reference hatched beside it), MAE
    in a second panel, the training-mean baseline as a dashed line in both. Models that only the
    reference has (DeeperGATGNN) get a place too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = {"rmse": dict(reference_rmse or {}), "mae": dict(reference_mae or {})}
    baseline = next((r for r in rows if r["model"] == BASELINE_NAME), None)
    by_name = {r["model"]: r for r in rows if r["model"] != BASELINE_NAME}
    names = list(by_name) + [m for m in reference["rmse"] if m not in by_name]
    x = np.arange(len(names))
    width = 0.38
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.5 * len(names) + 3), 4.4), constrained_layout=True)
    for ax, metric in zip(axes, ("rmse", "mae")):
        ours_key = f"test_{metric}_{unit}"
        ours = [_finite(by_name.get(n, {}).get(ours_key)) for n in names]
        published = [_finite(reference[metric].get(n)) for n in names]
        baseline_value = _finite(baseline.get(ours_key)) if baseline is not None else float("nan")
        shown = [v for v in ours + published + [baseline_value] if np.isfinite(v)]
        # An untrained or diverged model must not flatten every other bar: clip at 2.5x the baseline.
        top = max(shown, default=1.0) * 1.15
        if np.isfinite(baseline_value) and top > 2.5 * baseline_value:
            top = 2.5 * baseline_value
        bars = ax.bar(x - width / 2, np.nan_to_num(np.minimum(ours, top)), width, color="#3b75af", label="this run")
        has_reference = np.isfinite(published)
        ax.bar(x[has_reference] + width / 2, np.asarray(published)[has_reference], width, color="#bbbbbb", hatch="//",
               edgecolor="#555555", label=reference_label)
        for position, value in zip(x[has_reference], np.asarray(published)[has_reference]):
            ax.text(position + width / 2, value, f"{value:.2f}", ha="center", va="bottom", fontsize=7, color="#555555")
        for bar, value, name in zip(bars, ours, names):
            finite = np.isfinite(value)
            text = (f"{value:.3f}" + (" (clipped)" if value > top else "")) if finite else \
                by_name.get(name, {}).get("status", "reference only")
            ax.text(bar.get_x() + bar.get_width() / 2, min(value, top) if finite else 0.0, text,
                    ha="center", va="top" if finite and value > top else "bottom", fontsize=7,
                    rotation=0 if finite and value <= top else 90)
        if np.isfinite(baseline_value):
            ax.axhline(baseline_value, color="#c0392b", linestyle="--", linewidth=1,
                       label=f"training mean ({baseline_value:.3f})")
        ax.set_ylim(0, top)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel(f"test {metric.upper()} ({unit.replace('_per_', '/')})")
        ax.set_title(f"({'a' if metric == 'rmse' else 'b'}) {metric.upper()}")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def _finite(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return value if np.isfinite(value) else float("nan")
