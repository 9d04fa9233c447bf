"""``battgen.mlip.relax`` parser: relaxed batch, scalar summary and per-row arrays from the retrieved files."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.parsers.base import BattgenParser, ParsingError
from battgen.batch import StructureBatch
from battgen.contracts.relax import OUTPUT_FILENAME, RECORDS_FILENAME, RELAX_STATUSES
# Per-row array name -> (metadata column, dtype); missing values become NaN (floats) or -1 (n_steps).
ARRAY_COLUMNS = {
    "energy_eV": float, "energy_per_atom_eV": float, "max_force_eV_per_A": float, "converged": bool, "n_steps": int,
}


def status_counts(batch: StructureBatch) -> dict[str, int]:
    counts = Counter(batch.column("relax_status"))
    return {status: int(counts.get(status, 0)) for status in RELAX_STATUSES}


def relax_arrays(batch: StructureBatch) -> orm.ArrayData:
    """Per-row columns of a relaxed batch as arrays (row order of the batch; ``row_ids`` included)."""
    arrays = orm.ArrayData()
    for name, dtype in ARRAY_COLUMNS.items():
        values = batch.column(name)
        if dtype is float:
            array = np.array([np.nan if v is None else v for v in values], dtype=float)
        elif dtype is int:
            array = np.array([-1 if v is None else v for v in values], dtype=int)
        else:
            array = np.array([bool(v) for v in values], dtype=bool)
        arrays.set_array(name, array)
    arrays.set_array("row_ids", np.array(batch.row_ids, dtype=str))
    return arrays


def relax_parameters(batch: StructureBatch, model: dict[str, Any], settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Queryable scalars of a relaxation: model identity, counts per status, settings with units."""
    counts = status_counts(batch)
    energies = [e for e in batch.column("energy_per_atom_eV") if e is not None]
    unsupported = sorted({el for elements in batch.column("unsupported_elements") if elements for el in elements})
    return {
        "mlip": model.get("name"),
        "model_name": model.get("model_name"),
        "package": model.get("package"),
        "package_version": model.get("package_version"),
        "weights_sha256": model.get("weights_sha256"),
        "n_rows": len(batch),
        "counts": counts,
        **{f"n_{status}": n for status, n in counts.items()},
        "unsupported_elements": unsupported,
        "fmax_eV_per_A": settings.get("fmax"),
        "max_steps": settings.get("max_steps"),
        "maxstep_A": settings.get("maxstep"),
        "cell_filter": settings.get("cell_filter"),
        "optimizer": settings.get("optimizer"),
        "min_energy_per_atom_eV": min(energies) if energies else None,
        **extra,
    }


class MlipRelaxParser(BattgenParser):
    """Attach the relaxed batch, output parameters and arrays; 4xx when rows need attention."""

    def parse_outputs(self, summary: dict[str, Any]) -> ExitCode | None:
        batch = self.read_batch(OUTPUT_FILENAME)
        records = self.read_json(RECORDS_FILENAME)
        outputs = summary.get("outputs") or {}
        if len(records.get("records", [])) != len(batch) or batch.row_ids != [r["row_id"] for r in records["records"]]:
            raise ParsingError(self.exit_codes.ERROR_OUTPUT_UNREADABLE.format(
                error=f"{RECORDS_FILENAME} does not match the rows of {OUTPUT_FILENAME}"))
        if "relax_status" not in batch.summary()["columns"] and len(batch):
            raise ParsingError(self.exit_codes.ERROR_OUTPUT_UNREADABLE.format(
                error=f"{OUTPUT_FILENAME} has no relax_status column"))

        parameters = relax_parameters(
            batch, outputs.get("model", {}), outputs.get("settings", {}),
            wall_time_s=summary.get("wall_time_s"), relax_wall_time_s=outputs.get("relax_wall_time_s"),
            versions=summary.get("versions", {}), rows_from_checkpoint=outputs.get("rows_from_checkpoint", 0),
        )
        self.out("relaxed_structures", StructureBatchData(batch))
        self.out("output_parameters", orm.Dict(parameters))
        self.out("output_arrays", relax_arrays(batch))

        counts = parameters["counts"]
        if counts["exploded"]:
            return self.exit_codes.WARNING_EXPLODED.format(n=counts["exploded"])
        if counts["not_converged"]:
            return self.exit_codes.WARNING_NOT_CONVERGED.format(n=counts["not_converged"])
        if counts["unsupported_element"]:
            return self.exit_codes.WARNING_UNSUPPORTED_ELEMENTS.format(
                n=counts["unsupported_element"], elements=", ".join(parameters["unsupported_elements"]))
        return None
