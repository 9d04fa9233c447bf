"""Training loop for CDVAE: Adam + ReduceLROnPlateau (CDVAE's scheduler), budgets, checkpoints, resume.

* Every structure is featurised once (Niggli cell, encoder graph, triplets) and cached in memory.
* Deterministic for a seed: batch order of epoch e comes from ``numpy.random.default_rng([seed, e])``,
  noise from the torch generator whose state is checkpointed, validation under a fixed forked seed.
  Training N steps in one go or in two runs joined by ``resume_from`` gives the same weights.
* Checkpoints (``checkpoints/last.pt``: model, optimizer, scheduler, scalers, step, epoch, position in the
  epoch, RNG states) every ``checkpoint_every_steps`` and whenever training stops; stops on
  ``max_steps``, ``max_epochs``, ``max_wall_time_s`` or SIGTERM (a SLURM walltime kill), and says which.
* Conditional rows: a row missing a value of one of the model's scalar conditions is dropped from
  training (counted in ``n_dropped_missing_condition``); imputing a mean would teach the prior that
  the mean condition produces arbitrary structures. Property-head targets may be missing (masked).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from battgen.batch import StructureBatch
from battgen.checkpoint import SigtermGuard
from battgen.devices import device_rng_state, generator_on, set_device_rng_state, training_record
from battgen.generate.cdvae.data import (
    ELEMENT_PRESENCE,
    MAX_ATOMIC_NUMBER,
    CrystalBatch,
    CrystalRecord,
    Scaler,
    collate,
    condition_scalar_keys,
    featurize_structure,
    lattice_features,
    records_to_arrays,
)
from battgen.generate.cdvae.model import CDVAE
from battgen.generate.precision import (
    StepScaler,
    autocast_context,
    precision_label,
    prefetched,
    validate_autocast,
    validate_num_workers,
)
from battgen.generate.conditions import SCALAR_CONDITIONS, condition_columns
from battgen.models import CHECKPOINT_DIRNAME
from battgen.progress import Bar

MODEL_FILENAME = "cdvae.pt"
NORMALIZATION_FILENAME = "normalization.json"
CHECKPOINT_FILENAME = "last.pt"
ARCHITECTURE_KEYS = (
    "latent_dim", "hidden_dim", "encoder_blocks", "decoder_layers", "num_radial", "num_spherical", "cutoff_A",
    "max_neighbors", "fc_num_layers", "max_atoms", "sigma_begin_A", "sigma_end_A", "num_noise_levels",
    "type_sigma_begin", "type_sigma_end", "latent_prior", "prior_diffusion_steps", "prior_beta_start",
    "prior_beta_end",
)
# the diffusion prior's schedule must end in (nearly) pure noise: sampling starts from N(0, I)
MAX_FINAL_SIGNAL = 0.02  # largest allowed alpha-bar at the last step
LOSS_WEIGHT_KEYS = ("cost_natom", "cost_coord", "cost_type", "cost_lattice", "cost_composition",
                    "cost_property", "cost_prior", "beta")
ALLOWED_CONDITIONS = (*SCALAR_CONDITIONS, ELEMENT_PRESENCE)


def validate_condition_keys(conditions: list[str], what: str = "conditions") -> None:
    unknown = [key for key in conditions if key not in ALLOWED_CONDITIONS]
    if unknown:
        raise ValueError(f"hyper-parameter {what}: unknown key(s) {unknown}; allowed: {list(ALLOWED_CONDITIONS)}")


def featurize_batch(
    batch: StructureBatch, hyperparameters: dict[str, Any], desc: str = "featurising"
) -> tuple[list[CrystalRecord], dict[str, int]]:
    """Cached records for every usable row, and counts of rows dropped (missing condition values)."""
    conditions = list(hyperparameters.get("conditions") or [])
    properties = list(hyperparameters.get("property_targets") or [])
    validate_condition_keys(conditions)
    validate_condition_keys(properties, "property_targets")
    if ELEMENT_PRESENCE in properties:
        raise ValueError(f"property_targets: {ELEMENT_PRESENCE!r} is not a scalar property")
    scalar_keys = condition_scalar_keys(conditions)
    working_ion = str(hyperparameters.get("working_ion", "Li"))
    columns = condition_columns(batch, sorted(set(scalar_keys) | set(properties)), working_ion)
    records, dropped = [], 0
    for index, (_, structure) in enumerate(tqdm(list(batch), desc=desc, leave=False)):
        condition_values = [columns[key][index] for key in scalar_keys]
        if any(value is None for value in condition_values):
            dropped += 1
            continue
        record = featurize_structure(structure, float(hyperparameters["cutoff_A"]), int(hyperparameters["max_neighbors"]))
        record.conditions = torch.tensor(condition_values, dtype=torch.float64, device="cpu")  # the cache's
        record.properties = torch.tensor(
            [math.nan if columns[key][index] is None else columns[key][index] for key in properties],
            dtype=torch.float64, device="cpu")
        records.append(record)
    return records, {"n_rows": len(batch), "n_used": len(records), "n_dropped_missing_condition": dropped}


def model_config(hyperparameters: dict[str, Any], records: list[CrystalRecord]) -> dict[str, Any]:
    config = {key: hyperparameters[key] for key in ARCHITECTURE_KEYS}
    # the sampler's default element pool: atomic numbers seen in training
    config["element_pool"] = sorted({int(z) for r in records for z in r.atom_types.tolist()})
    # the atom-count head needs a class for the largest training crystal
    config["max_atoms"] = max(int(hyperparameters["max_atoms"]), max(len(r.atom_types) for r in records))
    conditions = list(hyperparameters.get("conditions") or [])
    config["scalar_conditions"] = condition_scalar_keys(conditions)
    config["element_presence"] = ELEMENT_PRESENCE in conditions
    config["property_targets"] = list(hyperparameters.get("property_targets") or [])
    config["working_ion"] = str(hyperparameters.get("working_ion", "Li"))
    config["property_head_input"] = "z"  # Con-CDVAE: the property heads read the unconditioned latent
    if config["latent_prior"] == "diffusion":
        betas = np.linspace(float(config["prior_beta_start"]), float(config["prior_beta_end"]),
                            int(config["prior_diffusion_steps"]))
        final_signal = float(np.prod(1.0 - betas))
        if not 0.0 < betas[0] <= betas[-1] < 1.0 or final_signal > MAX_FINAL_SIGNAL:
            raise ValueError(f"diffusion prior schedule beta {betas[0]:g} -> {betas[-1]:g} over {len(betas)} steps "
                             f"ends at alpha-bar {final_signal:.3g}, not noise (need 0 < beta < 1 and alpha-bar <= "
                             f"{MAX_FINAL_SIGNAL}): raise prior_beta_end or prior_diffusion_steps")
    return config


def fit_scalers(model: CDVAE, records: list[CrystalRecord]) -> None:
    arrays = records_to_arrays(records)
    model.lattice_scaler = Scaler.fit(lattice_features(arrays["lengths_A"], arrays["angles_deg"], arrays["num_atoms"]))
    if model.scalar_condition_keys:
        model.condition_scaler = Scaler.fit(np.stack([r.conditions.numpy() for r in records]))
    if model.property_keys:
        values = np.stack([r.properties.numpy() for r in records])
        mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
        mean, std = np.nan_to_num(mean), np.where(np.nan_to_num(std) > 1e-8, np.nan_to_num(std), 1.0)
        model.property_scaler = Scaler(mean.tolist(), std.tolist())


def scalers_state(model: CDVAE) -> dict[str, Any]:
    return {"lattice": model.lattice_scaler.as_dict(), "property": model.property_scaler.as_dict(),
            "condition": model.condition_scaler.as_dict()}


def load_scalers(model: CDVAE, state: dict[str, Any]) -> None:
    model.lattice_scaler = Scaler(**state["lattice"])
    model.property_scaler = Scaler(**state["property"])
    model.condition_scaler = Scaler(**state["condition"])


def presence_vectors(atom_types: torch.Tensor, crystal_index: torch.Tensor, n_crystals: int) -> torch.Tensor:
    present = torch.zeros(n_crystals, MAX_ATOMIC_NUMBER, device=atom_types.device)
    present[crystal_index, atom_types - 1] = 1.0
    return present


def reveal_presence(is_present: torch.Tensor, reveal_present: float, reveal_absent: float,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Known-present / known-absent vectors: each present element revealed with probability ``reveal_present``,
    each absent one with ``reveal_absent`` (one uniform draw per element)."""
    draw = torch.rand(is_present.shape, generator=generator, device=is_present.device)
    return is_present * (draw < reveal_present).float(), (1 - is_present) * (draw < reveal_absent).float()


