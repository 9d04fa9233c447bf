"""``battgen.mlip.relax``: relax a StructureBatchData with an ML potential by running ``battgen relax``."""

from __future__ import annotations

from typing import Any

from aiida import orm

from aiida_battgen.calculations.base import BattgenCalcJob, settings_validator, validate_nonempty_batch
from aiida_battgen.data.batch import StructureBatchData
from battgen.contracts.mlip import CELL_FILTERS, MLIP_ENTRY_POINT_GROUP, OPTIMIZERS, known_mlips  # noqa: F401
from battgen.contracts.relax import (CHECKPOINT_FILENAME, INPUT_FILENAME, OUTPUT_FILENAME,  # noqa: F401
                                     RECORDS_FILENAME, RELAX_STATUSES, RelaxSettings)

# The parent_folder input is linked under this name; ``battgen relax`` continues from its checkpoint.
PARENT_LINK_NAME = "parent"


validate_relax_parameters = settings_validator(RelaxSettings)


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
                   help="`battgen relax` settings: " + RelaxSettings.help())

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

        # The restart wrapper shrinks batch_max_atoms (batched engine) and continues from the checkpoint.
        spec.exit_code(311, "ERROR_OUT_OF_MEMORY", message="Relaxation ran out of memory: {error}")
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
