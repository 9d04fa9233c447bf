"""The crystal language model end to end on a tiny GPT-2 (preset ``tiny``): ``battgen train-generator``
pre-trains it from scratch and LoRA-tunes it on six small cells, ``battgen generate`` samples, and the
screening funnel consumes the batch. One module-scoped training run serves most tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pymatgen.core import Element, Lattice, Structure

from battgen.batch import StructureBatch
from battgen.cli import main as battgen_main
from battgen.generate.llm.presets import PRESETS, preset_hyperparameters
from battgen.generate.training import merge_hyperparameters

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def small_cells() -> StructureBatch:
    """Six two-atom cells with band gaps: short texts a two-layer model memorises in 200 steps."""
    cells = [
        ("LiCl", Structure(Lattice.cubic(3.6), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]), 6.0),
        ("NaCl", Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]), 5.0),
        ("KBr", Structure(Lattice.cubic(4.4), ["K", "Br"], [[0, 0, 0], [0.5, 0.5, 0.5]]), 4.0),
        ("Si", Structure(Lattice.cubic(5.4), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]), 1.1),
        ("LiF", Structure(Lattice.cubic(3.3), ["Li", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]]), 8.0),
        ("MgO", Structure(Lattice.cubic(3.0), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]), 4.5),
    ]
    return StructureBatch.from_structures([c[1] for c in cells], [{"row_id": c[0], "band_gap_eV": c[2]} for c in cells])


def run_cli(command: str, config: dict, workdir: Path) -> dict:
    config_path = workdir / f"{command}.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    code = battgen_main([command, "--config", str(config_path), "--workdir", str(workdir)])
    summary = yaml.safe_load((workdir / "battgen-summary.yaml").read_text(encoding="utf-8"))
    assert code == 0, summary.get("error")
    return summary


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A workdir with ``cells.jsonl.gz`` and ``model/`` trained through ``battgen train-generator``."""
    workdir = tmp_path_factory.mktemp("crystal_llm")
    small_cells().write(workdir / "cells.jsonl.gz")
    run_cli("train-generator", {
        "generator": "llm", "train": "cells.jsonl.gz", "output": "model", "filter": {"preset": "none"},
        "split": {"fractions": [0.7, 0.15, 0.15], "seed": 0}, "seed": 0, "hyperparameters": PRESETS["tiny"],
    }, workdir)
    return workdir


def test_presets_merge_over_the_defaults_and_keep_the_seed_settings():
    seed = preset_hyperparameters("llama-3.1-8b")
    assert seed["base_model"] == "meta-llama/Llama-3.1-8B" and seed["quantize_4bit"] is True
    assert {k: seed["lora"][k] for k in ("r", "alpha", "dropout", "lr", "scheduler", "warmup_steps")} == {
        "r": 8, "alpha": 32, "dropout": 0.05, "lr": 1e-4, "scheduler": "cosine", "warmup_steps": 100}
    assert preset_hyperparameters("cpu-benchmark")["base_model"] is None
    with pytest.raises(ValueError, match="unknown crystal-llm preset"):
        preset_hyperparameters("gpt-5")


def test_training_reduces_the_loss_in_both_stages(trained):
    from battgen.models import read_manifest

    manifest = read_manifest(trained / "model", architecture="crystal-llm")
    stages = manifest["training"]["stages"]
    assert stages["pretrain"]["steps"] == 200 and stages["lora"]["steps"] == 20
    assert manifest["training"]["stopped_because"] == "max_steps"
    assert stages["pretrain"]["final_train_loss"] < 0.5 * stages["pretrain"]["initial_train_loss"]
    assert stages["lora"]["final_train_loss"] < stages["lora"]["initial_train_loss"]
    for name in ("tokenizer/tokenizer.json", "base_model/config.json", "adapter/adapter_config.json",
                 "crystal-llm.json"):
        assert name in manifest["files"]
    # Checkpoints stay beside the model for resuming, outside its content hash.
    assert (trained / "model" / "checkpoints" / "lora-000020" / "adapter").is_dir()
    assert not any(name.startswith("checkpoints/") for name in manifest["files"])


