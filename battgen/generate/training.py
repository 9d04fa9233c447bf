"""``battgen train-generator``: prepare the training split, train a generator, write the model directory.

Config::

    generator: cdvae | llm                # a registered TrainableGenerator
    train: structures.jsonl.gz            # a batch (MP snapshot, file source ...)
    output: model                         # the model directory to write (default "model")
    filter: {preset: tmo}                 # battgen.generate.dataset.TrainingFilter; {preset: none} keeps all
    split: {fractions: [0.6, 0.2, 0.2], seed: 0}
    hyperparameters: {...}                # merged over the generator's defaults; unknown keys are an error
    seed: 0                               # torch / numpy seed for training
    resume_from: earlier_model            # optional: continue from that directory's last checkpoint
    device: auto                          # auto | cpu | cuda | cuda:N (battgen.devices); recorded in the manifest
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from battgen.batch import BatchFormatError
from battgen.sources.files import read_input_batch
from battgen.devices import resolve_device
from battgen.generate.base import TrainableGenerator, UnknownGeneratorError, registered_generators, ENTRY_POINT_PREFIX
from battgen.generate.dataset import prepare_training_data
from battgen.models import CHECKPOINT_DIRNAME, ModelFormatError, write_manifest



def trainable_generator_class(name: str) -> type[TrainableGenerator]:
    registered = registered_generators()
    full_name = name if name.startswith(ENTRY_POINT_PREFIX) else ENTRY_POINT_PREFIX + name
    if full_name not in registered:
        raise UnknownGeneratorError(f"no generator {name!r}; registered: {', '.join(sorted(registered))}")
    generator_class = registered[full_name].load()
    if not (isinstance(generator_class, type) and issubclass(generator_class, TrainableGenerator)):
        raise UnknownGeneratorError(f"generator {name!r} has no trainable weights")
    return generator_class


def merge_hyperparameters(defaults: dict[str, Any], given: dict[str, Any] | None, where: str = "") -> dict[str, Any]:
    """``given`` over ``defaults`` (nested mappings merged); a key the defaults lack is an error."""
    merged = dict(defaults)
    for key, value in (given or {}).items():
        if key not in defaults:
            raise ValueError(f"unknown hyper-parameter {where}{key!r}; known: {sorted(defaults)}")
        if isinstance(defaults[key], dict) and isinstance(value, dict):
            merged[key] = merge_hyperparameters(defaults[key], value, f"{where}{key}.")
        else:
            merged[key] = value
    return merged


def resolve_resume_dir(workdir: Path, value: Any) -> tuple[Path | None, str | None]:
    """``resume_from`` of a training config as a directory to continue from, and a note when there is
    nothing to continue (a run killed before its first checkpoint trains again from scratch).
    A path that is not a directory is invalid input."""
    from battgen.errors import InvalidInputError

    if value is None:
        return None, None
    resume_from = workdir / str(value)
    if not resume_from.is_dir():
        raise InvalidInputError(f"resume_from: {resume_from} is not a directory")
    if not any((resume_from / CHECKPOINT_DIRNAME).glob("*")):
        return None, f"no checkpoint in {value}/{CHECKPOINT_DIRNAME}: trained from scratch"
    return resume_from, None


def run_train_generator_command(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from battgen.errors import InvalidInputError  # lazy: the CLI imports this module lazily

    from battgen.contracts.training import TrainGeneratorSettings

    TrainGeneratorSettings.from_config(config)  # unknown keys, types (hyper-parameters: by the generator)
    seed = config.get("seed", 0)
    split_config = dict(config.get("split") or {})
    device = resolve_device(config.get("device") or "auto")  # before any work: `cuda` without CUDA is bad input
    try:
        generator_class = trainable_generator_class(str(config["generator"]))
        hyperparameters = merge_hyperparameters(generator_class.default_hyperparameters(), config.get("hyperparameters"))
        batch = read_input_batch(workdir / config["train"])
        splits = prepare_training_data(
            batch, config.get("filter"), tuple(split_config.get("fractions", (0.6, 0.2, 0.2))),
            int(split_config.get("seed", 0)),
        )
    except (UnknownGeneratorError, BatchFormatError, ValueError, TypeError, OSError) as exc:
        raise InvalidInputError(str(exc)) from exc
    resume_from, resume_note = resolve_resume_dir(workdir, config.get("resume_from"))
    model_dir = workdir / config.get("output", "model")
    model_dir.mkdir(parents=True, exist_ok=True)
    splits.write(model_dir)
    result = generator_class.train(splits, model_dir, hyperparameters, seed=seed, resume_from=resume_from,
                                   device=device)
    training = {
        "source_sha256": splits.source_sha256,
        "split_seed": splits.seed,
        "split_fractions": list(splits.fractions),
        "n_train": len(splits.train),
        "n_val": len(splits.val),
        "n_test": len(splits.test),
        "filter_counts": splits.filter_counts,
        "seed": seed,
        **({"resume_note": resume_note} if resume_note else {}),
        **(result.get("training") or {}),
    }
    try:
        manifest = write_manifest(model_dir, "generator", generator_class.architecture, hyperparameters, training,
                                  result.get("metrics"))
    except ModelFormatError as exc:  # pragma: no cover - write_manifest only raises on a programming error
        raise RuntimeError(str(exc)) from exc
    return {
        "model": model_dir.relative_to(workdir).as_posix(),
        "architecture": generator_class.architecture,
        "content_sha256": manifest["content_sha256"],
        "training": training,
        "metrics": manifest["metrics"],
    }
