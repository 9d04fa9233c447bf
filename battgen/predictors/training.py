"""``battgen train-predictor`` and ``battgen predict``.

train-predictor config::

    predictor: alignn | m3gnet | megnet | magpie-cnn | xrd-cnn | voltage-cgcnn
    train: structures.jsonl.gz           # rows carrying the target columns
    targets: [formation_energy_per_atom_eV]
    output: model
    filter: {preset: none}               # battgen.generate.dataset.TrainingFilter (default: keep all)
    split: {fractions: [0.8, 0.1, 0.1], seed: 0, stratify_by: working_ion}   # stratify_by optional
    hyperparameters: {...}
    seed: 0
    resume_from: earlier_model
    device: auto                         # auto | cpu | cuda | cuda:N (battgen.devices); recorded in the manifest

predict config::

    predictor: alignn
    model: model                         # a trained model directory
    input: structures.jsonl.gz
    output: predicted.jsonl.gz           # the input rows + predicted_<target> columns
    device: auto                         # auto | cpu | cuda | cuda:N (or options.device, not both)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from battgen.batch import BatchFormatError, StructureBatch
from battgen.devices import resolve_device
from battgen.contracts.predict import PredictSettings
from battgen.contracts.training import TrainPredictorSettings
from battgen.generate.dataset import DatasetSplits, batch_sha256, filter_training_rows, split_batch, TrainingFilter
from battgen.generate.training import merge_hyperparameters, resolve_resume_dir
from battgen.models import ModelFormatError, write_manifest
from battgen.predictors.base import PREDICTED_PREFIX, UnknownPredictorError, load_predictor, predictor_class
from battgen.sources.files import read_input_batch



def stratified_split(
    batch: StructureBatch, key: str, fractions: tuple[float, float, float], seed: int
) -> DatasetSplits:
    """Split each group of rows sharing metadata ``key`` (e.g. the working ion) with the same fractions,
    so every group is represented in train, validation and test as in seed 002 (80/10/10 by ion)."""
    groups: dict[Any, list[int]] = {}
    for index, meta in enumerate(batch.meta):
        groups.setdefault(meta.get(key), []).append(index)
    parts: list[list[int]] = [[], [], []]
    for offset, (_, indices) in enumerate(sorted(groups.items(), key=lambda item: str(item[0]))):
        sub = split_batch(batch.select([i in set(indices) for i in range(len(batch))]), fractions, seed + offset)
        for part, sub_batch in zip(parts, (sub.train, sub.val, sub.test)):
            part.extend(batch.index_of(row_id) for row_id in sub_batch.row_ids)
    selections = [batch.select([i in set(part) for i in range(len(batch))]) for part in parts]
    return DatasetSplits(*selections, seed=seed, fractions=fractions, source_sha256=batch_sha256(batch))


def prepare_predictor_data(
    batch: StructureBatch, targets: list[str], filter_config: dict[str, Any] | None, split_config: dict[str, Any]
) -> DatasetSplits:
    """Rows with every target known, filtered (default: keep all), split (optionally stratified)."""
    training_filter = TrainingFilter.from_config(filter_config or {"preset": "none"})
    kept, rejected = filter_training_rows(batch, training_filter)
    labelled = kept.select(lambda m, s: all(m.get(t) is not None and np.isfinite(float(m[t])) for t in targets))
    rejected["missing_target"] = len(kept) - len(labelled)
    if len(labelled) < 3:
        raise ValueError(f"only {len(labelled)} row(s) carry every target {targets}; need at least 3 to split")
    fractions = tuple(split_config.get("fractions", (0.8, 0.1, 0.1)))
    seed = int(split_config.get("seed", 0))
    if split_config.get("stratify_by"):
        splits = stratified_split(labelled, str(split_config["stratify_by"]), fractions, seed)
    else:
        splits = split_batch(labelled, fractions, seed)
    splits.source_sha256 = batch_sha256(batch)
    splits.filter_counts = {"n_input": len(batch), "n_kept": len(labelled), **rejected}
    return splits


def run_train_predictor_command(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from battgen.errors import InvalidInputError  # lazy: the CLI imports this module lazily

    TrainPredictorSettings.from_config(config)  # unknown keys, types, a non-empty list of targets
    targets = config["targets"]
    seed = config.get("seed", 0)
    device = resolve_device(config.get("device", "auto"))  # before any work: `cuda` without CUDA is bad input
    try:
        cls = predictor_class(str(config["predictor"]))
        hyperparameters = merge_hyperparameters(cls.default_hyperparameters(), config.get("hyperparameters"))
        batch = read_input_batch(workdir / config["train"])
        splits = prepare_predictor_data(batch, list(targets), config.get("filter"), dict(config.get("split") or {}))
    except (UnknownPredictorError, BatchFormatError, ValueError, TypeError, OSError) as exc:
        raise InvalidInputError(str(exc)) from exc
    resume_from, resume_note = resolve_resume_dir(workdir, config.get("resume_from"))
    model_dir = workdir / config.get("output", "model")
    model_dir.mkdir(parents=True, exist_ok=True)
    splits.write(model_dir)
    result = cls.fit(splits, list(targets), model_dir, hyperparameters, seed=seed, resume_from=resume_from,
                     device=device)
    training = {
        "targets": list(targets),
        "source_sha256": splits.source_sha256,
        "split_seed": splits.seed,
        "split_fractions": list(splits.fractions),
        "stratify_by": (config.get("split") or {}).get("stratify_by"),
        "n_train": len(splits.train), "n_val": len(splits.val), "n_test": len(splits.test),
        "filter_counts": splits.filter_counts,
        "seed": seed,
        **({"resume_note": resume_note} if resume_note else {}),
        **(result.get("training") or {}),
    }
    manifest = write_manifest(model_dir, "predictor", cls.architecture, hyperparameters, training, result.get("metrics"))
    return {
        "model": model_dir.relative_to(workdir).as_posix(),
        "architecture": cls.architecture,
        "content_sha256": manifest["content_sha256"],
        "training": training,
        "metrics": manifest["metrics"],
    }


def run_predict_command(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from battgen.errors import InvalidInputError

    checked = PredictSettings.from_config(config)
    output = checked.output
    options = dict(checked.options)
    if "device" in config:
        if "device" in options and options["device"] != config["device"]:
            raise InvalidInputError(f"device given twice: `device: {config['device']}` and "
                                    f"`options.device: {options['device']}`")
        options["device"] = config["device"]
    options["device"] = resolve_device(options.get("device", "auto"))  # `cuda` without CUDA is bad input
    try:
        predictor = load_predictor(checked.predictor, workdir / checked.model, **options)
        batch = read_input_batch(workdir / config["input"])
    except (UnknownPredictorError, ModelFormatError, BatchFormatError, ValueError, TypeError, OSError) as exc:
        raise InvalidInputError(str(exc)) from exc
    annotated = predictor.annotate(batch)
    annotated.write(workdir / output)
    n_missing = {
        t: sum(v is None for v in annotated.column(PREDICTED_PREFIX + t)) for t in predictor.targets
    }
    return {
        "predicted": output,
        "predictor": predictor.name,
        "architecture": predictor.architecture,
        "model_sha256": predictor.model_sha256,
        "targets": predictor.targets,
        "n_rows": len(annotated),
        "n_not_predicted": n_missing,
        "device": predictor.device,
    }
