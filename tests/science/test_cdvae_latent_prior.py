"""Con-CDVAE as published (issue 13 item 5): the property head reads the unconditioned z, and the second-stage
diffusion prior p(z | c) beside the single Gaussian one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_cdvae import tiny_hyperparameters, train_model_dir, training_structures

from battgen.batch import StructureBatch
from battgen.generate.cdvae import CDVAEGenerator
from battgen.generate.cdvae.data import MAX_ATOMIC_NUMBER, collate
from battgen.generate.cdvae.model import CDVAE, ConditionalPrior, LatentDiffusionPrior
from battgen.generate.cdvae.train import featurize_batch, loss_weights, model_config, training_condition

CONDITIONS = ["gravimetric_capacity_mAh_per_g", "element_presence"]


def _no_presence(n: int):
    return torch.zeros(n, MAX_ATOMIC_NUMBER), torch.zeros(n, MAX_ATOMIC_NUMBER)


def _fit(prior, z0, scalars, steps=1500, lr=3e-3, seed=0):
    """Fit a prior to latents ``z0`` under scalar conditions ``scalars`` (no element presence)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(prior.parameters(), lr=lr)
    present, absent = _no_presence(len(z0))
    for _ in range(steps):
        if isinstance(prior, LatentDiffusionPrior):
            loss = prior.loss(z0, scalars, present, absent, generator)
        else:
            loss = prior.negative_log_likelihood(z0, scalars, present, absent)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return prior


def _two_modes(n=256, seed=0):
    """Latents in two modes (first coordinate -2 or +2) under one and the same condition."""
    rng = np.random.default_rng(seed)
    centres = np.where(rng.random(n) < 0.5, -2.0, 2.0)
    z = np.stack([centres + 0.15 * rng.normal(size=n), 0.15 * rng.normal(size=n)], axis=1)
    return torch.tensor(z, dtype=torch.float32), torch.zeros(n, 1)


def test_diffusion_prior_keeps_two_modes_under_one_condition_where_the_gaussian_fills_the_gap():
    torch.manual_seed(0)
    z0, scalars = _two_modes()
    diffusion = _fit(LatentDiffusionPrior(1, False, 32, 2, n_steps=100, beta_start=1e-4, beta_end=0.1), z0, scalars)
    gaussian = _fit(ConditionalPrior(1, False, 32, 2), z0, scalars, steps=600, lr=1e-2)
    n = 400
    present, absent = _no_presence(n)
    generator = torch.Generator().manual_seed(1)
    sampled = diffusion.sample(n, torch.zeros(n, 1), present, absent, generator)[:, 0].numpy()
    with torch.no_grad():
        mu, logvar = gaussian(torch.zeros(n, 1), present, absent)
    gaussian_sampled = (mu + torch.randn(mu.shape, generator=generator) * torch.exp(0.5 * logvar))[:, 0].numpy()

    def in_gap(values):
        return float(np.mean(np.abs(values) < 1.0))  # between the modes, where no training latent lies

    assert in_gap(z0[:, 0].numpy()) == 0.0
    assert 0.3 < float(np.mean(sampled > 0)) < 0.7  # both modes kept
    assert in_gap(sampled) < 0.15
    assert in_gap(gaussian_sampled) > 0.25  # one Gaussian over both modes puts its mass in the gap


def test_diffusion_prior_follows_its_condition():
    torch.manual_seed(0)
    n = 256
    scalars = torch.where(torch.rand(n, 1) < 0.5, -1.0, 1.0)
    z0 = torch.cat([2.0 * scalars + 0.1 * torch.randn(n, 1), 0.1 * torch.randn(n, 1)], dim=1)
    prior = _fit(LatentDiffusionPrior(1, False, 32, 2, n_steps=100, beta_start=1e-4, beta_end=0.1), z0, scalars)
    present, absent = _no_presence(200)
    for condition, expected in ((-1.0, -2.0), (1.0, 2.0)):
        sampled = prior.sample(200, torch.full((200, 1), condition), present, absent, torch.Generator().manual_seed(2))
        assert float(sampled[:, 0].median()) == pytest.approx(expected, abs=0.4)


