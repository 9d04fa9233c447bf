"""The predictor interface: every property model (ALIGNN, matgl M3GNet/MEGNet, descriptor CNNs, the
working-ion voltage CGCNN ...) is a :class:`Predictor` registered under the entry-point group
``battgen.predictors``.

Targets are metadata keys that carry their unit (``formation_energy_per_atom_eV``, ``band_gap_eV``,
``average_voltage_V`` ...). A predictor writes its values back into a batch as ``predicted_<target>``
(and ``predicted_<target>_std`` when the model has an uncertainty), plus ``predicted_by`` (the model's
content sha256), so a screened row says which model judged it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np

from battgen.batch import StructureBatch
from battgen.contracts.predict import PREDICTED_PREFIX
from battgen.models import read_manifest

ENTRY_POINT_GROUP = "battgen.predictors"
ENTRY_POINT_PREFIX = "battgen."


class UnknownPredictorError(KeyError):
    """No predictor is registered under the requested name."""

    def __str__(self) -> str:
        return str(self.args[0])


class Predictor(ABC):
    """A trained property model loaded from a model directory (:mod:`battgen.models`).

    Subclasses set ``name`` (short entry-point name) and ``architecture`` (the manifest's), and implement
    :meth:`default_hyperparameters`, :meth:`fit` and :meth:`predict`.
    """

    name: str = ""
    architecture: str = ""

    def __init__(self, model: str | Path, device: str = "cpu", **options: Any) -> None:
        from battgen.devices import resolve_device  # lazy: resolving imports torch

        self.model_dir = Path(model)
        self.device = resolve_device(device)  # auto | cpu | cuda | cuda:N -> a concrete torch device
        self.options = options
        self.manifest = read_manifest(self.model_dir, architecture=self.architecture)

    @property
    def targets(self) -> list[str]:
        return list(self.manifest["training"].get("targets", []))

    @property
    def model_sha256(self) -> str:
        return self.manifest["content_sha256"]

    @classmethod
    @abstractmethod
    def default_hyperparameters(cls) -> dict[str, Any]:
        """Every hyper-parameter with its default (the paper's values where the paper gives one)."""

    @classmethod
    @abstractmethod
    def fit(
        cls,
        splits: Any,  # battgen.generate.dataset.DatasetSplits
        targets: list[str],
        model_dir: Path,
        hyperparameters: dict[str, Any],
        seed: int = 0,
        resume_from: Path | None = None,
        device: str = "cpu",
    ) -> dict[str, Any]:
        """Train on ``splits.train`` (early stopping / selection on ``splits.val``), save into ``model_dir``
        (checkpoints into ``model_dir / "checkpoints"``), evaluate on ``splits.test``.

        ``device`` is a resolved torch device (:func:`battgen.devices.resolve_device`): the network, every
        batch and the targets live there; the returned ``training`` record carries
        :func:`battgen.devices.training_record` (device, its name, precision). Saved weights load anywhere.

        Rows whose target value is missing are skipped (and counted). Returns ``{"training": {...},
        "metrics": {...}}``; metrics hold per target ``test_mae_<target>``, ``test_rmse_<target>``,
        ``baseline_mae_<target>`` (predicting the training mean) and ``n_test``.
        """

    @abstractmethod
    def predict(self, batch: StructureBatch) -> dict[str, np.ndarray]:
        """``{target: values}`` (and ``{target}_std`` where the model has an uncertainty), one value per
        row in batch order; NaN where the model cannot predict a row (reported, never silently dropped)."""

    def annotate(self, batch: StructureBatch) -> StructureBatch:
        """A copy of ``batch`` with ``predicted_<target>`` columns and ``predicted_by``."""
        values = self.predict(batch)
        columns = {
            PREDICTED_PREFIX + key: [None if not np.isfinite(v) else float(v) for v in array]
            for key, array in values.items()
        }
        columns["predicted_by"] = [f"{self.architecture}:{self.model_sha256[:12]}"] * len(batch)
        return batch.with_columns(**columns)


def registered_predictors() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def predictor_class(name: str) -> type[Predictor]:
    registered = registered_predictors()
    full_name = name if name.startswith(ENTRY_POINT_PREFIX) else ENTRY_POINT_PREFIX + name
    if full_name not in registered:
        known = ", ".join(sorted(registered)) or "none"
        raise UnknownPredictorError(f"no predictor {name!r} in entry-point group {ENTRY_POINT_GROUP}; registered: {known}")
    return registered[full_name].load()


def load_predictor(name: str, model: str | Path, **kwargs: Any) -> Predictor:
    """A trained predictor by entry-point name (``battgen.alignn``) or short name (``alignn``)."""
    return predictor_class(name)(model, **kwargs)


def regression_metrics(predicted: np.ndarray, true: np.ndarray, train_mean: float, target: str) -> dict[str, float]:
    """MAE / RMSE of a prediction and of the training-mean baseline (NaN predictions excluded)."""
    predicted, true = np.asarray(predicted, float), np.asarray(true, float)
    mask = np.isfinite(predicted) & np.isfinite(true)
    error = predicted[mask] - true[mask]
    baseline = train_mean - true[mask]
    return {
        f"test_mae_{target}": float(np.mean(np.abs(error))) if mask.any() else float("nan"),
        f"test_rmse_{target}": float(np.sqrt(np.mean(error**2))) if mask.any() else float("nan"),
        f"baseline_mae_{target}": float(np.mean(np.abs(baseline))) if mask.any() else float("nan"),
        f"n_test_{target}": int(mask.sum()),
    }
