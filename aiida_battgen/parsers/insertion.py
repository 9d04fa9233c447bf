"""Parser of ``battgen.insertion``: voltages per ion and channel, relaxed structures, table and figure."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import ExitCode

from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.parsers.base import BattgenParser, ParsingError
from battgen.contracts.insertion import OUTPUT_BATCH, OUTPUT_FIGURE, OUTPUT_TABLE_CSV, OUTPUT_TABLE_JSON


class InsertionParser(BattgenParser):
    def parse_outputs(self, summary: dict[str, Any]) -> ExitCode | None:
        batch = self.read_batch(OUTPUT_BATCH)
        table = self.read_json(OUTPUT_TABLE_JSON)
        rows = table.get("rows")
        if not isinstance(rows, list) or len(rows) != len(batch):
            raise ParsingError(self.exit_codes.ERROR_OUTPUT_UNREADABLE.format(
                error=f"{OUTPUT_TABLE_JSON} does not match the rows of {OUTPUT_BATCH}"))
        voltages = [r["voltage_V"] for r in rows if r.get("voltage_V") is not None]
        scored = [r for r in rows if r.get("voltage_V") is not None]
        best = max(scored, key=lambda r: r["voltage_V"], default=None)
        parameters = {
            "formula": table.get("formula"), "units": table.get("units", {}),
            "ion_charges": table.get("ion_charges", {}),
            "settings": table.get("settings", {}), "site_types": table.get("site_types", {}), "rows": rows,
            "references": sorted({f"{r['ion']}: {r['reference']}" for r in rows}),
            "n_insertions": len(rows), "max_voltage_V": max(voltages) if voltages else None,
            "best": {k: best.get(k) for k in ("ion", "n_ions", "channel", "site_type", "voltage_V")} if best else None,
            "bader": table.get("bader"), "versions": summary.get("versions", {}),
        }
        self.out("output_parameters", orm.Dict(parameters))
        self.out("inserted_structures", StructureBatchData(batch))
        self.out("table", self.read_singlefile(OUTPUT_TABLE_CSV))
        self.out("figure", self.read_singlefile(OUTPUT_FIGURE))
        not_converged = sum(r.get("relax_status") not in ("converged",) for r in rows)
        if not_converged:
            return self.exit_codes.WARNING_NOT_CONVERGED.format(n=not_converged)
        return None
