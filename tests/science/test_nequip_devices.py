"""NequIP training and inference on the chosen device (issue 13 item 1), without training anything:
the device becomes Lightning's accelerator and the AOTInductor compile target, the manifest records it,
and a model compiled for one device kind is refused on another with the way out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from battgen.errors import InvalidInputError
from battgen.mlip import nequip_training
from battgen.mlip.nequip_training import (
    ARCHITECTURE,
    COMPILED_MODEL_FILENAME,
    DEFAULT_HYPERPARAMETERS,
    build_nequip_config,
    lightning_accelerator,
    load_nequip,
    run_train_potential_command,
)
from battgen.models import write_manifest


@pytest.mark.parametrize("device, expected", [("cpu", {"accelerator": "cpu"}),
                                              ("cuda", {"accelerator": "gpu", "devices": [0]}),
                                              ("cuda:3", {"accelerator": "gpu", "devices": [3]})])
def test_the_device_is_lightnings_accelerator(device, expected):
    assert lightning_accelerator(device) == expected
    config = build_nequip_config(DEFAULT_HYPERPARAMETERS, Path("f.extxyz"), ["Li"], 9, 1, Path("ckpt"), Path("logs"),
                                 device=device)
    assert {key: config["trainer"][key] for key in expected} == expected
    assert ("devices" in config["trainer"]) == device.startswith("cuda")


def test_compile_targets_the_training_device(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(nequip_training, "_nequip_script", lambda name: name)
    monkeypatch.setattr(nequip_training, "_run_logged", lambda command, *a, **k: commands.append(command) or 1.0)
    nequip_training.compile_nequip_model(tmp_path / "best.ckpt", tmp_path / COMPILED_MODEL_FILENAME, device="cuda:1")
    nequip_training.compile_nequip_model(tmp_path / "best.ckpt", tmp_path / COMPILED_MODEL_FILENAME)
    devices = [command[command.index("--device") + 1] for command in commands]
    assert devices == ["cuda", "cpu"]


def _compiled_model_dir(path: Path, compiled_for: str | None) -> Path:
    path.mkdir()
    (path / COMPILED_MODEL_FILENAME).write_bytes(b"not a real model")
    training = {"compiled_model": COMPILED_MODEL_FILENAME}
    if compiled_for is not None:
        training["compiled_for_device"] = compiled_for
    write_manifest(path, "potential", ARCHITECTURE, dict(DEFAULT_HYPERPARAMETERS), training, {})
    return path


def test_a_model_compiled_for_cuda_is_refused_on_the_cpu_with_the_way_out(tmp_path):
    model = _compiled_model_dir(tmp_path / "model", "cuda")
    with pytest.raises(ValueError, match="compiled for cuda, not for cpu: recompile"):
        load_nequip(model, device="cpu")
    # older manifests (no record) were compiled for the CPU: refused on CUDA before the library loads
    older = _compiled_model_dir(tmp_path / "older", None)
    with pytest.raises(ValueError, match="compiled for cpu, not for cuda"):
        load_nequip(older, device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_potential_with_device_cuda_without_cuda_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInputError, match="CUDA is not available"):
        run_train_potential_command({"frames": ["frames.extxyz"], "device": "cuda"}, tmp_path)
    assert not (tmp_path / "model").exists()
