"""Parser of the training CalcJobs (``battgen.generator.train``, ``battgen.predictor.train``): stores the
model directory from the temporary retrieval as a ``battgen.model`` node, plus the training record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiida import orm
from aiida.engine import ExitCode

from aiida_battgen.calculations.training import INTERRUPTED_REASONS, MODEL_DIRNAME
from aiida_battgen.data.model import ModelData
from aiida_battgen.parsers.base import BattgenParser, ParsingError
from battgen.models import ModelFormatError


class ModelTrainParser(BattgenParser):
    """``model`` + ``output_parameters``; 410 when training was interrupted after a checkpoint."""

    def parse_outputs(self, summary: dict[str, Any]) -> ExitCode | None:
        outputs = summary.get("outputs") or {}
        temporary = self.parse_kwargs.get("retrieved_temporary_folder")
        model_dir = Path(temporary) / MODEL_DIRNAME if temporary else None
        if model_dir is None or not model_dir.is_dir():
            raise ParsingError(self.exit_codes.ERROR_MISSING_OUTPUT_FILES.format(files=MODEL_DIRNAME))
        try:
            model = ModelData.from_directory(model_dir)
        except ModelFormatError as exc:
            raise ParsingError(self.exit_codes.ERROR_MODEL_INVALID.format(error=str(exc)))
        if model.content_sha256 != outputs.get("content_sha256"):
            raise ParsingError(self.exit_codes.ERROR_MODEL_INVALID.format(
                error="the retrieved model does not match the hash the training run reported"))
        training = outputs.get("training") or {}
        self.out("model", model)
        self.out("output_parameters", orm.Dict({
            "architecture": outputs.get("architecture"),
            "content_sha256": model.content_sha256,
            "training": training,
            "metrics": outputs.get("metrics") or {},
            "wall_time_s": summary.get("wall_time_s"),
            "versions": summary.get("versions", {}),
        }))
        reason = training.get("stopped_because")
        if reason in INTERRUPTED_REASONS:
            return self.exit_codes.WARNING_TRAINING_INTERRUPTED.format(reason=reason)
        return None
