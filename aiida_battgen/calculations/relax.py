"""``battgen.mlip.relax``: relax a StructureBatchData with an ML potential by running ``battgen relax``."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from aiida import orm

from aiida_battgen.calculations.base import BattgenCalcJob, validate_parameters_dict, validate_nonempty_batch
from aiida_battgen.data.batch import StructureBatchData

# Mirrors battgen.mlip.relax (not imported here: the AiiDA layer stays free of torch and ASE);
# tests/aiida/test_relax_calcjob.py checks the two stay in sync.
INPUT_FILENAME = "structures.jsonl.gz"
OUTPUT_FILENAME = "relaxed.jsonl.gz"
RECORDS_FILENAME = "relax_records.json"
CHECKPOINT_FILENAME = "relax_checkpoint.jsonl"
RELAX_STATUSES = ("converged", "not_converged", "exploded", "unsupported_element")
CELL_FILTERS = ("frechet", "exp", None)
OPTIMIZERS = ("FIRE", "BFGS", "LBFGS")
MLIP_ENTRY_POINT_GROUP = "battgen.mlips"

PARAMETERS_SCHEMA: dict[str, tuple[type | tuple[type, ...], str]] = {
    "mlip": (str, "MLIP name: chgnet, sevennet, m3gnet (or battgen.<name>); default chgnet"),
    "fmax": ((float, int), "force convergence threshold in eV/Å; default 0.05"),
    "max_steps": (int, "maximum optimiser steps per structure; default 500"),
    "cell_filter": ((str, type(None)), "cell relaxation: 'frechet', 'exp' or None (fixed cell); default 'frechet'"),
    "optimizer": (str, "ASE optimiser: FIRE, BFGS, LBFGS; default FIRE"),
    "maxstep": ((float, int), "largest optimiser step in Å; default 0.2"),
    "model_path": (str, "weights file/directory on the remote computer instead of the pretrained model"),
    "device": (str, "torch device on the remote computer: cpu or cuda; default cpu"),
    "checkpoint": (bool, "append each finished row to relax_checkpoint.jsonl (continued after a kill); default true"),
}
# The parent_folder input is linked under this name; ``battgen relax`` continues from its checkpoint.
PARENT_LINK_NAME = "parent"


def known_mlips() -> list[str]:
    """Short names of the MLIPs registered in the ``battgen.mlips`` entry-point group (no import of them)."""
    return sorted(ep.name.removeprefix("battgen.") for ep in metadata.entry_points(group=MLIP_ENTRY_POINT_GROUP))


def validate_relax_parameters(parameters: orm.Dict, _=None) -> str | None:
    """Reject unknown keys, wrong types and impossible values before anything is submitted."""
    values = parameters.get_dict()
    error = validate_parameters_dict(values, PARAMETERS_SCHEMA)
    if error:
        return error
    if "mlip" in values and values["mlip"].removeprefix("battgen.") not in known_mlips():
        return f"unknown mlip {values['mlip']!r}; available: {', '.join(known_mlips())}"
    for key in ("fmax", "maxstep"):
        if key in values and not values[key] > 0:
            return f"parameter {key!r} must be positive, got {values[key]}"
    if "max_steps" in values and values["max_steps"] < 1:
        return f"parameter 'max_steps' must be at least 1, got {values['max_steps']}"
    if "cell_filter" in values and values["cell_filter"] not in CELL_FILTERS:
        return f"parameter 'cell_filter' must be one of {list(CELL_FILTERS)}, got {values['cell_filter']!r}"
    if "optimizer" in values and values["optimizer"] not in OPTIMIZERS:
        return f"parameter 'optimizer' must be one of {list(OPTIMIZERS)}, got {values['optimizer']!r}"
    return None


class MlipRelaxCalculation(BattgenCalcJob):
    """Relax every row of a structure batch with an MLIP (ASE optimiser + cell filter) on any computer."""

    COMMAND = "relax"
    OUTPUT_FILES = (OUTPUT_FILENAME, RECORDS_FILENAME)

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.inputs["metadata"]["options"]["parser_name"].default = "battgen.mlip.relax"
        spec.input("structures", valid_type=StructureBatchData, validator=validate_nonempty_batch,
                   help="The batch of structures to relax (row ids are kept).")
        spec.input("parameters", valid_type=orm.Dict, required=False, validator=validate_relax_parameters,
                   help="Relaxation settings: " + "; ".join(f"{k}: {d}" for k, (_, d) in PARAMETERS_SCHEMA.items()))

        spec.input("parent_folder", valid_type=orm.RemoteData, required=False,
                   help="Work directory of an interrupted relaxation of the same rows and settings: rows already "
                        "in its checkpoint are taken over instead of being relaxed again (same computer).")
        spec.output("relaxed_structures", valid_type=StructureBatchData,
                    help="Relaxed batch; per-row energy_eV, energy_per_atom_eV, max_force_eV_per_A (eV/Å), "
                         "n_steps, converged, relax_status, volume_change (V_final/V_initial).")
        spec.output("output_parameters", valid_type=orm.Dict,
                    help="Model name, package version, weights sha256, rows per relax status, fmax (eV/Å), "
                         "wall time (s).")
        spec.output("output_arrays", valid_type=orm.ArrayData,
                    help="Per-row arrays: energy_eV (eV), energy_per_atom_eV (eV/atom), max_force_eV_per_A "
                         "(eV/Å), converged, n_steps; NaN where a row was not relaxed.")
        spec.default_output_node = "output_parameters"

        # 4xx: some rows need more work; all outputs are attached.
        spec.exit_code(400, "WARNING_NOT_CONVERGED", message="{n} row(s) did not converge within max_steps.")
        spec.exit_code(401, "WARNING_EXPLODED", message="{n} row(s) exploded (non-finite, huge forces or volume x3).")
        spec.exit_code(402, "WARNING_UNSUPPORTED_ELEMENTS",
                       message="{n} row(s) contain elements the MLIP does not support: {elements}.")

    def build_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"input": INPUT_FILENAME}
        if "parameters" in self.inputs:
            config.update(self.inputs.parameters.get_dict())
        if "parent_folder" in self.inputs:
            config["resume_from"] = f"{PARENT_LINK_NAME}/{CHECKPOINT_FILENAME}"
        return config

    def prepare_for_submission(self, folder):
        calcinfo = super().prepare_for_submission(folder)
        if "parent_folder" in self.inputs:
            # A link, not a copy: the checkpoint may not exist (killed before the first row finished).
            parent = self.inputs.parent_folder
            calcinfo.remote_symlink_list = [(parent.computer.uuid, parent.get_remote_path(), PARENT_LINK_NAME)]
        return calcinfo

    def input_files(self) -> list[tuple[str, str, str]]:
        structures = self.inputs.structures
        return [(structures.uuid, structures.FILENAME, INPUT_FILENAME)]