def training_condition(model: CDVAE, batch: CrystalBatch, reveal_present: float, reveal_absent: float,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor] | None:
    """Condition inputs for a training batch: standardised scalars; element presence revealed at random
    (each present element with probability ``reveal_present``, each absent one with ``reveal_absent``)."""
    if not model.conditional:
        return None
    n, device = batch.n_crystals, batch.num_atoms.device
    scalars = (model.condition_scaler.transform(batch.conditions) if model.scalar_condition_keys
               else torch.zeros(n, 0, device=device))
    present = absent = torch.zeros(n, MAX_ATOMIC_NUMBER, device=device)
    if model.use_element_presence:
        is_present = presence_vectors(batch.atom_types, batch.crystal_index, n)
        present, absent = reveal_presence(is_present, reveal_present, reveal_absent, generator)
    return {"scalars": scalars, "present": present, "absent": absent}


def loss_weights(hyperparameters: dict[str, Any]) -> dict[str, float]:
    return {key: float(hyperparameters[key]) for key in LOSS_WEIGHT_KEYS}


@torch.no_grad()
def evaluate_losses(model: CDVAE, records: list[CrystalRecord], hyperparameters: dict[str, Any], seed: int
                    ) -> dict[str, float]:
    """Mean loss terms over ``records`` with fixed noise (same seed every epoch, so epochs compare)."""
    if not records:
        return {}
    model.eval()
    totals: dict[str, float] = {}
    batch_size = int(hyperparameters["batch_size"])
    with torch.random.fork_rng():
        torch.manual_seed(seed + 7919)
        generator = generator_on(str(model.device), seed + 7919)
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            batch = collate(chunk).to(model.device)
            condition = training_condition(model, batch, hyperparameters["reveal_present_probability"],
                                           hyperparameters["reveal_absent_probability"], generator)
            terms = model.losses(batch, condition, loss_weights(hyperparameters))
            for key, value in terms.items():
                totals[key] = totals.get(key, 0.0) + float(value) * len(chunk)
    model.train()
    return {key: value / len(records) for key, value in totals.items()}


