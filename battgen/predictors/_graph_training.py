"""Training and inference loop shared by the graph-network predictors (ALIGNN, matgl M3GNet / MEGNet).

The networks differ only in how a structure becomes a graph, how graphs are collated into a batch and
how a batch goes through the network; everything else is one loop here:

* targets are standardised with the training mean / standard deviation (one column per target, missing
  values masked out of the loss, so rows need not carry every target);
* Adam or AdamW, with a one-cycle (ALIGNN's default) or cosine (matgl's default) learning-rate schedule;
* early stopping on the validation MAE (in standard deviations, averaged over targets), keeping the best
  weights;
* ``checkpoints/last.pt`` (weights, best weights, optimiser, scheduler, RNG state) every epoch, so a run
  can resume where it stopped;
* before saving, the standardisation is folded into the last linear layer
  (:func:`fold_standardisation_into_linear`), so a saved network outputs physical units directly, like a
  published model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from battgen.batch import StructureBatch
from battgen.models import CHECKPOINT_DIRNAME
from battgen.predictors.base import regression_metrics
from battgen.progress import track

CHECKPOINT_FILENAME = "last.pt"


class ResumeError(ValueError):
    """A checkpoint cannot be resumed with the given hyper-parameters or targets."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def target_matrix(batch: StructureBatch, targets: Sequence[str]) -> np.ndarray:
    """``(n_rows, n_targets)`` float array of the target metadata; NaN where a row lacks a value."""
    values = np.full((len(batch), len(targets)), np.nan)
    for i, meta in enumerate(batch.meta):
        for j, target in enumerate(targets):
            value = meta.get(target)
            if value is not None:
                try:
                    values[i, j] = float(value)
                except (TypeError, ValueError):
                    pass
    values[~np.isfinite(values)] = np.nan
    return values


@dataclass
class TargetScaler:
    """Training mean and standard deviation per target (std 1 where the data has no spread)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_training(cls, values: np.ndarray) -> TargetScaler:
        counts = np.isfinite(values).sum(axis=0)
        mean = np.array([np.nanmean(col) if n else 0.0 for col, n in zip(values.T, counts)])
        std = np.array([np.nanstd(col) if n > 1 else 1.0 for col, n in zip(values.T, counts)])
        std[~np.isfinite(std) | (std < 1e-8)] = 1.0
        return cls(mean, std)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.std

    def as_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


def fold_standardisation_into_linear(linear: torch.nn.Linear, mean: np.ndarray, std: np.ndarray) -> None:
    """Make ``linear`` output ``std * y + mean`` (physical units) instead of the standardised ``y``."""
    with torch.no_grad():
        where = {"dtype": linear.weight.dtype, "device": linear.weight.device}
        std_t = torch.as_tensor(std, **where).reshape(-1)
        mean_t = torch.as_tensor(mean, **where).reshape(-1)
        linear.weight.mul_(std_t[:, None])
        if linear.bias is None:
            raise ValueError("cannot fold a target mean into a linear layer without bias")
        linear.bias.mul_(std_t).add_(mean_t)


def to_device(value: Any, device: str | torch.device) -> Any:
    """A collated batch (tensor, graph object with ``.to``, or tuples / lists / dicts of them) on ``device``."""
    if isinstance(value, tuple | list):
        return type(value)(to_device(item, device) for item in value)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if callable(getattr(value, "to", None)):
        return value.to(device)
    return value


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s parameters live (the CPU for a module without parameters)."""
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def last_linear(module: torch.nn.Module) -> torch.nn.Linear:
    """The last ``nn.Linear`` registered in ``module`` (the output projection of an MLP head)."""
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"{type(module).__name__} has no linear layer")
    return linears[-1]


def featurise(
    structures: Sequence[Any], to_graph: Callable[[Any], Any], desc: str
) -> tuple[list[Any | None], dict[int, str]]:
    """Graphs for each structure; ``None`` and the reason where conversion fails (never dropped silently)."""
    graphs: list[Any | None] = []
    errors: dict[int, str] = {}
    for index, structure in enumerate(tqdm(structures, desc=desc, leave=False, disable=len(structures) < 50)):
        try:
            graphs.append(to_graph(structure))
        except Exception as exc:  # noqa: BLE001 - any failure of one structure must not stop the batch
            graphs.append(None)
            errors[index] = f"{type(exc).__name__}: {exc}"
    return graphs, errors


