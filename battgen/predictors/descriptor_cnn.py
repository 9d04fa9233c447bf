"""The descriptor baselines of seed 001 (§2.2.2, §3.2): a 1-D CNN on Magpie (132-d) or XRD features.

Architecture (seed §3.2 and the authors' Keras script, ``descriptor/python_magpie.py`` /
``python_xrd.py`` in their repository): the feature vector is read as a 1-channel signal;
``n_conv_layers`` x [Conv1d(``conv_filters``, ``kernel_size``, padding "same") -> ReLU ->
AvgPool1d(``pool_size``) -> Dropout] -> flatten -> [Linear(units) -> ReLU -> Dropout] for each entry of
``dense_units`` -> Linear(one output per target). Loss MSE, optimiser Adam.

What the seed states and what is chosen here:

* Magpie: 1 conv layer, one dense layer of 512 (seed); XRD: 2 conv layers, dense 512/512/32 (seed).
* Dropout "from 0.5 to 0.3" after every conv and dense layer (seed): one ``dropout`` for all, 0.3.
* Filters, kernel size and learning rate were tuned (Keras-Tuner Bayesian search over filters 32-256,
  kernel 3-9, lr in {1e-1, 1e-2, 1e-3, 1e-4}) and the winners are not published: defaults are the
  authors' search defaults (64 filters, kernel 5) and Adam's usual lr 1e-3; pool size 2 is Keras'
  ``AveragePooling1D`` default; batch size 32 is Keras' ``fit`` default. Use
  :mod:`battgen.predictors.search` to tune them on the validation split.
* The authors trained on raw features and targets; here features are standardised (Magpie per feature,
  NaN imputed with the training mean; XRD with one mean and scale for the whole pattern) and targets
  standardised, all fitted on the training split and saved with the model, because Adam on unscaled
  Magpie features (values up to ~10^3) trains poorly.
* Early stopping on the validation RMSE (the authors: patience 250 of 1000 epochs; here
  ``patience_epochs`` 30 of ``max_epochs`` 300, plus an optional wall-time limit); the best-validation
  weights are the model.

A model directory holds ``descriptor_cnn.pt`` (weights + scalers as tensors) and
``descriptor_cnn.json`` (descriptor, network shape, targets); ``checkpoints/last.pt`` holds the optimiser
and RNG state for ``resume_from``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from battgen.batch import StructureBatch
from battgen.devices import training_record
from battgen.models import CHECKPOINT_DIRNAME
from battgen.predictors.base import Predictor, regression_metrics
from battgen.predictors.descriptors import XRDGrid, featurize, magpie_feature_labels
from battgen.progress import track

WEIGHTS_FILENAME = "descriptor_cnn.pt"
CONFIG_FILENAME = "descriptor_cnn.json"
CHECKPOINT_FILENAME = "last.pt"
_PREDICT_CHUNK = 1024
_NETWORK_KEYS = ("n_conv_layers", "conv_filters", "kernel_size", "pool_size", "dense_units", "dropout")


class DescriptorCNN(nn.Module):
    """1-D CNN regressor over a fixed-length descriptor (see module docstring)."""

    def __init__(self, n_inputs: int, n_outputs: int, n_conv_layers: int, conv_filters: int, kernel_size: int,
                 pool_size: int, dense_units: list[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, length = 1, n_inputs
        for _ in range(int(n_conv_layers)):
            if length < pool_size:
                raise ValueError(f"{n_conv_layers} pooling layers of size {pool_size} leave nothing of {n_inputs} inputs")
            layers += [nn.Conv1d(channels, int(conv_filters), int(kernel_size), padding="same"), nn.ReLU(),
                       nn.AvgPool1d(int(pool_size)), nn.Dropout(float(dropout))]
            channels, length = int(conv_filters), length // int(pool_size)
        layers.append(nn.Flatten())
        width = channels * length
        for units in dense_units:
            layers += [nn.Linear(width, int(units)), nn.ReLU(), nn.Dropout(float(dropout))]
            width = int(units)
        layers.append(nn.Linear(width, n_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features.unsqueeze(1))


class FeatureScaler:
    """Standardisation fitted on training rows: NaN -> training mean (0 after scaling); a constant
    feature keeps scale 1 so it maps to 0 instead of dividing by zero.

    ``per_feature=False`` uses one mean and one scale for every position (XRD): the bins of a pattern
    share a unit, the convolution shares weights across positions, and per-bin scaling would blow a
    peak in a bin that is almost always empty in training up to z-scores of hundreds."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean, self.std = np.asarray(mean, float), np.asarray(std, float)

    @classmethod
    def fit(cls, values: np.ndarray, per_feature: bool = True) -> FeatureScaler:
        if not per_feature:
            finite = values[np.isfinite(values)]
            mean = float(finite.mean()) if finite.size else 0.0
            std = float(finite.std()) if finite.size and finite.std() > 1e-12 else 1.0
            return cls(np.full(values.shape[1], mean), np.full(values.shape[1], std))
        mean = np.nanmean(values, axis=0) if np.isfinite(values).any() else np.zeros(values.shape[1])
        mean = np.where(np.isfinite(mean), mean, 0.0)  # a feature NaN for every training row
        std = np.nanstd(values, axis=0)
        std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
        return cls(mean, std)

    def transform(self, values: np.ndarray) -> np.ndarray:
        scaled = (values - self.mean) / self.std
        return np.where(np.isfinite(scaled), scaled, 0.0)