def test_lora_model_trains_only_the_adapter(trained):
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    from battgen.models import read_manifest

    tiny = PRESETS["tiny"]["pretrain"]
    r, n_embd, n_layer = 8, tiny["n_embd"], tiny["n_layer"]
    # c_attn maps n_embd -> 3 n_embd: A is r x n_embd, B is 3 n_embd x r, once per layer.
    expected = n_layer * (r * n_embd + 3 * n_embd * r)
    base = GPT2LMHeadModel.from_pretrained(trained / "model" / "base_model")
    n_base = sum(p.numel() for p in base.parameters())
    model = PeftModel.from_pretrained(base, trained / "model" / "adapter", is_trainable=True)
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert sum(trainable.values()) == expected
    assert sum(p.numel() for p in model.parameters()) == n_base + expected
    assert read_manifest(trained / "model")["metrics"]["lora_trainable_parameters"] == expected


def test_generator_reloads_and_samples_deterministically(trained):
    from battgen.generate.llm import CrystalLLMGenerator
    from battgen.models import read_manifest

    generator = CrystalLLMGenerator(model=trained / "model")
    first = generator.generate(StructureBatch(), 6, {"batch_size": 6}, seed=3)
    stats = dict(generator.last_run_stats)
    second = generator.generate(StructureBatch(), 6, {"batch_size": 6}, seed=3)
    assert [s.composition for s in first.structures] == [s.composition for s in second.structures]
    assert stats["n_sampled"] == stats["n_parsed"] + sum(stats["failures"].values())
    assert stats["n_returned"] == len(first) >= 3  # a memorising model mostly writes parseable cells
    sha = read_manifest(trained / "model")["content_sha256"]
    for index, row in enumerate(first.meta):
        assert row["row_id"] == f"llm-{index:06d}"
        assert (row["generator"], row["parent_row_id"], row["model_sha256"]) == ("llm", None, sha)
        assert row["prompt_task"] == "unconditional"
        assert row["temperature"] == 0.9 and row["top_p"] == 0.95
    with pytest.raises(ValueError, match="unknown llm condition"):
        generator.generate(StructureBatch(), 1, {"temprature": 0.5})


def test_conditional_and_infill_generation(trained):
    from battgen.generate.llm import CrystalLLMGenerator

    generator = CrystalLLMGenerator(model=trained / "model")
    conditional = generator.generate(StructureBatch(), 4, {"band_gap_eV": 5.0, "forbidden_elements": ["Br"],
                                                           "temperature": 0.7, "top_p": 0.9}, seed=0)
    stats = generator.last_run_stats
    assert stats["task"] == "conditional"
    assert stats["n_sampled"] == stats["n_parsed"] + sum(v for k, v in stats["failures"].items()
                                                         if k != "element_conditions_not_met")
    for meta, structure in conditional:
        assert meta["target_band_gap_eV"] == 5.0 and meta["forbidden_elements"] == ["Br"]
        assert "Br" not in {el.symbol for el in structure.composition.elements}

    seeds = small_cells().select([True, False, False, False, False, True])
    infilled = generator.generate(seeds, 4, {"task": "infill", "batch_size": 4}, seed=1)
    assert len(infilled) >= 1
    for meta, structure in infilled:
        assert meta["parent_row_id"] in {"LiCl", "MgO"} and meta["prompt_task"] == "infill"
        assert Element.is_valid_symbol(meta["infill_proposed_element"])
        parent = seeds.get(meta["parent_row_id"])[1]
        assert len(structure) == len(parent)
        assert meta["infill_proposed_element"] in {el.symbol for el in structure.composition.elements}
    with pytest.raises(ValueError, match="needs seed structures"):
        generator.generate(StructureBatch(), 1, {"task": "infill"})