def _optimizer(parameters, hp: dict[str, Any]) -> torch.optim.Optimizer:
    name = str(hp["optimizer"]).lower()
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=hp["learning_rate"], weight_decay=hp["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(parameters, lr=hp["learning_rate"], weight_decay=hp["weight_decay"], eps=1e-8)
    raise ValueError(f"optimizer must be 'adamw' or 'adam', got {hp['optimizer']!r}")


def _scheduler(optimizer: torch.optim.Optimizer, hp: dict[str, Any], steps_per_epoch: int):
    name = str(hp["scheduler"]).lower()
    total_steps = max(1, int(hp["epochs"]) * steps_per_epoch)
    if name == "onecycle":  # ALIGNN's default (alignn/train.py: pct_start=0.3)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=hp["learning_rate"], total_steps=total_steps, pct_start=0.3
        )
    if name == "cosine":  # matgl's default (ModelLightningModule: eta_min = lr * decay_alpha)
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total_steps, eta_min=hp["learning_rate"] * hp.get("decay_alpha", 0.01)
        )
    if name == "none":
        return None
    raise ValueError(f"scheduler must be 'onecycle', 'cosine' or 'none', got {hp['scheduler']!r}")


def _fingerprint(hp: dict[str, Any], targets: Sequence[str]) -> str:
    """What must not change between a checkpoint and the run resuming it."""
    return hashlib.sha256(json.dumps({"hp": hp, "targets": list(targets)}, sort_keys=True, default=str).encode()).hexdigest()


