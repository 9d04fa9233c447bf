"""Contract of ``battgen predict`` (CalcJob ``battgen.predict``): settings, files, the output column prefix."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from battgen.contracts.base import MODEL_DIRNAME, CommandSettings, setting  # noqa: F401 - MODEL_DIRNAME re-exported

COMMAND = "predict"
INPUT_FILENAME = "structures.jsonl.gz"
PREDICTED_FILENAME = "predicted.jsonl.gz"
# Every predicted property is a column ``predicted_<target>`` (the target's unit is in its name).
PREDICTED_PREFIX = "predicted_"
# Predictor entry-point names and the architecture their model directories must have.
PREDICTOR_ARCHITECTURES = {
    "alignn": "alignn", "m3gnet": "matgl-m3gnet", "megnet": "matgl-megnet", "magpie-cnn": "magpie-cnn",
    "xrd-cnn": "xrd-cnn", "voltage-cgcnn": "voltage-cgcnn",
}


def predictor_for_architecture(architecture: str) -> str | None:
    """The predictor that reads models of ``architecture`` (None if no registered one does)."""
    return next((name for name, arch in PREDICTOR_ARCHITECTURES.items() if arch == architecture), None)


class PredictSettings(CommandSettings):
    """Settings of ``battgen predict``."""

    COMMAND = COMMAND

    predictor: str = setting(..., "predictor name (battgen.predictors entry point); the CalcJob defaults it "
                                  "from the model's architecture")
    model: str = setting(..., "the trained model directory (relative to the workdir)", set_by_job=True)
    input: str = setting(..., "the batch to predict for", set_by_job=True)
    output: str = setting(PREDICTED_FILENAME, "the input rows with predicted_<target> columns", set_by_job=True)
    options: dict[str, Any] = setting({}, "predictor constructor options: batch_size ...")
    device: str | None = setting("auto", "torch device on the computer that predicts: auto (cuda when present), "
                                         "cpu, cuda or cuda:N")

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str | None) -> str | None:
        from battgen.devices import validate_device_setting  # form only: imports no torch

        return None if value is None else validate_device_setting(value)