class DescriptorCNNPredictor(Predictor):
    """Shared implementation; :class:`MagpieCNNPredictor` and :class:`XRDCNNPredictor` pick the descriptor."""

    descriptor: str = ""
    per_feature_scaling: bool = True

    # --- hyper-parameters -----------------------------------------------------------------------
    @classmethod
    def default_hyperparameters(cls) -> dict[str, Any]:
        return {
            "n_conv_layers": 1,
            "conv_filters": 64,
            "kernel_size": 5,
            "pool_size": 2,
            "dense_units": [512],
            "dropout": 0.3,
            "lr": 1e-3,
            "weight_decay": 0.0,
            "batch_size": 32,
            "max_epochs": 300,
            "patience_epochs": 30,
            "max_train_minutes": None,  # wall-time limit of one fit (None: epochs and patience decide)
            "checkpoint_every_epochs": 10,
        }

    # --- loading --------------------------------------------------------------------------------
    def __init__(self, model: str | Path, device: str = "cpu", **options: Any) -> None:
        super().__init__(model, device=device, **options)
        self.config = json.loads((self.model_dir / CONFIG_FILENAME).read_text(encoding="utf-8"))
        state = torch.load(self.model_dir / WEIGHTS_FILENAME, map_location="cpu", weights_only=True)
        self.network = _build_network(self.config)
        self.network.load_state_dict(state["state_dict"])
        self.network.to(self.device).eval()
        self.feature_scaler = FeatureScaler(state["feature_mean"].numpy(), state["feature_std"].numpy())
        self.target_mean = state["target_mean"].numpy()
        self.target_std = state["target_std"].numpy()

    @property
    def targets(self) -> list[str]:
        return list(self.config["targets"])

    def predict(self, batch: StructureBatch) -> dict[str, np.ndarray]:
        features = _features(self.descriptor, batch.structures, self.config.get("xrd_grid"))
        device = next(self.network.parameters()).device  # where the network lives
        predicted = _predict_scaled(self.network, self.feature_scaler.transform(features), device)
        predicted = predicted * self.target_std + self.target_mean
        predicted[~np.isfinite(features).any(axis=1)] = np.nan  # featurisation failed: not predicted
        return {target: predicted[:, i] for i, target in enumerate(self.targets)}

    # --- training -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, splits: Any, targets: list[str], model_dir: Path, hyperparameters: dict[str, Any],
            seed: int = 0, resume_from: Path | None = None, device: str = "cpu") -> dict[str, Any]:
        started = time.perf_counter()
        hp = {**cls.default_hyperparameters(), **hyperparameters}
        model_dir = Path(model_dir)
        checkpoint_dir = model_dir / CHECKPOINT_DIRNAME
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        xrd_grid = hp.get("xrd_grid")

        train_x, train_y, n_skipped_train = _labelled_features(cls.descriptor, splits.train, targets, xrd_grid)
        val_x, val_y, n_skipped_val = _labelled_features(cls.descriptor, splits.val, targets, xrd_grid)
        if len(train_x) == 0:
            raise ValueError(f"no training row carries every target {targets} and a computable {cls.descriptor} descriptor")
        if len(val_x) == 0:  # early stopping needs something held out; say so rather than stop blind
            val_x, val_y, validation_source = train_x, train_y, "train (validation split has no usable rows)"
        else:
            validation_source = "val"

        torch.manual_seed(seed)
        config = {
            "descriptor": cls.descriptor,
            "targets": list(targets),
            "n_inputs": int(train_x.shape[1]),
            "network": {key: hp[key] for key in _NETWORK_KEYS},
            "xrd_grid": xrd_grid,
            "feature_labels": magpie_feature_labels() if cls.descriptor == "magpie" else None,
        }
        network = _build_network(config).to(device)
        optimiser = torch.optim.Adam(network.parameters(), lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"]))
        shuffle = torch.Generator(device="cpu").manual_seed(seed)  # the batch order is drawn on the CPU
        scaler = FeatureScaler.fit(train_x, per_feature=cls.per_feature_scaling)
        target_mean, target_std = train_y.mean(axis=0), train_y.std(axis=0)
        target_std = np.where(target_std > 1e-12, target_std, 1.0)
        progress = {"epoch": 0, "best_epoch": 0, "best_val_rmse": math.inf, "epochs_since_best": 0}
        best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        resumed_from_epoch = None

        if resume_from is not None and (Path(resume_from) / CHECKPOINT_DIRNAME / CHECKPOINT_FILENAME).is_file():
            checkpoint = torch.load(Path(resume_from) / CHECKPOINT_DIRNAME / CHECKPOINT_FILENAME,
                                    map_location="cpu", weights_only=True)
            if checkpoint["config"] != json.dumps(config, sort_keys=True):
                raise ValueError(f"{resume_from}: checkpoint was trained with another network, descriptor or targets")
            network.load_state_dict(checkpoint["state_dict"])
            optimiser.load_state_dict(checkpoint["optimiser"])
            shuffle.set_state(checkpoint["shuffle_rng"])
            torch.set_rng_state(checkpoint["dropout_rng"])  # dropout masks continue as if never interrupted
            best_state = checkpoint["best_state_dict"]
            progress = {k: checkpoint["progress"][k] for k in progress}
            # The scalers the checkpoint was trained with, not a refit: the weights depend on them.
            scaler = FeatureScaler(checkpoint["feature_mean"].numpy(), checkpoint["feature_std"].numpy())
            target_mean, target_std = checkpoint["target_mean"].numpy(), checkpoint["target_std"].numpy()
            resumed_from_epoch = progress["epoch"]

        # the (small) descriptor matrices live on the model's device for the whole fit
        scaled_train_x = torch.as_tensor(scaler.transform(train_x), dtype=torch.float32, device=device)
        scaled_train_y = torch.as_tensor((train_y - target_mean) / target_std, dtype=torch.float32, device=device)
        scaled_val_x = scaler.transform(val_x)
        batch_size = int(hp["batch_size"])
        time_limit_s = None if hp["max_train_minutes"] is None else 60.0 * float(hp["max_train_minutes"])
        loss_function = nn.MSELoss()
        train_losses: list[float] = []

        def save_checkpoint() -> None:
            torch.save({
                "config": json.dumps(config, sort_keys=True),
                "state_dict": network.state_dict(), "best_state_dict": best_state,
                "optimiser": optimiser.state_dict(), "shuffle_rng": shuffle.get_state(),
                "dropout_rng": torch.get_rng_state(), "progress": dict(progress),
                **_scaler_tensors(scaler, target_mean, target_std),
            }, checkpoint_dir / CHECKPOINT_FILENAME)

        stopped_because = "max_epochs"
        epochs = track(range(progress["epoch"], int(hp["max_epochs"])), total=int(hp["max_epochs"]),
                       initial=progress["epoch"], desc=f"{cls.name} epochs", unit="epoch", leave=False)
        for epoch in epochs:
            network.train()
            order = torch.randperm(len(scaled_train_x), generator=shuffle, device="cpu").to(device)
            epoch_loss, n_seen = 0.0, 0
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                optimiser.zero_grad()
                loss = loss_function(network(scaled_train_x[index]), scaled_train_y[index])
                loss.backward()
                optimiser.step()
                epoch_loss += loss.item() * len(index)
                n_seen += len(index)
            train_losses.append(epoch_loss / n_seen)
            val_predicted = _predict_scaled(network, scaled_val_x, device) * target_std + target_mean
            val_rmse = float(np.sqrt(np.mean((val_predicted - val_y) ** 2)))  # over all targets, in their units
            progress["epoch"] = epoch + 1
            if val_rmse < progress["best_val_rmse"]:
                progress.update(best_val_rmse=val_rmse, best_epoch=epoch + 1, epochs_since_best=0)
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            else:
                progress["epochs_since_best"] += 1
            epochs.set_postfix(train_loss=f"{train_losses[-1]:.4f}", val_rmse=f"{val_rmse:.4f}")
            if (epoch + 1) % int(hp["checkpoint_every_epochs"]) == 0:
                save_checkpoint()
            if progress["epochs_since_best"] >= int(hp["patience_epochs"]):
                stopped_because = "early_stopping"
                break
            if time_limit_s is not None and time.perf_counter() - started > time_limit_s:
                stopped_because = "time_limit"
                break
        epochs.close()
        save_checkpoint()

        network.load_state_dict(best_state)
        network.eval()
        torch.save({"state_dict": network.state_dict(), **_scaler_tensors(scaler, target_mean, target_std)},
                   model_dir / WEIGHTS_FILENAME)
        (model_dir / CONFIG_FILENAME).write_text(json.dumps(config, indent=1), encoding="utf-8")

        metrics = _test_metrics(cls.descriptor, network, scaler, target_mean, target_std, splits.test, targets, xrd_grid)
        training = {
            "descriptor": cls.descriptor,
            "n_features": int(train_x.shape[1]),
            "n_parameters": int(sum(p.numel() for p in network.parameters())),
            "n_train_used": int(len(train_x)),
            "n_val_used": int(len(val_x)) if validation_source == "val" else 0,
            "n_train_skipped": n_skipped_train,
            "n_val_skipped": n_skipped_val,
            "validation_on": validation_source,
            "epochs": progress["epoch"],
            "best_epoch": progress["best_epoch"],
            "best_val_rmse": progress["best_val_rmse"],
            "stopped_because": stopped_because,
            "resumed_from_epoch": resumed_from_epoch,
            "first_train_loss_scaled": train_losses[0] if train_losses else None,
            "last_train_loss_scaled": train_losses[-1] if train_losses else None,
            "wall_time_s": round(time.perf_counter() - started, 3),
            **training_record(str(device)),
        }
        return {"training": training, "metrics": metrics}


class MagpieCNNPredictor(DescriptorCNNPredictor):
    """Seed 001's Magpie CNN: 132 composition features, one conv layer, one dense layer of 512."""

    name = "magpie-cnn"
    architecture = "magpie-cnn"
    descriptor = "magpie"


class XRDCNNPredictor(DescriptorCNNPredictor):
    """Seed 001's XRD CNN: binned Cu Kα pattern, two conv layers, dense 512/512/32."""

    name = "xrd-cnn"
    architecture = "xrd-cnn"
    descriptor = "xrd"
    per_feature_scaling = False  # see FeatureScaler

    @classmethod
    def default_hyperparameters(cls) -> dict[str, Any]:
        defaults = super().default_hyperparameters()
        defaults.update(n_conv_layers=2, dense_units=[512, 512, 32], xrd_grid=_grid_config(XRDGrid()))
        return defaults


# --- helpers ------------------------------------------------------------------------------------
def _grid_config(grid: XRDGrid) -> dict[str, Any]:
    return {key: getattr(grid, key) for key in grid.__dataclass_fields__}


def _features(descriptor: str, structures: list, xrd_grid: dict[str, Any] | None) -> np.ndarray:
    grid = XRDGrid.from_config(xrd_grid) if descriptor == "xrd" else None
    return featurize(structures, descriptor, grid)


def _labelled_features(descriptor: str, batch: StructureBatch, targets: list[str],
                       xrd_grid: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Features and targets of the rows with every target known and a computable descriptor."""
    values = np.array([[_as_float(meta.get(t)) for t in targets] for meta in batch.meta], dtype=float).reshape(len(batch), len(targets))
    features = _features(descriptor, batch.structures, xrd_grid) if len(batch) else np.zeros((0, 0))
    usable = np.isfinite(values).all(axis=1)
    if len(batch):
        usable &= np.isfinite(features).any(axis=1)
    return features[usable], values[usable], int((~usable).sum())


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _build_network(config: dict[str, Any]) -> DescriptorCNN:
    return DescriptorCNN(int(config["n_inputs"]), len(config["targets"]), **config["network"])


def _scaler_tensors(scaler: FeatureScaler, target_mean: np.ndarray, target_std: np.ndarray) -> dict[str, torch.Tensor]:
    return {  # saved beside the weights: on the CPU, whatever device trained them
        "feature_mean": torch.as_tensor(scaler.mean, device="cpu"), "feature_std": torch.as_tensor(scaler.std, device="cpu"),
        "target_mean": torch.as_tensor(np.asarray(target_mean, float), device="cpu"),
        "target_std": torch.as_tensor(np.asarray(target_std, float), device="cpu"),
    }


@torch.no_grad()
def _predict_scaled(network: nn.Module, scaled_features: np.ndarray, device: str) -> np.ndarray:
    network.eval()
    outputs = [
        network(torch.as_tensor(scaled_features[start:start + _PREDICT_CHUNK], dtype=torch.float32, device=device)).cpu().numpy()
        for start in range(0, len(scaled_features), _PREDICT_CHUNK)
    ]
    n_outputs = network.layers[-1].out_features
    return np.concatenate(outputs).astype(float) if outputs else np.zeros((0, n_outputs))


def _test_metrics(descriptor: str, network: nn.Module, scaler: FeatureScaler, target_mean: np.ndarray,
                  target_std: np.ndarray, test: StructureBatch, targets: list[str],
                  xrd_grid: dict[str, Any] | None) -> dict[str, Any]:
    train_means = {t: float(m) for t, m in zip(targets, target_mean)}
    metrics: dict[str, Any] = {"n_test": len(test)}
    if not len(test):
        return metrics
    features = _features(descriptor, test.structures, xrd_grid)
    device = next(network.parameters()).device
    predicted = _predict_scaled(network, scaler.transform(features), device) * target_std + target_mean
    predicted[~np.isfinite(features).any(axis=1)] = np.nan
    for i, target in enumerate(targets):
        true = np.array([_as_float(meta.get(target)) for meta in test.meta])
        metrics.update(regression_metrics(predicted[:, i], true, train_means[target], target))
    return metrics
