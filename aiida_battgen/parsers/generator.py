"""Parser of ``battgen.generate``: the sampled batch and sampling statistics (training: parsers/training.py)."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import ExitCode

from aiida_battgen.data.batch import StructureBatchData
from battgen.contracts.generate import GENERATED_FILENAME
from aiida_battgen.parsers.base import BattgenParser


class GenerateParser(BattgenParser):
    """Attach the sampled batch and the sampling statistics."""

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
