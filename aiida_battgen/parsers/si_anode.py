"""Parser of ``battgen.si_anode``: relaxed configurations (batch), the per-configuration table (ArrayData with
units), the capacity filter and the figure, from the retrieved files only."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.parsers.base import BattgenParser, ParsingError
from battgen.contracts.si_anode import (COMPOUNDS_FILENAME, FIGURE_FILENAME, RELAXED_FILENAME, TABLE_JSON_FILENAME,
                                        SiAnodeStatus)

# Table column -> array dtype; missing values become NaN (floats) or -1 (integers).
TABLE_ARRAYS = {
    "row_id": str, "compound_id": str, "compound_formula": str, "formula": str, "configuration_index": int,
    "state_of_charge": float,
    "removed_fraction": float, "n_working_ion_removed": int, "energy_per_atom_eV": float,
    "max_force_eV_per_A": float, "volume_A3": float, "gravimetric_capacity_mAh_per_g": float,
    "channel_radius_A": float, "used_in_fit": bool, "relax_status": str,
}
# Array names: plural for the string identifiers, the column name otherwise.
ARRAY_NAMES = {"row_id": "row_ids", "compound_id": "compound_ids", "compound_formula": "compound_formulas",
               "formula": "formulas"}


def table_arrays(rows: list[dict[str, Any]], units: dict[str, str]) -> orm.ArrayData:
    """The per-configuration table as an ArrayData (one array per column, units as an attribute)."""
    arrays = orm.ArrayData()
    for column, dtype in TABLE_ARRAYS.items():
        values = [row.get(column) for row in rows]
        if dtype is float:
            array = np.array([np.nan if v is None else v for v in values], dtype=float)
        elif dtype is int:
            array = np.array([-1 if v is None else v for v in values], dtype=int)
        elif dtype is bool:
            array = np.array([bool(v) for v in values], dtype=bool)
        else:
            array = np.array(["" if v is None else str(v) for v in values], dtype=str)
        arrays.set_array(ARRAY_NAMES.get(column, column), array)
    arrays.base.attributes.set("units", {k: v for k, v in units.items() if k in TABLE_ARRAYS})
    return arrays


class SiAnodeParser(BattgenParser):
    """Attach the outputs of a completed run; 410 (output_parameters only) when the wall-time budget stopped it."""

    def parse_outputs(self, summary: dict[str, Any]) -> ExitCode | None:
        outputs = summary.get("outputs") or {}
        parameters = {key: outputs.get(key) for key in (
            "status", "n_input_compounds", "n_candidates", "n_compounds", "n_configurations", "n_finished",
            "n_relaxed_this_call", "n_resumed_from_checkpoint", "relax_status_counts", "model", "ranking",
            "settings", "units", "wall_time_s_this_call")}
        parameters["wall_time_s"] = summary.get("wall_time_s")
        parameters["versions"] = summary.get("versions", {})
        parameters = json.loads(json.dumps(parameters, default=float))
        if outputs.get("status") == SiAnodeStatus.INCOMPLETE:
            self.out("output_parameters", orm.Dict(parameters))
            return self.exit_codes.WARNING_INCOMPLETE.format(done=outputs.get("n_finished"),
                                                             total=outputs.get("n_configurations"))

        batch = self.read_batch(RELAXED_FILENAME)
        table = self.read_json(TABLE_JSON_FILENAME)
        compounds = self.read_json(COMPOUNDS_FILENAME)
        rows = table.get("rows", [])
        if [r.get("row_id") for r in rows] != batch.row_ids:
            raise ParsingError(self.exit_codes.ERROR_OUTPUT_UNREADABLE.format(
                error=f"{TABLE_JSON_FILENAME} does not match the rows of {RELAXED_FILENAME}"))
        self._require(FIGURE_FILENAME)

        self.out("relaxed_structures", StructureBatchData(batch))
        self.out("configurations", table_arrays(rows, table.get("units", {})))
        self.out("compounds", orm.Dict(json.loads(json.dumps(compounds, default=float))))
        self.out("figure", self.read_singlefile(FIGURE_FILENAME))
        self.out("output_parameters", orm.Dict(parameters))
        return None
