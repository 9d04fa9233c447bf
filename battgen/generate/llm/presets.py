"""Named hyper-parameter sets for the crystal language model.

Each preset is a partial ``hyperparameters`` mapping merged over
:meth:`CrystalLLMGenerator.default_hyperparameters` (exactly what ``battgen train-generator`` does with a
config's ``hyperparameters:``); :func:`preset_hyperparameters` returns the merged, complete set.

- ``tiny``: the tests (a 2-layer GPT-2, seconds on one core).
- ``cpu-benchmark``: learns the format on MP-20-sized data within ~15 min on one CPU core (a 4-layer
  GPT-2 pre-trained from scratch, then the seed's LoRA settings for a short fine-tune).
- ``llama-3.1-8b``: the seed's model (000 §2.3/§3): LLaMA-3.1-8B, LoRA r 8, α 32, dropout 0.05, 4 bit,
  lr 1e-4 with a cosine schedule and 100 warm-up steps, batch size 1. Needs internet (gated hub model) and a
  CUDA GPU (the command config's top-level ``device``); the seed trained 25 epochs (150 h on an L40).
"""

from __future__ import annotations

import copy
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "condition_keys": ["band_gap_eV", "gravimetric_capacity_mAh_per_g"],  # no Zeo++ runs in tests
        "tasks": {"unconditional": 0.6, "conditional": 0.2, "infill": 0.2},
        "tokenizer": {"vocab_size": 300, "min_frequency": 1},
        "pretrain": {"n_layer": 2, "n_embd": 48, "n_head": 2, "n_positions": 256, "dropout": 0.0,
                     "lr": 1e-2, "warmup_steps": 10, "batch_size": 8, "max_steps": 200},
        "lora": {"lr": 5e-3, "warmup_steps": 2, "batch_size": 8, "max_steps": 20},
        "checkpoint_every_steps": 100,
        "eval_every_steps": 100,
        "max_eval_examples": 8,
        "progress": False,
    },
    "cpu-benchmark": {
        "tokenizer": {"vocab_size": 512, "min_frequency": 2},
        "pretrain": {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 1024, "dropout": 0.0,
                     "lr": 2e-3, "warmup_steps": 100, "batch_size": 8, "max_steps": 3000,
                     "max_wall_time_s": 660},
        "lora": {"r": 8, "alpha": 32, "dropout": 0.05, "lr": 1e-4, "scheduler": "cosine", "warmup_steps": 100,
                 "batch_size": 8, "max_steps": 1000, "max_wall_time_s": 120},
        "checkpoint_every_steps": 250,
        "eval_every_steps": 250,
        "max_eval_examples": 64,
    },
    "llama-3.1-8b": {
        "base_model": "meta-llama/Llama-3.1-8B",
        "lora": {"r": 8, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                 "lr": 1e-4, "scheduler": "cosine", "warmup_steps": 100, "batch_size": 1,
                 "max_steps": 25 * 26_647},  # 25 epochs of the seed's 60 % TMO split (26,647 rows), batch 1
        "quantize_4bit": True,
        "checkpoint_every_steps": 5000,
        "eval_every_steps": 5000,
    },
}


def preset_hyperparameters(name: str) -> dict[str, Any]:
    """The complete hyper-parameters of preset ``name`` (defaults with the preset merged over them)."""
    from battgen.generate.llm.train import default_hyperparameters
    from battgen.generate.training import merge_hyperparameters

    if name not in PRESETS:
        raise ValueError(f"unknown crystal-llm preset {name!r}; known: {sorted(PRESETS)}")
    return merge_hyperparameters(default_hyperparameters(), copy.deepcopy(PRESETS[name]))
