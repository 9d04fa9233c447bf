"""Parsers of ``battgen.generator.train`` (model node + training record) and ``battgen.generate`` (samples)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiida import orm
from aiida.engine import ExitCode

from aiida_battgen.calculations.generator import GENERATED_FILENAME, INTERRUPTED_REASONS, MODEL_DIRNAME
from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.data.model import ModelData
from aiida_battgen.parsers.base import BattgenParser, ParsingError
from battgen.models import ModelFormatError

_OUT_OF_MEMORY_MARKERS = ("out of memory", "MemoryError", "CUBLAS_STATUS_ALLOC_FAILED")


class GeneratorTrainParser(BattgenParser):
    """Store the trained model directory (from the temporary retrieval) as a ``battgen.model`` node."""

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


class GenerateParser(BattgenParser):
    """Attach the sampled batch and the sampling statistics."""

    def classify_failure(self, summary: dict[str, Any]) -> ExitCode | None:
        error = str(summary.get("error") or "")
        if any(marker in error for marker in _OUT_OF_MEMORY_MARKERS):
            return self.exit_codes.ERROR_OUT_OF_MEMORY.format(error=error[:200])
        return None

    def parse_outputs(self, summary: dict[str, Any]) -> ExitCode | None:
        batch = self.read_batch(GENERATED_FILENAME)
        outputs = dict(summary.get("outputs") or {})
        outputs.pop("generated", None)
        wall_time_s = summary.get("wall_time_s")
        parameters = {
            **outputs,
            "wall_time_s": wall_time_s,
            "throughput_structures_per_s": (len(batch) / wall_time_s) if wall_time_s else None,
            "versions": summary.get("versions", {}),
        }
        self.out("generated_structures", StructureBatchData(batch))
        self.out("output_parameters", orm.Dict(parameters))
        if len(batch) == 0:
            return self.exit_codes.ERROR_NOTHING_GENERATED
        return None
