"""Parser of ``battgen.channels``: analysed batch, summary scalars, per-row arrays, table and figure."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.parsers.base import BattgenParser, ParsingError
from battgen.contracts.channels import OUTPUT_BATCH, OUTPUT_FIGURE, OUTPUT_TABLE_CSV, OUTPUT_TABLE_JSON

FLOAT_COLUMNS = ("channel_radius_A", "largest_included_sphere_A", "largest_free_sphere_A",
                 "largest_included_sphere_along_free_path_A", "void_fraction", "packing_fraction")


class ChannelAnalysisParser(BattgenParser):
    def parse_outputs(self, summary: dict[str, Any]) -> ExitCode | None:
        batch = self.read_batch(OUTPUT_BATCH)
        table = self.read_json(OUTPUT_TABLE_JSON)
        rows = table.get("rows", [])
        if [r.get("row_id") for r in rows] != batch.row_ids:
            raise ParsingError(self.exit_codes.ERROR_OUTPUT_UNREADABLE.format(
                error=f"{OUTPUT_TABLE_JSON} does not match the rows of {OUTPUT_BATCH}"))
        good = [r for r in rows if r.get("error") is None]
        radii = [r["channel_radius_A"] for r in good]
        arrays = orm.ArrayData()
        for name in FLOAT_COLUMNS:
            arrays.set_array(name, np.array([np.nan if r.get(name) is None else r[name] for r in rows], dtype=float))
        arrays.set_array("channel_dimensionality", np.array(
            [-1 if r.get("channel_dimensionality") is None else r["channel_dimensionality"] for r in rows], dtype=int))
        arrays.set_array("row_ids", np.array(batch.row_ids, dtype=str))
        outputs = summary.get("outputs") or {}
        parameters = {
            "n_rows": len(rows), "n_analysed": len(good), "n_failed": len(rows) - len(good),
            "engine": outputs.get("settings", {}).get("engine"), "settings": outputs.get("settings", {}),
            "units": table.get("units", {}),
            "channel_radius_A_max": max(radii) if radii else None,
            "channel_radius_A_mean": float(np.mean(radii)) if radii else None,
            "rows_per_dimensionality": {str(k): v for k, v in sorted(Counter(
                r["channel_dimensionality"] for r in good).items())},
            "failures": {r["row_id"]: r["error"] for r in rows if r.get("error") is not None},
            "seconds": outputs.get("seconds"), "versions": summary.get("versions", {}),
        }
        if len(rows) == 1 and good:  # a single structure: its numbers are directly queryable
            parameters.update({k: good[0][k] for k in (*FLOAT_COLUMNS, "channel_dimensionality")})
        parameters = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in parameters.items()}
        self.out("analysed_structures", StructureBatchData(batch))
        self.out("output_parameters", orm.Dict(parameters))
        self.out("output_arrays", arrays)
        self.out("table", self.read_singlefile(OUTPUT_TABLE_CSV))
        self.out("figure", self.read_singlefile(OUTPUT_FIGURE))
        if parameters["n_failed"]:
            return self.exit_codes.WARNING_ROWS_FAILED.format(n=parameters["n_failed"])
        return None