def test_property_head_reads_the_unconditioned_latent():
    """Con-CDVAE's property predictor sees z: no gradient of the property loss reaches the condition
    embedding (with the conditioned latent the head could copy the condition instead of reading z)."""
    torch.manual_seed(0)
    hyperparameters = tiny_hyperparameters(conditions=["gravimetric_capacity_mAh_per_g"],
                                           property_targets=["gravimetric_capacity_mAh_per_g"])
    records, _ = featurize_batch(training_structures(), hyperparameters)
    config = model_config(hyperparameters, records)
    assert config["property_head_input"] == "z"
    model = CDVAE(config)
    batch = collate(records)
    condition = training_condition(model, batch, 0.5, 0.05)
    weights = {key: 0.0 for key in loss_weights(hyperparameters)} | {"cost_property": 1.0}
    model.losses(batch, condition, weights)["loss"].backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in model.condition_embedding.parameters())
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in model.encoder.parameters())
    # a model saved before the setting existed keeps reading the conditioned latent
    legacy = dict(config)
    legacy.pop("property_head_input")
    assert CDVAE(legacy).property_head_input == "conditioned"


@pytest.fixture(scope="module")
def diffusion_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("cdvae-diffusion-prior") / "model"
    result = train_model_dir(path, training_structures(), max_steps=20, conditions=CONDITIONS,
                             property_targets=["gravimetric_capacity_mAh_per_g"], latent_prior="diffusion")
    return path, result


def test_training_fits_the_diffusion_prior_after_the_vae_and_sampling_uses_it(diffusion_model):
    path, result = diffusion_model
    report = result["training"]["latent_prior"]
    assert report["kind"] == "diffusion" and report["trained"] and report["epochs"] == 30
    assert report["n_latents"] == 8
    assert report["final_epoch_loss"] < report["first_epoch_loss"]
    generator = CDVAEGenerator(path, progress=False)
    assert bool(generator.model.latent_prior.trained)
    settings = {"gravimetric_capacity_mAh_per_g": 400.0, "n_step_each": 1, "n_atoms": 3}
    first = generator.generate(StructureBatch(), 3, settings, seed=5)
    again = generator.generate(StructureBatch(), 3, settings, seed=5)
    assert [s.frac_coords.tolist() for s in first.structures] == [s.frac_coords.tolist() for s in again.structures]
    # the latents come from the diffusion prior, not from the Gaussian one
    parsed = generator._parse_conditions(settings)
    condition = generator._condition_tensors(parsed, 4)
    with torch.no_grad():
        diffused = generator.model.sample_latent(4, condition, torch.Generator().manual_seed(0))
        mu, _ = generator.model.prior(condition["scalars"], condition["present"], condition["absent"])
    assert diffused.shape == mu.shape and not torch.allclose(diffused, mu, atol=1e-3)


def test_a_wall_time_stop_still_fits_the_prior_and_an_untrained_prior_is_refused(tmp_path):
    result = train_model_dir(tmp_path / "model", training_structures(), max_steps=5, max_wall_time_s=0,
                             conditions=CONDITIONS, latent_prior="diffusion", prior_epochs=2)
    assert result["training"]["stopped_because"] == "max_wall_time_s"
    assert result["training"]["latent_prior"]["trained"] and result["training"]["latent_prior"]["epochs"] == 2
    # a model whose second stage never ran (a SIGTERM during training) does not sample from noise silently
    hyperparameters = tiny_hyperparameters(conditions=CONDITIONS, latent_prior="diffusion")
    model = CDVAE(model_config(hyperparameters, featurize_batch(training_structures(), hyperparameters)[0]))
    present, absent = _no_presence(1)
    condition = {"scalars": torch.zeros(1, 1), "present": present, "absent": absent}
    with pytest.raises(ValueError, match="diffusion prior of this model was not trained"):
        model.sample_latent(1, condition, torch.Generator().manual_seed(0))


def test_bad_diffusion_prior_settings_are_refused():
    hosts = training_structures()
    short = tiny_hyperparameters(conditions=CONDITIONS, latent_prior="diffusion", prior_diffusion_steps=10,
                                 prior_beta_end=0.02)
    records, _ = featurize_batch(hosts, short)
    with pytest.raises(ValueError, match="not noise"):
        model_config(short, records)
    unconditional = tiny_hyperparameters(latent_prior="diffusion")
    with pytest.raises(ValueError, match="needs conditions"):
        CDVAE(model_config(unconditional, featurize_batch(hosts, unconditional)[0]))
    with pytest.raises(ValueError, match="latent_prior must be one of"):
        CDVAE(model_config(tiny_hyperparameters(latent_prior="flow"), records))
