"""Training of the crystal language model: stage 1 pre-trains a small GPT-2 from scratch on the training
texts (skipped when ``base_model`` names a Hugging Face model), stage 2 LoRA-tunes the base model on the
task mixture (seed 000 §3: r 8, α 32, dropout 0.05, lr 1e-4 cosine, 100 warm-up steps, 4-bit).

A plain torch loop (not the HF Trainer) so that budgets, checkpoints and resuming are explicit:

- every optimiser step draws its batch and augmentations from ``numpy.random.default_rng([seed, stage,
  step])``, so a resumed run sees exactly the examples the uninterrupted run would have seen;
- ``checkpoints/<stage>-<step:06d>/`` holds the weights (full model in stage 1, the adapter in stage 2),
  optimiser, scheduler and torch RNG state; ``resume_from`` continues from the last one;
- ``max_steps`` and ``max_wall_time_s`` per stage end a stage cleanly (``stopped_because``).

Model directory after training::

    tokenizer/            the tokenizer (also inside base_model/)
    base_model/           stage 1's GPT-2 (a normal HF directory); absent for hub models
    adapter/              the LoRA adapter (peft save_pretrained)
    crystal-llm.json      base model reference, text format, prompt version, what sampling needs
    training_log.jsonl    one line per logged step (loss, val loss, lr)
    checkpoints/          the last checkpoints of each stage
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from battgen.batch import StructureBatch
from battgen.devices import device_rng_state, set_device_rng_state, training_record
from battgen.generate.conditions import SCALAR_CONDITIONS, condition_columns
from battgen.generate.llm.model import (
    build_gpt2,
    count_parameters,
    load_base_model,
    load_tokenizer,
    resolve_quantization,
    train_tokenizer,
    wrap_with_lora,
)
from battgen.generate.precision import (
    StepScaler,
    autocast_context,
    precision_label,
    prefetched,
    validate_autocast,
    validate_num_workers,
)
from battgen.generate.llm.prompts import TASKS, TrainingExample, make_training_example, task_probabilities
from battgen.generate.llm.text import TextFormat, augment_structure
from battgen.progress import Bar

SETTINGS_FILENAME = "crystal-llm.json"
PROMPT_VERSION = 1  # bump when a template in prompts.py changes: old models then refuse to load
STAGES = ("pretrain", "lora")
IGNORE_INDEX = -100  # label value the loss skips (padding, and prompts in stage 2)


def default_hyperparameters() -> dict[str, Any]:
    return {
        "base_model": None,  # None: pre-train a small GPT-2 (stage 1); else a HF id or local directory
        "decimals": TextFormat().as_dict(),
        "augment": {"permute": True, "translate": True},
        "tasks": {"unconditional": 0.5, "conditional": 0.35, "infill": 0.15},
        "condition_keys": list(SCALAR_CONDITIONS),
        "condition_dropout": 0.5,  # probability a true condition of a row is left out of its prompt
        "working_ion": "Li",
        "tokenizer": {"vocab_size": 512, "min_frequency": 2},
        "pretrain": {
            # 1,024 positions: ~17 tokens an atom holds 44-atom TMO cells (seed 000) with their prompt
            "n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 1024, "dropout": 0.1,
            "lr": 1e-3, "weight_decay": 0.01, "scheduler": "cosine", "warmup_steps": 100,
            "batch_size": 16, "max_steps": 2000, "max_wall_time_s": None,
        },
        "lora": {
            "r": 8, "alpha": 32, "dropout": 0.05, "target_modules": None,
            "lr": 1e-4, "weight_decay": 0.0, "scheduler": "cosine", "warmup_steps": 100,
            "batch_size": 1, "max_steps": 1000, "max_wall_time_s": None,
        },
        "quantize_4bit": False,
        "quantize_4bit_cpu_fallback": False,  # without CUDA: train in full precision instead of failing
        "autocast": None,  # opt-in mixed precision of the training forward pass: bfloat16 | float16 (CUDA only)
        "num_workers": 0,  # DataLoader workers that augment + tokenise batches ahead (battgen.generate.precision)
        "checkpoint_every_steps": 200,
        "keep_checkpoints": 2,
        "eval_every_steps": 200,
        "max_eval_examples": 64,
        "eval_batch_size": 16,
        "progress": True,
    }


# --- examples ------------------------------------------------------------------------------------------
@dataclass
class ExampleSource:
    """Builds seeded, augmented training examples from a batch."""

    batch: StructureBatch
    scalar_values: list[dict[str, float | None]]
    decimals: TextFormat
    tasks: list[str]
    task_weights: np.ndarray
    element_pool: list[str]
    augment: dict[str, bool]
    condition_dropout: float

    @classmethod
    def from_batch(cls, batch: StructureBatch, hp: dict[str, Any]) -> ExampleSource:
        keys = list(hp["condition_keys"])
        unknown = sorted(set(keys) - set(SCALAR_CONDITIONS))
        if unknown:
            raise ValueError(f"condition_keys: unknown condition(s) {unknown}; known: {SCALAR_CONDITIONS}")
        columns = condition_columns(batch, keys, hp["working_ion"]) if keys else {}
        scalar_values = [{key: columns[key][i] for key in keys} for i in range(len(batch))]
        tasks, weights = task_probabilities(hp["tasks"])
        pool = sorted({el.symbol for s in batch.structures for el in s.composition.elements})
        augment = {"permute": bool(hp["augment"].get("permute")), "translate": bool(hp["augment"].get("translate"))}
        return cls(batch, scalar_values, TextFormat.from_dict(hp["decimals"]), tasks, weights, pool, augment,
                   float(hp["condition_dropout"]))

    def example(self, index: int, rng: np.random.Generator, task: str | None = None) -> TrainingExample:
        structure = augment_structure(self.batch.structures[index], rng, **self.augment)
        task = task or str(rng.choice(self.tasks, p=self.task_weights))
        return make_training_example(task, structure, self.scalar_values[index], rng, self.decimals, self.element_pool,
                                     self.condition_dropout)

    def batch_for_step(self, seed: int, stage: str, step: int, batch_size: int) -> list[TrainingExample]:
        """The examples of optimiser step ``step``: epoch-wise shuffled rows, fresh augmentation each time."""
        n = len(self.batch)
        stage_code = STAGES.index(stage)
        examples = []
        for j in range(batch_size):
            position = step * batch_size + j
            epoch, offset = divmod(position, n)
            order = np.random.default_rng([seed, stage_code, epoch]).permutation(n)
            rng = np.random.default_rng([seed, stage_code, step, j, 1])
            examples.append(self.example(int(order[offset]), rng))
        return examples

    def subset(self, keep: list[int]) -> ExampleSource:
        """The same source restricted to rows ``keep`` (element pool kept: it names the prompts' vocabulary)."""
        kept = set(keep)
        return ExampleSource(self.batch.select([i in kept for i in range(len(self.batch))]),
                             [self.scalar_values[i] for i in keep], self.decimals, self.tasks, self.task_weights,
                             self.element_pool, self.augment, self.condition_dropout)

    def fixed_examples(self, seed: int, limit: int) -> list[TrainingExample]:
        """A fixed, seeded set (validation loss is comparable between evaluations)."""
        examples = []
        for index in range(min(limit, len(self.batch))):
            examples.append(self.example(index, np.random.default_rng([seed, 7, index])))
        return examples

    def tokenizer_corpus(self, seed: int) -> list[str]:
        """Every task on every row once: the tokenizer sees all templates and all numbers' spellings."""
        texts = []
        for index in range(len(self.batch)):
            for k, task in enumerate(TASKS):
                example = self.example(index, np.random.default_rng([seed, 5, index, k]), task)
                texts.append(example.prompt + example.answer)
        return texts


def encode_example(tokenizer, example: TrainingExample, max_length: int, loss_on_prompt: bool) -> tuple:
    """(input ids, labels, too long): ``<s> prompt answer </s>``; prompt labels ignored unless asked.
    Never cut: a text without its end token would teach the model cells that never end."""
    prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = bos + prompt_ids + answer_ids + [tokenizer.eos_token_id]
    if loss_on_prompt:
        labels = list(ids)
    else:
        labels = [IGNORE_INDEX] * (len(bos) + len(prompt_ids)) + answer_ids + [tokenizer.eos_token_id]
    return ids, labels, len(ids) > max_length


def fitting(encoded: list[tuple]) -> list[tuple]:
    return [item for item in encoded if not item[2]]


def refuse_rows_longer_than_context(source: ExampleSource, tokenizer, max_length: int, seed: int
                                    ) -> tuple[ExampleSource, dict[str, Any]]:
    """Drop the rows whose longest example (each task, every condition in the prompt) does not fit in
    ``max_length`` positions; counts by reason, tokens per atom and the longest kept answer (tokens)."""
    keep, answer_tokens, atoms = [], [], []
    for index, structure in enumerate(source.batch.structures):
        longest = 0
        for k, task in enumerate(TASKS):
            example = make_training_example(task, structure, source.scalar_values[index],
                                            np.random.default_rng([seed, 13, index, k]), source.decimals,
                                            source.element_pool, 0.0)
            ids, _, _ = encode_example(tokenizer, example, max_length, True)
            longest = max(longest, len(ids))
            if task == "unconditional":
                answer_tokens.append(len(tokenizer(example.answer, add_special_tokens=False)["input_ids"]))
                atoms.append(len(structure))
        if longest <= max_length:
            keep.append(index)
    if not keep:
        raise ValueError(f"every training row is longer than the model's {max_length} positions; "
                         "raise pretrain.n_positions or filter smaller cells (filter max_atoms)")
    refused = len(source.batch) - len(keep)
    stats = {
        "context_positions": max_length,
        "n_rows_refused": {"longer_than_context": refused},
        "tokens_per_atom": round(sum(answer_tokens) / max(sum(atoms), 1), 3),
        "longest_answer_tokens": max(answer_tokens[i] for i in keep),
    }
    return (source.subset(keep) if refused else source), stats


def collate(encoded: list[tuple], pad_id: int, device: str = "cpu"):
    """(input ids, labels, attention mask), right-padded, made on ``device`` (the model's)."""
    import torch

    width = max(len(ids) for ids, _, _ in encoded)
    rows = [(list(ids) + [pad_id] * (width - len(ids)), list(labs) + [IGNORE_INDEX] * (width - len(labs)),
             [1] * len(ids) + [0] * (width - len(ids))) for ids, labs, _ in encoded]
    input_ids, labels, attention = (torch.tensor([row[k] for row in rows], dtype=torch.long, device=device)
                                    for k in range(3))
    return input_ids, labels, attention


def token_loss_sum(model, input_ids, labels, attention) -> tuple:
    """(summed token cross-entropy, number of scored tokens) so batches of different sizes average right."""
    import torch.nn.functional as F

    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
    targets = labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((targets != IGNORE_INDEX).sum())


def evaluation_loss(model, tokenizer, examples, max_length, loss_on_prompt, batch_size, device) -> float | None:
    import torch

    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            encoded = fitting([encode_example(tokenizer, e, max_length, loss_on_prompt) for e in chunk])
            if not encoded:
                continue
            tensors = collate(encoded, tokenizer.pad_token_id, device)
            loss, n = token_loss_sum(model, *tensors)
            total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)