def _masked_mse(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mask = torch.isfinite(target)
    return ((predicted - torch.nan_to_num(target)) ** 2 * mask).sum() / mask.sum().clamp_min(1)


def run_batches(
    network: torch.nn.Module,
    graphs: Sequence[Any],
    collate: Callable[[list[Any]], Any],
    forward: Callable[[torch.nn.Module, Any, int], torch.Tensor],
    batch_size: int,
    desc: str = "predicting",
) -> np.ndarray:
    """``(len(graphs), n_outputs)`` network outputs, batched, in input order, without gradients; each
    collated batch goes to the network's device, the outputs come back to the CPU."""
    network.eval()
    device = module_device(network)
    outputs = []
    starts = range(0, len(graphs), max(1, int(batch_size)))
    with torch.no_grad():
        for start in tqdm(starts, desc=desc, leave=False, disable=len(starts) < 5):
            chunk = list(graphs[start:start + batch_size])
            batch = to_device(collate(chunk), device)
            outputs.append(forward(network, batch, len(chunk)).detach().cpu().numpy())
    return np.concatenate(outputs, axis=0) if outputs else np.zeros((0, 0))


def train_network(
    network: torch.nn.Module,
    train_graphs: Sequence[Any],
    train_targets: np.ndarray,
    val_graphs: Sequence[Any],
    val_targets: np.ndarray,
    collate: Callable[[list[Any]], Any],
    forward: Callable[[torch.nn.Module, Any, int], torch.Tensor],
    hp: dict[str, Any],
    targets: Sequence[str],
    model_dir: Path,
    seed: int,
    resume_from: Path | None = None,
    desc: str = "training",
    device: str = "cpu",
) -> dict[str, Any]:
    """Train ``network`` on standardised targets on ``device`` (a resolved torch device: the network, every
    collated batch and the targets go there); leaves the best-validation weights loaded.

    ``train_targets`` / ``val_targets`` are already standardised (NaN = missing). ``hp`` needs
    ``epochs``, ``batch_size``, ``learning_rate``, ``weight_decay``, ``optimizer``, ``scheduler``,
    ``early_stopping_patience`` (None: never stop early). Returns a JSON-safe training record.
    """
    seed_everything(seed)
    network.to(device)
    epochs, batch_size = int(hp["epochs"]), int(hp["batch_size"])
    patience = hp.get("early_stopping_patience")
    steps_per_epoch = max(1, math.ceil(len(train_graphs) / batch_size))
    optimizer = _optimizer(network.parameters(), hp)
    scheduler = _scheduler(optimizer, hp, steps_per_epoch)
    generator = torch.Generator(device="cpu").manual_seed(seed)  # the batch order is drawn on the CPU
    fingerprint = _fingerprint(hp, targets)
    checkpoint_dir = Path(model_dir) / CHECKPOINT_DIRNAME
    checkpoint_dir.mkdir(parents=True, exist_ok=True)

    start_epoch, best_val, best_epoch, bad_epochs = 0, math.inf, -1, 0
    best_state = copy.deepcopy(network.state_dict())
    history: list[dict[str, float]] = []
    resumed_from_epoch = None
    if resume_from is not None:
        checkpoint_path = Path(resume_from) / CHECKPOINT_DIRNAME / CHECKPOINT_FILENAME
        if not checkpoint_path.is_file():
            raise ResumeError(f"no checkpoint {CHECKPOINT_FILENAME} in {checkpoint_path.parent}")
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if checkpoint["fingerprint"] != fingerprint:
            raise ResumeError(
                f"{checkpoint_path} was written with other hyper-parameters or targets; resume needs the same ones"
            )
        network.load_state_dict(checkpoint["network"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None and checkpoint["scheduler"] is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        best_state, best_val = checkpoint["best_state"], checkpoint["best_val"]
        best_epoch, bad_epochs, history = checkpoint["best_epoch"], checkpoint["bad_epochs"], checkpoint["history"]
        start_epoch = resumed_from_epoch = checkpoint["epoch"] + 1

    train_y = torch.as_tensor(train_targets, dtype=torch.float32, device=device)
    started = time.perf_counter()
    stopped_early = False
    epoch_bar = track(range(start_epoch, epochs), total=epochs, initial=start_epoch, desc=desc, unit="epoch",
                      leave=False)
    for epoch in epoch_bar:
        network.train()
        order = torch.randperm(len(train_graphs), generator=generator, device="cpu").tolist()
        losses = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = to_device(collate([train_graphs[i] for i in rows]), device)
            predicted = forward(network, batch, len(rows))
            loss = _masked_mse(predicted, train_y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(float(loss.detach()))
        val_predicted = run_batches(network, val_graphs, collate, forward, batch_size, desc="validating")
        val_error = np.abs(val_predicted - val_targets)
        val_mae = float(np.nanmean(np.nanmean(val_error, axis=0))) if val_error.size else float(np.mean(losses))
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_mae_standardised": val_mae})
        epoch_bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_mae=f"{val_mae:.3f}")
        if val_mae < best_val:
            best_val, best_epoch, bad_epochs = val_mae, epoch, 0
            best_state = copy.deepcopy(network.state_dict())
        else:
            bad_epochs += 1
        torch.save(
            {
                "fingerprint": fingerprint, "epoch": epoch, "network": network.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                "best_state": best_state, "best_val": best_val, "best_epoch": best_epoch,
                "bad_epochs": bad_epochs, "history": history,
            },
            checkpoint_dir / CHECKPOINT_FILENAME,
        )
        if patience is not None and bad_epochs >= int(patience):
            stopped_early = True
            break
    network.load_state_dict(best_state)
    network.eval()
    return {
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "best_val_mae_standardised": best_val if math.isfinite(best_val) else None,
        "stopped_early": stopped_early,
        "resumed_from_epoch": resumed_from_epoch,
        "train_seconds": round(time.perf_counter() - started, 3),
        "n_parameters": int(sum(p.numel() for p in network.parameters())),
        "steps_per_epoch": steps_per_epoch,
        "final_train_loss_standardised": history[-1]["train_loss"] if history else None,
    }


def labelled_graphs(
    batch: StructureBatch, targets: Sequence[str], to_graph: Callable[[Any], Any], desc: str
) -> tuple[list[Any], np.ndarray, dict[str, int]]:
    """Graphs and raw target rows of ``batch`` for training; rows with no target or no graph are counted."""
    values = target_matrix(batch, targets)
    has_any = np.isfinite(values).any(axis=1)
    structures = [structure for _, structure in batch]
    graphs, errors = featurise(structures, to_graph, desc)
    keep = [i for i in range(len(batch)) if has_any[i] and graphs[i] is not None]
    counts = {"n_without_target": int((~has_any).sum()), "n_graph_failed": len(errors)}
    return [graphs[i] for i in keep], values[keep], counts


def held_out_metrics(predicted: np.ndarray, true: np.ndarray, train_mean: np.ndarray, targets: Sequence[str]) -> dict[str, Any]:
    """Per-target test MAE / RMSE and the training-mean baseline (``regression_metrics``), plus ``n_test``."""
    metrics: dict[str, Any] = {"n_test": int(len(true))}
    for j, target in enumerate(targets):
        metrics.update(regression_metrics(predicted[:, j], true[:, j], float(train_mean[j]), target))
        finite = np.isfinite(predicted[:, j]) & np.isfinite(true[:, j])
        baseline_error = float(train_mean[j]) - true[finite, j]
        metrics[f"baseline_rmse_{target}"] = float(np.sqrt(np.mean(baseline_error**2))) if finite.any() else float("nan")
    return metrics
