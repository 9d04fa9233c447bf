"""Opt-in autocast and data-loader workers of generator training (issue 13 item 1), on a CPU.

bfloat16 autocast runs on a CPU, so the same code path a GPU takes is exercised here: the forward pass
really runs in bfloat16 (a hook sees it), every tensor still names its device, the weights stay float32,
and the manifest says so. Workers must not change what is learnt: the same seed gives the same weights
with 0 or 1 workers. float16 is refused without CUDA.
"""

from __future__ import annotations

import pytest
import torch
from test_cdvae import tiny_hyperparameters, training_structures
from test_crystal_llm import small_cells
from test_generator_devices import ImplicitDeviceFactories

from battgen.generate.cdvae.train import MODEL_FILENAME, train_cdvae
from battgen.generate.precision import precision_label, validate_autocast


def _cdvae(path, **overrides):
    batch = training_structures()
    return train_cdvae(batch, batch, path, tiny_hyperparameters(progress=False, max_steps=3, **overrides), seed=0)


def _weights(path):
    return torch.load(path / MODEL_FILENAME, map_location="cpu", weights_only=True)["state_dict"]


def test_cdvae_bfloat16_autocast_runs_the_forward_pass_in_bfloat16_and_keeps_float32_weights(tmp_path, monkeypatch):
    from battgen.generate.cdvae import model as cdvae_model

    seen: set = set()
    original = cdvae_model.CDVAE.losses

    def recording_losses(self, *args, **kwargs):
        handles = [m.register_forward_hook(lambda m, i, o: seen.add(o.dtype)) for m in self.modules()
                   if isinstance(m, torch.nn.Linear)]
        try:
            return original(self, *args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()

    monkeypatch.setattr(cdvae_model.CDVAE, "losses", recording_losses)
    with ImplicitDeviceFactories() as guard:
        result = _cdvae(tmp_path / "bf16", autocast="bfloat16")
    assert not guard.calls, dict(guard.calls)
    assert torch.bfloat16 in seen  # the training forward pass ran under autocast
    assert result["training"]["precision"] == "float32+autocast-bfloat16"
    assert all(value.dtype != torch.bfloat16 for value in _weights(tmp_path / "bf16").values())
    assert all(torch.isfinite(torch.tensor(v)) for k, v in result["metrics"].items() if k.startswith("train_"))
    seen.clear()
    assert _cdvae(tmp_path / "fp32")["training"]["precision"] == "float32"
    assert torch.bfloat16 not in seen  # off by default


def test_cdvae_workers_do_not_change_the_weights(tmp_path):
    _cdvae(tmp_path / "w0", num_workers=0)
    result = _cdvae(tmp_path / "w1", num_workers=1)
    assert result["training"]["num_workers"] == 1
    first, second = _weights(tmp_path / "w0"), _weights(tmp_path / "w1")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def _llm(path, **settings):
    from battgen.generate.dataset import prepare_training_data
    from battgen.generate.llm import CrystalLLMGenerator
    from battgen.generate.llm.presets import preset_hyperparameters

    hyperparameters = preset_hyperparameters("tiny")
    hyperparameters["pretrain"].update(max_steps=3, batch_size=2)
    hyperparameters["lora"].update(max_steps=2, batch_size=2)
    hyperparameters.update(settings)
    splits = prepare_training_data(small_cells(), {"preset": "none"}, (0.7, 0.15, 0.15), 0)
    return CrystalLLMGenerator.train(splits, path, hyperparameters)


def test_crystal_llm_workers_give_the_same_model_and_bfloat16_autocast_trains(tmp_path):
    plain = _llm(tmp_path / "w0")
    with ImplicitDeviceFactories() as guard:
        workers = _llm(tmp_path / "w1", num_workers=1)
    assert not guard.calls, dict(guard.calls)
    assert workers["training"]["num_workers"] == 1
    assert workers["metrics"]["val_loss_per_token"] == pytest.approx(plain["metrics"]["val_loss_per_token"], rel=1e-6)
    bf16 = _llm(tmp_path / "bf16", autocast="bfloat16")
    assert bf16["training"]["precision"] == "float32+autocast-bfloat16"
    assert bf16["metrics"]["val_loss_per_token"] == pytest.approx(plain["metrics"]["val_loss_per_token"], rel=0.05)


def test_float16_needs_cuda_and_unknown_values_are_refused(tmp_path):
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        validate_autocast("float16", "cpu")
    with pytest.raises(ValueError, match="autocast must be"):
        validate_autocast("int8", "cuda")
    assert validate_autocast("float16", "cuda:1") == "float16" and validate_autocast(None, "cpu") is None
    assert precision_label("float16") == "float32+autocast-float16"
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        _cdvae(tmp_path / "fp16", autocast="float16")
    assert not (tmp_path / "fp16" / MODEL_FILENAME).exists()
