"""Generators on the model's device, proved on a CPU: every tensor battgen makes in training or sampling
names its device, `device: cuda` without CUDA is invalid input, models load across devices, and the
model directory records where it was trained.

How the wrong-device test works: a torch function mode sees every factory call (``torch.zeros``,
``randn``, ``tensor``, ``arange`` ...). A call from battgen's own code without ``device=`` lands on the
default device, the CPU, which is off the model's device as soon as the model is on a GPU (the bug of
CDVAE's sampler: latents, coordinates, noise, conditions and atom counts made on the CPU). The mode fails
the test on any such call. Data preparation names ``device="cpu"`` on purpose (the cache lives there);
the copy to the GPU itself is exercised by ``benchmarks/gpu_check.sh`` on a GPU machine.
"""

from __future__ import annotations

import sys
from collections import Counter
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from test_cdvae import tiny_hyperparameters, training_structures
from test_crystal_llm import small_cells
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

import battgen
from battgen.batch import StructureBatch
from battgen.cli import main as battgen_main
from battgen.devices import resolve_device
from battgen.errors import InvalidInputError
from battgen.generate.cdvae import CDVAEGenerator
from battgen.generate.cdvae.train import train_cdvae
from battgen.models import read_manifest, write_manifest

BATTGEN_ROOT = str(Path(battgen.__file__).parent) + "/"
NO_CUDA = not torch.cuda.is_available()