def test_cli_generate_writes_a_batch_the_screening_consumes(trained):
    from battgen.screen.pipeline import screen_batch

    summary = run_cli("generate", {"generator": "llm", "n": 8, "seed": 0, "options": {"model": "model"},
                                   "conditions": {"batch_size": 8}, "output": "generated.jsonl.gz"}, trained)
    generated = StructureBatch.read(trained / "generated.jsonl.gz")
    assert summary["outputs"]["n_generated"] == len(generated) >= 1
    first = generated.meta[0]
    assert first["llm_run_n_sampled"] == first["llm_run_n_parsed"] + sum(first["llm_run_failures"].values())
    result = screen_batch(generated, steps=("validity", "charge_neutrality", "uniqueness"))
    assert result.funnel[0] == ("validity", len(generated), len(result.step("validity").passed))
    assert len(result.passed) + len(result.rejected) == len(generated)


class KilledForTest(RuntimeError):
    pass


@pytest.mark.parametrize("kill_stage", ["pretrain", "lora"])
def test_resume_after_a_kill_continues_from_the_checkpoint(tmp_path, kill_stage):
    from battgen.generate.dataset import split_batch
    from battgen.generate.llm.train import checkpoint_dirs, train_crystal_llm

    splits = split_batch(small_cells(), (0.7, 0.15, 0.15), 0)
    hp = merge_hyperparameters(preset_hyperparameters("tiny"), {
        "pretrain": {"max_steps": 10, "batch_size": 2}, "lora": {"max_steps": 6, "batch_size": 2},
        "checkpoint_every_steps": 4, "eval_every_steps": 4, "max_eval_examples": 2,
    })

    def kill(stage, step, loss):
        if stage == kill_stage and step == 5:
            raise KilledForTest(f"killed at {stage} step {step}")

    with pytest.raises(KilledForTest):
        train_crystal_llm(splits, tmp_path / "killed", hp, seed=0, on_step=kill)
    assert checkpoint_dirs(tmp_path / "killed")[-1].name == f"{kill_stage}-000004"
    assert not (tmp_path / "killed" / "adapter").exists()

    resumed = train_crystal_llm(splits, tmp_path / "resumed", hp, seed=0, resume_from=tmp_path / "killed")
    stage = resumed["training"]["stages"][kill_stage]
    assert stage["resumed_from_step"] == 4 and stage["steps"] == hp[kill_stage]["max_steps"]
    log = [json.loads(line) for line in (tmp_path / "resumed" / "training_log.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in log if row["stage"] == kill_stage]
    assert steps == [1, 2, 3, 4, 5] + list(range(5, hp[kill_stage]["max_steps"] + 1))  # the count continues at 5

    # The resumed run ends where an uninterrupted run ends: same batches, same RNG, same weights.
    straight = train_crystal_llm(splits, tmp_path / "straight", hp, seed=0)
    expected = straight["metrics"]["val_loss_per_token"]
    assert resumed["metrics"]["val_loss_per_token"] == pytest.approx(expected, rel=1e-5)


def test_local_base_model_directory_skips_pretraining(trained, tmp_path):
    from battgen.generate.dataset import split_batch
    from battgen.generate.llm.train import train_crystal_llm

    hp = merge_hyperparameters(preset_hyperparameters("tiny"), {
        "base_model": str(trained / "model" / "base_model"), "lora": {"max_steps": 2, "batch_size": 2},
        "max_eval_examples": 2,
    })
    result = train_crystal_llm(split_batch(small_cells(), (0.7, 0.15, 0.15), 0), tmp_path, hp)
    assert "pretrain" not in result["training"]["stages"] and result["training"]["pretrain_steps"] == 0
    settings = json.loads((tmp_path / "crystal-llm.json").read_text())
    assert settings["base_model"] == str(trained / "model" / "base_model")
    assert not (tmp_path / "base_model").exists()


def test_four_bit_request_without_cuda_stops_training_before_any_work(tmp_path):
    from battgen.generate.dataset import split_batch
    from battgen.generate.llm.model import cuda_available
    from battgen.generate.llm.train import train_crystal_llm

    if cuda_available():
        pytest.skip("this machine has CUDA")
    hp = merge_hyperparameters(preset_hyperparameters("tiny"), {"quantize_4bit": True})
    with pytest.raises(RuntimeError, match="4-bit quantisation needs a CUDA GPU"):
        train_crystal_llm(split_batch(small_cells(), (0.7, 0.15, 0.15), 0), tmp_path, hp)
    assert not (tmp_path / "tokenizer").exists()
