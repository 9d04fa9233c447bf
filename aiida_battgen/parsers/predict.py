"""Parser of ``battgen.predict``: the annotated batch and the prediction statistics."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import ExitCode

from aiida_battgen.data.batch import StructureBatchData
from battgen.contracts.predict import PREDICTED_FILENAME
from aiida_battgen.parsers.base import BattgenParser, ParsingError


class PredictParser(BattgenParser):
    def parse_outputs(self, summary: dict[str, Any]) -> ExitCode | None:
        batch = self.read_batch(PREDICTED_FILENAME)
        if batch.row_ids != self.node.inputs.structures.get_batch().row_ids:
            raise ParsingError(self.exit_codes.ERROR_OUTPUT_UNREADABLE.format(
                error=f"{PREDICTED_FILENAME} does not hold the input rows in order"))
        outputs = dict(summary.get("outputs") or {})
        outputs.pop("predicted", None)
        wall_time_s = summary.get("wall_time_s")
        self.out("predicted_structures", StructureBatchData(batch))
        self.out("output_parameters", orm.Dict({
            **outputs, "wall_time_s": wall_time_s,
            "throughput_structures_per_s": (len(batch) / wall_time_s) if wall_time_s else None,
            "versions": summary.get("versions", {}),
        }))
        return None