class ImplicitDeviceFactories(TorchFunctionMode):
    """Counts torch factory calls made from battgen's code without a ``device`` (file:line -> calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _device_constructors() and kwargs.get("device") is None:
            caller = sys._getframe(1)  # the line that called the factory
            filename = caller.f_code.co_filename
            if filename.startswith(BATTGEN_ROOT):
                self.calls[f"battgen/{filename[len(BATTGEN_ROOT):]}:{caller.f_lineno} {func.__name__}"] += 1
        return func(*args, **kwargs)


def test_the_guard_sees_a_factory_call_without_a_device():
    """The guard itself can fail: a battgen helper that makes a tensor without a device is reported."""
    from battgen.generate.cdvae import model as cdvae_model

    with ImplicitDeviceFactories() as guard:
        cdvae_model.geometric_levels(1.0, 0.1, 3)  # builds its tensor on the default device (a buffer)
    assert [key.split(":")[0] for key in guard.calls] == ["battgen/generate/cdvae/model.py"], guard.calls


def _tiny_cdvae(path: Path, **overrides) -> dict:
    batch = training_structures()
    hyperparameters = tiny_hyperparameters(progress=False, **overrides)
    result = train_cdvae(batch, batch, path, hyperparameters, seed=0)
    write_manifest(path, "generator", "cdvae", hyperparameters, result["training"], result["metrics"])
    return result


@pytest.mark.parametrize("latent_prior", ["gaussian", "diffusion"])
def test_cdvae_training_and_sampling_make_every_tensor_on_the_model_device(tmp_path, latent_prior):
    # a conditional model with a property head exercises conditions, presence vectors and the prior
    with ImplicitDeviceFactories() as guard:
        _tiny_cdvae(tmp_path / "model", max_steps=3, conditions=["gravimetric_capacity_mAh_per_g", "element_presence"],
                    property_targets=["gravimetric_capacity_mAh_per_g"], latent_prior=latent_prior, prior_epochs=2)
        generator = CDVAEGenerator(tmp_path / "model", device="cpu", progress=False)
        generator.generate(StructureBatch(), 3, {"n_step_each": 2, "required_elements": ["O"],
                                                 "forbidden_elements": ["Li"]}, seed=0)
        generator.generate(StructureBatch(), 2, {"n_step_each": 1, "n_atoms": 3,
                                                 "latent_optimisation": {"property": "gravimetric_capacity_mAh_per_g",
                                                                         "target": 100.0, "steps": 2}}, seed=1)
        generator.reconstruct(training_structures(), n_step_each=1)
    assert not guard.calls, f"tensors made off the model's device: {dict(guard.calls)}"


def test_crystal_llm_training_and_sampling_make_every_tensor_on_the_model_device(tmp_path):
    from battgen.generate.dataset import prepare_training_data
    from battgen.generate.llm import CrystalLLMGenerator
    from battgen.generate.llm.presets import preset_hyperparameters

    hyperparameters = preset_hyperparameters("tiny")
    hyperparameters["pretrain"].update(max_steps=3, batch_size=2)
    hyperparameters["lora"].update(max_steps=2, batch_size=2)
    splits = prepare_training_data(small_cells(), {"preset": "none"}, (0.7, 0.15, 0.15), 0)
    with ImplicitDeviceFactories() as guard:
        result = CrystalLLMGenerator.train(splits, tmp_path / "model", hyperparameters)  # default: cpu
        write_manifest(tmp_path / "model", "generator", "crystal-llm", hyperparameters, result["training"],
                       result["metrics"])
        generator = CrystalLLMGenerator(tmp_path / "model", device="cpu")
        generator.generate(StructureBatch(), 2, {"batch_size": 2, "max_new_tokens": 8}, seed=0)
    assert not guard.calls, f"tensors made off the model's device: {dict(guard.calls)}"
    assert result["training"]["device"] == "cpu" and result["training"]["precision"] == "float32"


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "", 0])
def test_a_malformed_device_setting_is_invalid_input(value):
    with pytest.raises(InvalidInputError, match="device"):
        resolve_device(value)


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["train-generator", "generate"])
def test_device_cuda_without_cuda_is_one_line_of_invalid_input(tmp_path, capsys, command):
    training_structures().write(tmp_path / "cells.jsonl.gz")
    config = ({"generator": "cdvae", "train": "cells.jsonl.gz", "filter": {"preset": "none"}, "device": "cuda",
               "hyperparameters": {"max_steps": 1}} if command == "train-generator"
              else {"generator": "cdvae", "n": 1, "device": "cuda", "options": {"model": "model"}})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    code = battgen_main([command, "--config", str(tmp_path / "config.yaml"), "--workdir", str(tmp_path)])
    summary = yaml.safe_load((tmp_path / "battgen-summary.yaml").read_text(encoding="utf-8"))
    assert code == 2 and summary["status"] == "invalid_input"
    assert "CUDA is not available" in summary["error"] and "\n" not in summary["error"]
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "model" / "cdvae.pt").exists()  # nothing trained, nothing half-written


def test_a_cpu_trained_model_loads_with_device_auto_and_records_where_it_trained(tmp_path):
    _tiny_cdvae(tmp_path / "model", max_steps=2)
    training = read_manifest(tmp_path / "model")["training"]
    assert (training["device"], training["device_name"], training["precision"]) == ("cpu", "cpu", "float32")
    generator = CDVAEGenerator(tmp_path / "model", device="auto", progress=False)
    assert generator.device == ("cuda" if not NO_CUDA else "cpu")
    assert str(generator.model.device).startswith(generator.device)
    assert len(generator.generate(StructureBatch(), 2, {"n_step_each": 1}, seed=0)) == 2


def test_generate_refuses_a_device_given_twice(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"generator": "cdvae", "n": 1, "device": "cpu", "options": {"model": "model", "device": "auto"}}),
        encoding="utf-8")
    code = battgen_main(["generate", "--config", str(tmp_path / "config.yaml"), "--workdir", str(tmp_path)])
    summary = yaml.safe_load((tmp_path / "battgen-summary.yaml").read_text(encoding="utf-8"))
    assert code == 2 and "device given twice" in summary["error"]


# --- the language model's context (issue 13 item 3) ----------------------------------------------------
def _quick_llm(tmp_path: Path, batch: StructureBatch, **pretrain) -> tuple[dict, Path]:
    from battgen.generate.dataset import prepare_training_data
    from battgen.generate.llm import CrystalLLMGenerator
    from battgen.generate.llm.presets import preset_hyperparameters

    hyperparameters = preset_hyperparameters("tiny")
    hyperparameters["pretrain"].update(max_steps=3, batch_size=2, **pretrain)
    hyperparameters["lora"].update(max_steps=2, batch_size=2)
    splits = prepare_training_data(batch, {"preset": "none"}, (1.0, 0.0, 0.0), 0)
    result = CrystalLLMGenerator.train(splits, tmp_path / "model", hyperparameters)
    write_manifest(tmp_path / "model", "generator", "crystal-llm", hyperparameters, result["training"],
                   result["metrics"])
    return result, tmp_path / "model"


def test_default_context_holds_1024_positions():
    from battgen.generate.llm.presets import preset_hyperparameters
    from battgen.generate.llm.train import default_hyperparameters

    assert default_hyperparameters()["pretrain"]["n_positions"] >= 1024
    assert preset_hyperparameters("cpu-benchmark")["pretrain"]["n_positions"] >= 1024


def test_a_row_longer_than_the_context_is_refused_and_counted_not_cut(tmp_path, monkeypatch):
    from battgen.generate.llm import train as llm_train

    cells = small_cells()
    big = cells.structures[1] * (3, 3, 3)  # 54-atom NaCl: ~17 tokens an atom cannot fit in 256 positions
    batch = StructureBatch.from_structures([*cells.structures, big],
                                           [*cells.meta, {"row_id": "NaCl-333", "band_gap_eV": 5.0}])
    lengths = []
    original = llm_train.collate
    monkeypatch.setattr(llm_train, "collate", lambda encoded, *a: lengths.extend(len(e[0]) for e in encoded)
                        or original(encoded, *a))
    result, model_dir = _quick_llm(tmp_path, batch)
    context = result["training"]["context"]
    assert context["context_positions"] == 256
    assert context["n_rows_refused"] == {"longer_than_context": 1}
    assert 5 < context["tokens_per_atom"] < 40
    assert lengths and max(lengths) <= 256  # every example seen whole, with its end token
    settings = json.loads((model_dir / "crystal-llm.json").read_text(encoding="utf-8"))
    assert settings["longest_answer_tokens"] == context["longest_answer_tokens"] < 256
    with pytest.raises(ValueError, match="every training row is longer than the model's 16 positions"):
        _quick_llm(tmp_path / "small", batch, n_positions=16)


def test_max_new_tokens_is_bounded_by_the_longest_training_answer(tmp_path):
    from battgen.generate.llm import ANSWER_MARGIN, CrystalLLMGenerator

    result, model_dir = _quick_llm(tmp_path, small_cells())
    longest = result["training"]["context"]["longest_answer_tokens"]
    generator = CrystalLLMGenerator(model_dir)
    bound = int(ANSWER_MARGIN * longest) + 2
    generator.generate(StructureBatch(), 1, {"batch_size": 1, "max_attempts": 1}, seed=0)
    assert generator.last_run_stats["max_new_tokens"] == bound < 256
    generator.generate(StructureBatch(), 1, {"batch_size": 1, "max_attempts": 1, "max_new_tokens": 100_000}, seed=0)
    assert generator.last_run_stats["max_new_tokens"] == bound


# --- benchmarks/gpu_check.sh (issue 13 item 2) -------------------------------------------------------------
GPU_CHECK = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def _gpu_check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(GPU_CHECK), *args], capture_output=True, text=True, env=environment,
                          timeout=300)


def test_gpu_check_dry_run_checks_the_recipe_and_commands_and_builds_nothing(shared_data, tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    done = _gpu_check("--dry-run", env={"BATTGEN_SHARED_DATA": str(shared_data), "BATTGEN_WHEELHOUSE": str(wheelhouse)})
    assert done.returncode == 0, done.stderr
    assert "--only-binary=:all: --python-version 3.12 --implementation cp" in done.stdout
    assert "-m pip install -q --no-index --no-deps" in done.stdout  # no network on the GPU machine
    assert f"timeout 480 {sys.executable}" in done.stdout
    assert "dry run ok" in done.stdout and not wheelhouse.exists()


def test_gpu_check_dry_run_fails_on_a_bad_recipe_or_missing_data(shared_data, tmp_path):
    recipe = GPU_CHECK.with_name("gpu_wheelhouse.txt")
    bad = tmp_path / "benchmarks"
    bad.mkdir()
    for name in ("gpu_check.sh", "gpu_check.py"):
        (bad / name).write_text((GPU_CHECK.parent / name).read_text(encoding="utf-8"), encoding="utf-8")
    (bad / "gpu_wheelhouse.txt").write_text(recipe.read_text(encoding="utf-8") + "torch==2.11.0\nmonty==1.0\n",
                                            encoding="utf-8")
    done = subprocess.run(["bash", str(bad / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, "BATTGEN_SHARED_DATA": str(shared_data)},
                          timeout=300)
    assert done.returncode != 0
    assert "torch is already on the GPU machine" in done.stderr and "monty twice" in done.stderr
    missing = _gpu_check("--dry-run", env={"BATTGEN_SHARED_DATA": str(tmp_path / "nowhere")})
    assert missing.returncode == 2 and "missing data file" in missing.stderr