# --- checkpoints -------------------------------------------------------------------------------------
def checkpoint_dirs(model_dir: Path) -> list[Path]:
    """Complete checkpoints (those with state.json), oldest first: stage order, then step."""
    root = Path(model_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        stage, _, step = path.name.rpartition("-")
        if stage in STAGES and step.isdigit() and (path / "state.json").is_file():
            found.append((STAGES.index(stage), int(step), path))
    return [path for _, _, path in sorted(found)]


def last_checkpoint(model_dir: Path) -> dict[str, Any] | None:
    dirs = checkpoint_dirs(model_dir)
    if not dirs:
        return None
    state = json.loads((dirs[-1] / "state.json").read_text(encoding="utf-8"))
    return {**state, "path": dirs[-1]}


def save_checkpoint(model_dir, stage, step, model, optimizer, scheduler, extra: dict, keep: int,
                    grad_scaler: dict | None = None) -> Path:
    import torch

    path = Path(model_dir) / "checkpoints" / f"{stage}-{step:06d}"
    partial = path.with_name(path.name + ".partial")  # a kill mid-write must not leave a half checkpoint
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(partial / ("model" if stage == "pretrain" else "adapter"))
    device = str(next(model.parameters()).device)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "device_rng": device_rng_state(device),
                "grad_scaler": grad_scaler}, partial / "optimizer.pt")
    (partial / "state.json").write_text(json.dumps({"stage": stage, "step": step, **extra}, indent=1), encoding="utf-8")
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
    same_stage = [p for p in checkpoint_dirs(model_dir) if p.name.rpartition("-")[0] == stage]
    for old in same_stage[: max(len(same_stage) - max(int(keep), 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def restore_optimizer(path: Path, optimizer, scheduler, device: str = "cpu", step_scaler=None) -> None:
    import torch

    # saved on any device, read on the CPU; the optimizer moves its state to its parameters' device
    state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    set_device_rng_state(device, state.get("device_rng"))
    if step_scaler is not None:
        step_scaler.load_state_dict(state.get("grad_scaler"))


# --- one stage -----------------------------------------------------------------------------------------
def effective_warmup(warmup_steps: int, max_steps: int) -> int:
    """The configured warm-up, capped at a tenth of a short run (100 warm-up steps would swallow a 30-step test)."""
    return int(min(int(warmup_steps), max(1, int(max_steps) // 10)))


def make_scheduler(optimizer, name: str, warmup: int, max_steps: int):
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    if name == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, max(max_steps, 1))
    if name == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, max(max_steps, 1))
    if name == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    raise ValueError(f"unknown scheduler {name!r}; use cosine, linear or constant")


@dataclass
class StageContext:
    model_dir: Path
    tokenizer: Any
    train_source: ExampleSource
    val_examples: list[TrainingExample]
    train_eval_examples: list[TrainingExample]  # fixed training examples: did the optimiser fit them?
    hp: dict[str, Any]
    seed: int
    device: str
    max_length: int
    on_step: Callable[[str, int, float], None] | None = None


def run_stage(stage: str, model, ctx: StageContext, resume: dict[str, Any] | None) -> dict[str, Any]:
    """Optimise ``model`` for one stage; returns steps, losses and why it stopped."""
    import torch

    stage_hp = ctx.hp[stage]
    loss_on_prompt = stage == "pretrain"  # pre-training learns the whole language; LoRA learns the answers
    max_steps = int(stage_hp["max_steps"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=float(stage_hp["lr"]), weight_decay=float(stage_hp["weight_decay"]))
    scheduler = make_scheduler(optimizer, stage_hp["scheduler"], effective_warmup(stage_hp["warmup_steps"], max_steps),
                               max_steps)
    autocast = validate_autocast(ctx.hp.get("autocast"), ctx.device)  # see battgen.generate.precision
    step_scaler = StepScaler(ctx.device, autocast)
    start_step = 0
    if resume is not None:
        restore_optimizer(resume["path"], optimizer, scheduler, ctx.device, step_scaler)
        start_step = int(resume["step"])
    else:
        torch.manual_seed(ctx.seed + STAGES.index(stage))

    def val_loss(examples=ctx.val_examples):
        return evaluation_loss(model, ctx.tokenizer, examples, ctx.max_length, loss_on_prompt,
                               int(ctx.hp["eval_batch_size"]), ctx.device)

    if resume is None:
        initial = {"initial_val_loss": val_loss(), "initial_train_loss": val_loss(ctx.train_eval_examples)}
    else:
        initial = {key: resume.get(key) for key in ("initial_val_loss", "initial_train_loss")}
    log_path = ctx.model_dir / "training_log.jsonl"
    started = time.perf_counter()
    budget_s = stage_hp.get("max_wall_time_s")
    stopped_because = "max_steps"
    step = start_step
    train_losses: list[float] = []
    n_refused = 0
    model.train()
    progress = Bar(total=max_steps, initial=start_step, desc=f"crystal-llm {stage}", unit="step",
                   disable=not ctx.hp["progress"])

    def encoded_step(index: int) -> list[tuple]:  # depends on (seed, stage, step) only: any worker may build it
        examples = ctx.train_source.batch_for_step(ctx.seed, stage, index, int(stage_hp["batch_size"]))
        return [encode_example(ctx.tokenizer, e, ctx.max_length, loss_on_prompt) for e in examples]

    steps = prefetched(range(start_step, max_steps), encoded_step,
                       validate_num_workers(ctx.hp.get("num_workers", 0)), ctx.device)
    while step < max_steps:
        if budget_s is not None and time.perf_counter() - started >= float(budget_s):
            stopped_because = "max_wall_time_s"
            break
        encoded = next(steps)
        n_refused += sum(too_long for _, _, too_long in encoded)  # an augmentation that made a row too long
        encoded = fitting(encoded)
        if not encoded:
            step += 1
            continue
        tensors = collate(encoded, ctx.tokenizer.pad_token_id, ctx.device)
        with autocast_context(ctx.device, autocast):  # only the forward pass and the loss (kept float32)
            loss_sum, n_tokens = token_loss_sum(model, *tensors)
        loss = loss_sum / max(n_tokens, 1)
        optimizer.zero_grad(set_to_none=True)
        step_scaler.step(loss, optimizer, lambda: torch.nn.utils.clip_grad_norm_(trainable, 1.0))
        scheduler.step()
        step += 1
        train_losses.append(loss.item())
        progress.update(1)
        progress.set_postfix(loss=f"{train_losses[-1]:.3f}")
        record: dict[str, Any] = {"stage": stage, "step": step, "train_loss": train_losses[-1],
                                  "lr": scheduler.get_last_lr()[0]}
        if step % int(ctx.hp["eval_every_steps"]) == 0:
            record["val_loss"] = val_loss()
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if step % int(ctx.hp["checkpoint_every_steps"]) == 0 and step < max_steps:
            save_checkpoint(ctx.model_dir, stage, step, model, optimizer, scheduler, initial,
                            ctx.hp["keep_checkpoints"], step_scaler.state_dict())
        if ctx.on_step is not None:
            ctx.on_step(stage, step, train_losses[-1])
    progress.close()
    # The last state is always checkpointed: a budget stop can be resumed like a kill.
    save_checkpoint(ctx.model_dir, stage, step, model, optimizer, scheduler, initial, ctx.hp["keep_checkpoints"],
                    step_scaler.state_dict())
    head, tail = train_losses[: max(1, len(train_losses) // 5)], train_losses[-max(1, len(train_losses) // 5):]
    return {
        "steps": step,
        "resumed_from_step": start_step if resume is not None else None,
        "stopped_because": stopped_because,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "epochs": round(step * int(stage_hp["batch_size"]) / max(len(ctx.train_source.batch), 1), 3),
        **initial,
        "final_val_loss": val_loss(),
        "final_train_loss": val_loss(ctx.train_eval_examples),
        "first_train_loss_mean": float(np.mean(head)) if train_losses else None,
        "last_train_loss_mean": float(np.mean(tail)) if train_losses else None,
        "n_refused_examples": {"longer_than_context": n_refused},
        "parameters": count_parameters(model),
    }


# --- both stages ---------------------------------------------------------------------------------------
def _copy_resume_files(resume_from: Path, model_dir: Path) -> None:
    """Continue in a new directory: bring the tokenizer, stage-1 model and checkpoints along."""
    if resume_from.resolve() == model_dir.resolve():
        return
    for name in ("tokenizer", "base_model", "checkpoints"):
        source = resume_from / name
        if source.is_dir():
            shutil.copytree(source, model_dir / name, dirs_exist_ok=True)
    log = resume_from / "training_log.jsonl"
    if log.is_file():
        shutil.copy2(log, model_dir / "training_log.jsonl")


def context_positions(hp: dict[str, Any]) -> int:
    """Positions the model holds: stage 1's ``n_positions``, or the hub/local base model's config."""
    if hp["base_model"] is None:
        return int(hp["pretrain"]["n_positions"])
    from transformers import AutoConfig

    from battgen.generate.llm.model import BaseModelUnavailableError, _unavailable_message

    try:
        config = AutoConfig.from_pretrained(str(hp["base_model"]))
    except Exception as exc:  # noqa: BLE001 - the same message as loading the weights would give
        raise BaseModelUnavailableError(_unavailable_message(hp["base_model"], exc)) from exc
    return int(getattr(config, "n_positions", 0) or getattr(config, "max_position_embeddings", 2048))


def validate_hyperparameters(hp: dict[str, Any]) -> None:
    for stage in STAGES:
        for key in ("max_steps", "batch_size", "warmup_steps"):
            value = hp[stage][key]
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "batch_size" else 0):
                raise ValueError(f"{stage}.{key} must be a non-negative integer (batch_size >= 1), got {value!r}")
    validate_num_workers(hp.get("num_workers", 0))
    for key in ("checkpoint_every_steps", "eval_every_steps", "keep_checkpoints"):
        if isinstance(hp[key], bool) or not isinstance(hp[key], int) or hp[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {hp[key]!r}")
    TextFormat.from_dict(hp["decimals"])
    task_probabilities(hp["tasks"])
    if not 0 <= float(hp["condition_dropout"]) < 1:
        raise ValueError(f"condition_dropout must be in [0, 1), got {hp['condition_dropout']!r}")


def train_crystal_llm(
    splits: Any,
    model_dir: Path,
    hyperparameters: dict[str, Any],
    seed: int = 0,
    resume_from: Path | None = None,
    on_step: Callable[[str, int, float], None] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Both stages on ``device`` (a resolved torch device); ``on_step(stage, step, loss)`` is called after
    every optimiser step (tests use it to interrupt a run). Returns ``{"training": ..., "metrics": ...}``."""
    import torch

    hp = hyperparameters
    validate_hyperparameters(hp)
    validate_autocast(hp.get("autocast"), device)  # float16 without CUDA fails before any work
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    # Fail on an impossible 4-bit request before any work is done.
    quantize = resolve_quantization(bool(hp["quantize_4bit"]), bool(hp["quantize_4bit_cpu_fallback"]),
                                    device.startswith("cuda"))
    if len(splits.train) == 0:
        raise ValueError("the training split is empty")
    if resume_from is not None:
        _copy_resume_files(Path(resume_from), model_dir)
    resume = last_checkpoint(model_dir) if resume_from is not None else None
    if resume_from is None:  # a fresh run never mixes with leftovers of an earlier one
        shutil.rmtree(model_dir / "checkpoints", ignore_errors=True)
        (model_dir / "training_log.jsonl").unlink(missing_ok=True)

    train_source = ExampleSource.from_batch(splits.train, hp)
    val_batch = splits.val if len(splits.val) else splits.train
    val_examples = ExampleSource.from_batch(val_batch, hp).fixed_examples(seed, int(hp["max_eval_examples"]))

    base_model = hp["base_model"]
    tokenizer_dir = model_dir / "tokenizer"
    if base_model is None:
        if (tokenizer_dir / "tokenizer.json").is_file() and resume is not None:
            tokenizer = load_tokenizer(tokenizer_dir)
        else:
            tokenizer = train_tokenizer(train_source.tokenizer_corpus(seed), int(hp["tokenizer"]["vocab_size"]),
                                        int(hp["tokenizer"]["min_frequency"]))
    else:
        tokenizer = load_tokenizer(base_model)
    tokenizer.save_pretrained(tokenizer_dir)
    # rows that do not fit the context are refused (counted), never cut
    train_source, context = refuse_rows_longer_than_context(train_source, tokenizer, context_positions(hp), seed)
    train_eval_examples = train_source.fixed_examples(seed + 1, int(hp["max_eval_examples"]))

    stages: dict[str, Any] = {}
    base_dir = model_dir / "base_model"
    if base_model is None:
        max_length = int(hp["pretrain"]["n_positions"])
        pretrain_done = (base_dir / "config.json").is_file() and resume is not None and resume["stage"] == "lora"
        if pretrain_done:
            stages["pretrain"] = json.loads((base_dir / "battgen-stage.json").read_text(encoding="utf-8"))
        else:
            p = hp["pretrain"]
            torch.manual_seed(seed)  # the initial weights depend on the seed only
            model = build_gpt2(tokenizer, int(p["n_layer"]), int(p["n_embd"]), int(p["n_head"]), max_length,
                               float(p["dropout"]))
            stage_resume = resume if resume is not None and resume["stage"] == "pretrain" else None
            if stage_resume is not None:
                from transformers import GPT2LMHeadModel

                model = GPT2LMHeadModel.from_pretrained(stage_resume["path"] / "model")
            model.to(device)
            ctx = StageContext(model_dir, tokenizer, train_source, val_examples, train_eval_examples, hp, seed, device,
                               max_length, on_step)
            stages["pretrain"] = run_stage("pretrain", model, ctx, stage_resume)
            model.save_pretrained(base_dir)
            tokenizer.save_pretrained(base_dir)
            (base_dir / "battgen-stage.json").write_text(json.dumps(stages["pretrain"], indent=1), encoding="utf-8")
            del model
        base_reference = "base_model"
        base_path: str | Path = base_dir
    else:
        base_reference = str(base_model)
        base_path = base_model
    base = load_base_model(base_path, quantize_4bit=quantize, device=device)
    max_length = int(getattr(base.config, "n_positions", 0) or getattr(base.config, "max_position_embeddings", 2048))
    lora = hp["lora"]
    stage_resume = resume if resume is not None and resume["stage"] == "lora" else None
    if stage_resume is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, stage_resume["path"] / "adapter", is_trainable=True)
    else:
        torch.manual_seed(seed + 1)  # LoRA's A matrices start from the seed, not from stage 1's RNG history
        model = wrap_with_lora(base, lora["r"], lora["alpha"], lora["dropout"], lora["target_modules"])
    if not quantize:  # a 4-bit model is already placed on the GPU by bitsandbytes
        model.to(device)
    ctx = StageContext(model_dir, tokenizer, train_source, val_examples, train_eval_examples, hp, seed, device,
                       max_length, on_step)
    stages["lora"] = run_stage("lora", model, ctx, stage_resume)
    model.save_pretrained(model_dir / "adapter")
    settings = {
        "format": "battgen.crystal-llm",
        "prompt_version": PROMPT_VERSION,
        "base_model": base_reference,  # "base_model" = the directory next to this file; else a HF id / path
        "decimals": TextFormat.from_dict(hp["decimals"]).as_dict(),
        "max_length_tokens": max_length,
        "longest_answer_tokens": context["longest_answer_tokens"],  # bounds max_new_tokens at sampling
        "element_pool": train_source.element_pool,
        "condition_keys": list(hp["condition_keys"]),
        "quantize_4bit": quantize,
    }
    (model_dir / SETTINGS_FILENAME).write_text(json.dumps(settings, indent=1), encoding="utf-8")
    final = stages["lora"]
    training = {
        "steps": final["steps"],
        "epochs": final["epochs"],
        "resumed_from_step": final["resumed_from_step"],
        "stopped_because": final["stopped_because"],
        "pretrain_steps": stages["pretrain"]["steps"] if "pretrain" in stages else 0,
        "stages": stages,
        "context": context,
        # stage 2's weights: 4-bit NF4 base (bf16 compute) when quantised, else float32
        **training_record(device, "nf4-4bit+bfloat16" if quantize else precision_label(
            validate_autocast(hp.get("autocast"), device))),
        "num_workers": int(hp.get("num_workers", 0)),
    }
    metrics = {
        "val_loss_per_token": final["final_val_loss"],
        "val_loss_per_token_before_lora": final["initial_val_loss"],
        "pretrain_val_loss_per_token": stages.get("pretrain", {}).get("final_val_loss"),
        "lora_trainable_parameters": final["parameters"]["trainable"],
        "total_parameters": final["parameters"]["total"],
    }
    if any(v is not None and isinstance(v, float) and not math.isfinite(v) for v in metrics.values()):
        raise RuntimeError(f"training diverged: {metrics}")
    return {"training": training, "metrics": metrics}