def save_checkpoint(path: Path, model, optimizer, scheduler, progress: dict[str, Any],
                    grad_scaler: dict[str, Any] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    device = str(model.device)
    state = {
        "config": model.config,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scalers": scalers_state(model),
        "progress": progress,
        "grad_scaler": grad_scaler,  # float16 autocast's loss scale
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "device": device_rng_state(device), "device_kind": model.device.type},
    }
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)  # atomic: a kill during the write leaves the previous checkpoint intact


def load_checkpoint(path: Path) -> dict[str, Any]:
    # CPU first whatever it was saved from; the optimizer state follows the parameters' device on load
    return torch.load(path, map_location="cpu", weights_only=False)  # our own file: holds RNG tuples


def save_model(model_dir: Path, model: CDVAE, hyperparameters: dict[str, Any]) -> None:
    torch.save({"config": model.config, "state_dict": model.state_dict(), "scalers": scalers_state(model)},
               model_dir / MODEL_FILENAME)
    (model_dir / NORMALIZATION_FILENAME).write_text(json.dumps({
        "lattice_features": ["a/N^(1/3)_A", "b/N^(1/3)_A", "c/N^(1/3)_A", "alpha_deg", "beta_deg", "gamma_deg"],
        "scalar_conditions": model.scalar_condition_keys,
        "property_targets": model.property_keys,
        **scalers_state(model),
    }, indent=1), encoding="utf-8")


def build_model(config: dict[str, Any], device: str) -> CDVAE:
    with torch.device(device):  # parameters and buffers are created where the model runs
        return CDVAE(config)


def load_model(model_dir: Path, device: str = "cpu") -> CDVAE:
    """The saved model on ``device``, wherever it was trained (``map_location``)."""
    saved = torch.load(Path(model_dir) / MODEL_FILENAME, map_location=device, weights_only=True)
    model = build_model(saved["config"], device)
    model.load_state_dict(saved["state_dict"])
    load_scalers(model, saved["scalers"])
    model.eval()
    return model


