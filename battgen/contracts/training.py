"""Contracts of the training commands (CalcJobs ``battgen.generator.train``, ``battgen.predictor.train``,
``battgen.mlip.train``): settings and files. Hyper-parameters are checked by each model against its defaults
where the command runs (they depend on the architecture); here only their form."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from battgen.contracts.base import MODEL_DIRNAME, CommandSettings, setting

TRAINING_FILENAME = "training.jsonl.gz"
RESUME_DIRNAME = "resume"
# How a training run reports that it stopped early but checkpointed (SIGTERM from the scheduler ...).
INTERRUPTED_REASONS = ("sigterm", "interrupted")
FRAME_SELECTIONS = ("seed002", "all", "every_n")


def _device_form(value: str | None) -> str | None:
    from battgen.devices import validate_device_setting  # form only: imports no torch

    return None if value is None else validate_device_setting(value)


class _TrainSettings(CommandSettings):
    output: str = setting(MODEL_DIRNAME, "the model directory written", set_by_job=True)
    seed: int = setting(0, "random seed of the training run")
    hyperparameters: dict[str, Any] | None = setting(None, "merged over the model's defaults; unknown keys are "
                                                           "rejected by the model")
    resume_from: str | None = setting(None, "model directory (or its checkpoints) of an interrupted run",
                                      set_by_job=True)
    device: str | None = setting(None, "torch device on the computer that trains: auto (cuda when present), cpu, "
                                       "cuda or cuda:N (null: auto); for NequIP Lightning's accelerator and the "
                                       "AOTInductor compile target")

    _device = field_validator("device")(classmethod(lambda cls, value: _device_form(value)))


class _TrainOnBatchSettings(_TrainSettings):
    train: str = setting(..., "the training batch file", set_by_job=True)
    filter: dict[str, Any] | None = setting(None, "training filter: {preset: tmo|none, max_atoms, min_elements, "
                                                  "max_elements, ...}")


class TrainGeneratorSettings(_TrainOnBatchSettings):
    """Settings of ``battgen train-generator``."""

    COMMAND = "train-generator"

    generator: str = setting(..., "trainable generator: cdvae or llm (battgen.generators entry point)")
    split: dict[str, Any] | None = setting(None, "{fractions: [train, val, test] (default 0.6/0.2/0.2), seed: int}")


class TrainPredictorSettings(_TrainOnBatchSettings):
    """Settings of ``battgen train-predictor``."""

    COMMAND = "train-predictor"

    predictor: str = setting(..., "predictor: alignn, m3gnet, megnet, magpie-cnn, xrd-cnn, voltage-cgcnn")
    targets: list[str] = setting(..., "metadata keys to learn, with units in their names "
                                      "(formation_energy_per_atom_eV ...)", min_length=1)
    split: dict[str, Any] | None = setting(None, "{fractions: [train, val, test] (default 0.8/0.1/0.1), seed: int, "
                                                 "stratify_by: key}")


class TrainPotentialSettings(_TrainSettings):
    """Settings of ``battgen train-potential`` (NequIP, seed 002)."""

    COMMAND = "train-potential"

    frames: list[str] | str = setting(..., "frame files or folders (vasprun.xml(.gz), extxyz, mlearn JSON, MP "
                                           "trajectory JSON)", set_by_job=True)
    frame_selection: Literal["seed002", "all", "every_n"] = setting(
        "seed002", "seed002 (first three + last frame of each trajectory), all or every_n")
    every_n: int | None = setting(None, "with frame_selection every_n: keep every n-th frame (and the last)", ge=1)
    max_force_eV_A: float | None = setting(100.0, "drop frames with a larger force component (blown-up steps)",
                                           "eV/Å", gt=0, allow_inf_nan=False)
    split: dict[str, Any] | None = setting(None, "{val_fraction (0-1, default 0.1), seed}")
    compile: bool = setting(True, "compile the best model with nequip-compile (AOTInductor)")
    initial_model: str | None = setting(None, "a potential to fine-tune (the job sets it from initial_model)",
                                        set_by_job=True)
