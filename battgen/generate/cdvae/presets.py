"""Named CDVAE hyper-parameter sets.

* ``paper``: the seed's model (seed 000 §3: latent 256, hidden 256, cutoff 7 Å, 20 neighbours,
  σ 10 -> 0.01 Å, costs coord 10 / type 1 / lattice 10, lr 1e-3 -> 1e-4, 5000 epochs) = the defaults.
* ``cpu-benchmark``: learns perov-5 on 1-2 CPU threads (OMP_NUM_THREADS) in ~15-20 min (smaller network, batch 64,
  shorter patience so the learning rate actually decays within the budget, a 15-min wall-time stop).
* ``tiny``: unit tests (a few seconds per fit).
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

PAPER_HYPERPARAMETERS: dict[str, Any] = {
    # architecture
    "latent_dim": 256,
    "hidden_dim": 256,
    "encoder_blocks": 4,  # DimeNet++ interaction blocks (CDVAE: num_blocks 4)
    "decoder_layers": 4,  # equivariant message-passing layers
    "num_radial": 6,
    "num_spherical": 7,
    "cutoff_A": 7.0,
    "max_neighbors": 20,
    "fc_num_layers": 1,
    "max_atoms": 44,  # the TMO set keeps cells of < 45 atoms; raised automatically to the data's maximum
    "sigma_begin_A": 10.0,
    "sigma_end_A": 0.01,
    "num_noise_levels": 50,
    "type_sigma_begin": 5.0,
    "type_sigma_end": 0.01,
    # losses (CDVAE defaults, seed's coord / type / lattice weights)
    "cost_natom": 1.0,
    "cost_coord": 10.0,
    "cost_type": 1.0,
    "cost_lattice": 10.0,
    "cost_composition": 1.0,
    "cost_property": 1.0,
    "cost_prior": 1.0,  # conditional prior NLL (Con-CDVAE)
    "beta": 0.01,  # KL weight
    # optimisation (CDVAE: Adam 1e-3, ReduceLROnPlateau factor 0.6, patience 30, min 1e-4; gradients
    # clipped element-wise at 0.5, conf/train/default.yaml gradient_clip_algorithm: value)
    "lr": 1e-3,
    "min_lr": 1e-4,
    "lr_factor": 0.6,
    "lr_patience": 30,
    "gradient_clip_value": 0.5,
    "batch_size": 256,
    "max_epochs": 5000,
    "max_steps": None,
    "max_wall_time_s": None,
    "checkpoint_every_steps": 1000,
    "num_threads": None,  # torch threads; None keeps torch's setting (OMP_NUM_THREADS)
    "num_workers": 0,  # DataLoader workers collating batches ahead of the optimiser (battgen.generate.precision)
    "autocast": None,  # opt-in mixed precision of the training forward pass: bfloat16 | float16 (CUDA only)
    "progress": True,
    # conditioning (Con-CDVAE; seed 004): keys of battgen.generate.conditions.SCALAR_CONDITIONS and/or
    # "element_presence"; property heads for latent-space optimisation
    "conditions": [],
    "property_targets": [],
    "working_ion": "Li",
    "reveal_present_probability": 0.5,
    "reveal_absent_probability": 0.05,
    # p(z | c): "gaussian" (one Gaussian, trained jointly) or "diffusion" (Con-CDVAE's second-stage DDPM over z,
    # its linear schedule 1000 steps, beta 1e-4 -> 0.02; trained after the VAE for prior_epochs at prior_lr)
    "latent_prior": "gaussian",
    "prior_diffusion_steps": 1000,
    "prior_beta_start": 1e-4,
    "prior_beta_end": 0.02,
    "prior_epochs": 200,
    "prior_lr": 1e-3,
    # sampling (CDVAE's annealed Langevin defaults)
    "n_step_each": 100,
    "step_lr": 1e-4,
}

PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu-benchmark": {
        "latent_dim": 128,
        "hidden_dim": 128,
        "encoder_blocks": 3,
        "decoder_layers": 3,
        "max_atoms": 20,
        "batch_size": 64,
        "lr_patience": 5,
        "max_epochs": 1000,
        "max_wall_time_s": 900,
        "checkpoint_every_steps": 200,
    },
    "tiny": {
        "latent_dim": 8,
        "hidden_dim": 16,
        "encoder_blocks": 2,
        "decoder_layers": 2,
        "num_radial": 4,
        "num_spherical": 3,
        "cutoff_A": 5.0,
        "max_neighbors": 12,
        "max_atoms": 8,
        "num_noise_levels": 10,
        "lr": 3e-3,  # a few dozen steps must visibly fit
        "batch_size": 8,
        "max_epochs": 20,
        "checkpoint_every_steps": 10,
        "progress": False,
        "n_step_each": 2,
        "prior_diffusion_steps": 50,  # beta up to 0.2: the 50-step schedule still ends in noise
        "prior_beta_end": 0.2,
        "prior_epochs": 30,
    },
}


def preset_names() -> list[str]:
    return sorted(PRESET_OVERRIDES)


def preset_hyperparameters(name: str, **overrides: Any) -> dict[str, Any]:
    """The full hyper-parameter set of preset ``name`` with ``overrides`` on top (unknown keys raise)."""
    if name not in PRESET_OVERRIDES:
        raise ValueError(f"unknown CDVAE preset {name!r}; known: {preset_names()}")
    values = deepcopy(PAPER_HYPERPARAMETERS)
    for key, value in {**PRESET_OVERRIDES[name], **overrides}.items():
        if key not in values:
            raise ValueError(f"unknown CDVAE hyper-parameter {key!r}; known: {sorted(values)}")
        values[key] = value
    return values