def train_latent_prior(model: CDVAE, records: list[CrystalRecord], hp: dict[str, Any], seed: int) -> dict[str, Any]:
    """Con-CDVAE's second stage: the diffusion prior fitted to the frozen encoder's posterior means of the
    training set (element presence revealed at random each epoch, as in the first stage), for
    ``prior_epochs`` (its own budget: an MLP on one vector per crystal, minutes where the VAE takes hours)."""
    prior, device, batch_size = model.latent_prior, model.device, int(hp["batch_size"])
    model.eval()
    means, scalars, presence = [], [], []
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            batch = collate(records[start:start + batch_size]).to(device)
            means.append(model.encode(batch)[0])
            scalars.append(model.condition_scaler.transform(batch.conditions) if model.scalar_condition_keys
                           else torch.zeros(batch.n_crystals, 0, device=device))
            presence.append(presence_vectors(batch.atom_types, batch.crystal_index, batch.n_crystals))
    z0, scalars_all, is_present = torch.cat(means), torch.cat(scalars), torch.cat(presence)
    use_presence = float(model.use_element_presence)
    generator = generator_on(str(device), seed + 104729)
    optimizer = torch.optim.Adam(prior.parameters(), lr=float(hp["prior_lr"]))
    history: list[float] = []
    prior.train()
    for _ in tqdm(range(int(hp["prior_epochs"])), desc="CDVAE diffusion prior", unit="epoch",
                  disable=not hp.get("progress", True)):
        order = torch.randperm(len(z0), generator=generator, device=device)
        losses = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            present, absent = reveal_presence(is_present[rows], float(hp["reveal_present_probability"]),
                                              float(hp["reveal_absent_probability"]), generator)
            present, absent = use_presence * present, use_presence * absent
            loss = prior.loss(z0[rows], scalars_all[rows], present, absent, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
    prior.trained.fill_(True)
    model.train()
    return {"kind": "diffusion", "trained": True, "epochs": len(history), "n_latents": len(z0),
            "first_epoch_loss": round(history[0], 6) if history else None,
            "final_epoch_loss": round(history[-1], 6) if history else None,
            "loss_units": "mean squared error of the predicted noise (dimensionless)"}


def train_cdvae(
    train_batch: StructureBatch,
    val_batch: StructureBatch,
    model_dir: Path,
    hyperparameters: dict[str, Any],
    seed: int = 0,
    resume_from: Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Fit CDVAE on ``train_batch`` on ``device`` (a resolved torch device, see :mod:`battgen.devices`);
    writes ``cdvae.pt`` + ``normalization.json`` into ``model_dir``.

    Returns ``{"training": {...}, "metrics": {...}}`` (see :meth:`TrainableGenerator.train`)."""
    hp = hyperparameters
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    torch.set_num_threads(max(1, int(hp.get("num_threads") or torch.get_num_threads())))
    validate_autocast(hp.get("autocast"), device)  # float16 without CUDA fails before any work
    validate_num_workers(hp.get("num_workers", 0))

    train_records, train_counts = featurize_batch(train_batch, hp, "featurising train")
    val_records, val_counts = featurize_batch(val_batch, hp, "featurising val")
    if not train_records:
        raise ValueError(f"no training rows left for CDVAE ({train_counts})")
    featurise_seconds = time.monotonic() - started

    checkpoint = None
    if resume_from is not None:
        checkpoint_path = Path(resume_from) / CHECKPOINT_DIRNAME / CHECKPOINT_FILENAME
        if not checkpoint_path.is_file():
            raise ValueError(f"resume_from: no checkpoint at {checkpoint_path}")
        checkpoint = load_checkpoint(checkpoint_path)
    config = checkpoint["config"] if checkpoint else model_config(hp, train_records)
    model = build_model(config, device)
    if checkpoint is None:
        fit_scalers(model, train_records)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(hp["lr"]))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=float(hp["lr_factor"]), patience=int(hp["lr_patience"]), min_lr=float(hp["min_lr"]))
    progress = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "history": []}
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        load_scalers(model, checkpoint["scalers"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        progress = dict(checkpoint["progress"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        np.random.set_state(checkpoint["rng"]["numpy"])
        random.setstate(checkpoint["rng"]["python"])
        if checkpoint["rng"].get("device_kind") == model.device.type:  # same kind of device: exact resume
            set_device_rng_state(device, checkpoint["rng"].get("device"))
    resumed_from_step = progress["step"] if checkpoint is not None else None

    weights = loss_weights(hp)
    autocast = validate_autocast(hp.get("autocast"), device)  # opt-in; see battgen.generate.precision
    num_workers = validate_num_workers(hp.get("num_workers", 0))
    step_scaler = StepScaler(device, autocast)
    if checkpoint is not None:
        step_scaler.load_state_dict(checkpoint.get("grad_scaler"))
    batch_size = int(hp["batch_size"])
    steps_per_epoch = math.ceil(len(train_records) / batch_size)
    max_steps = hp.get("max_steps")
    max_epochs = hp.get("max_epochs")
    max_wall = hp.get("max_wall_time_s")
    every = int(hp["checkpoint_every_steps"])
    checkpoint_path = model_dir / CHECKPOINT_DIRNAME / CHECKPOINT_FILENAME
    recent_losses: list[dict[str, float]] = []
    stopped_because = None
    total_steps = max_steps if max_steps is not None else (max_epochs or 0) * steps_per_epoch or None
    model.train()

    def clip() -> None:
        if hp.get("gradient_clip_value"):  # CDVAE clips each gradient element, not the norm
            torch.nn.utils.clip_grad_value_(model.parameters(), float(hp["gradient_clip_value"]))

    with SigtermGuard() as sigterm, Bar(total=total_steps, initial=progress["step"], desc="CDVAE training",
                                        unit="step", disable=not hp.get("progress", True)) as bar:
        while stopped_because is None:
            if max_epochs is not None and progress["epoch"] >= int(max_epochs):
                stopped_because = "max_epochs"
                break
            order = np.random.default_rng([seed, progress["epoch"]]).permutation(len(train_records))
            numbers = range(progress["batch_in_epoch"], steps_per_epoch)
            cpu_batches = prefetched([order[b * batch_size:(b + 1) * batch_size] for b in numbers],
                                     lambda rows: collate([train_records[i] for i in rows]), num_workers, device)
            for batch_number, cpu_batch in zip(numbers, cpu_batches):
                if max_steps is not None and progress["step"] >= int(max_steps):
                    stopped_because = "max_steps"
                elif max_wall is not None and time.monotonic() - started >= float(max_wall):
                    stopped_because = "max_wall_time_s"
                elif sigterm.received:
                    stopped_because = "sigterm"
                if stopped_because:
                    break
                batch = cpu_batch.to(device)
                condition = training_condition(model, batch, hp["reveal_present_probability"],
                                               hp["reveal_absent_probability"])
                with autocast_context(device, autocast):  # only the forward pass and the loss
                    terms = model.losses(batch, condition, weights)
                optimizer.zero_grad()
                step_scaler.step(terms["loss"], optimizer, clip)
                progress["step"] += 1
                progress["batch_in_epoch"] = batch_number + 1
                recent_losses.append({key: float(value.detach()) for key, value in terms.items()})
                recent_losses = recent_losses[-steps_per_epoch:]
                bar.update(1)
                bar.set_postfix(loss=f"{float(terms['loss'].detach()):.3f}", epoch=progress["epoch"])
                if progress["step"] % every == 0:
                    save_checkpoint(checkpoint_path, model, optimizer, scheduler, progress, step_scaler.state_dict())
            if stopped_because:
                break
            # end of an epoch: validation loss drives the plateau scheduler (CDVAE monitors val_loss)
            val_terms = evaluate_losses(model, val_records, hp, seed)
            monitored = val_terms.get("loss", float(np.mean([t["loss"] for t in recent_losses])))
            scheduler.step(monitored)
            progress["history"].append({"epoch": progress["epoch"], "step": progress["step"],
                                        "val_loss": val_terms.get("loss"),
                                        "lr": optimizer.param_groups[0]["lr"]})
            progress["epoch"] += 1
            progress["batch_in_epoch"] = 0
    save_checkpoint(checkpoint_path, model, optimizer, scheduler, progress, step_scaler.state_dict())
    latent_prior = {"kind": model.latent_prior_kind}
    if model.latent_prior_kind == "diffusion":
        # the VAE's budget is spent (steps, epochs or wall time): fit p(z | c) to its latents; after a SIGTERM
        # (a walltime kill) the job must end now, and a resumed run does this stage
        if stopped_because != "sigterm":
            latent_prior = train_latent_prior(model, train_records, hp, seed)
            save_checkpoint(checkpoint_path, model, optimizer, scheduler, progress, step_scaler.state_dict())
        else:
            latent_prior = {"kind": "diffusion", "trained": False, "stopped_because": stopped_because}
    save_model(model_dir, model, hp)

    val_terms = evaluate_losses(model, val_records, hp, seed)
    train_means = {key: float(np.mean([t[key] for t in recent_losses if key in t]))
                   for key in (recent_losses[-1] if recent_losses else {})}
    elapsed = time.monotonic() - started
    return {
        "training": {
            "steps": progress["step"],
            "epochs": progress["epoch"],
            "resumed_from_step": resumed_from_step,
            "stopped_because": stopped_because,
            "wall_time_s": round(elapsed, 3),
            "featurise_time_s": round(featurise_seconds, 3),
            "final_lr": optimizer.param_groups[0]["lr"],
            "train_rows": train_counts,
            "val_rows": val_counts,
            "max_atoms": model.max_atoms,
            **training_record(device, precision_label(autocast)),
            "num_workers": num_workers,
            "latent_prior": latent_prior,
        },
        "metrics": {
            **{f"train_{key}": round(value, 6) for key, value in train_means.items()},
            **{f"val_{key}": round(value, 6) for key, value in val_terms.items()},
            "loss_units": "dimensionless (standardised targets; coord loss in CDVAE's σ-scaled units)",
        },
    }
