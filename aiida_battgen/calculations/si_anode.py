"""``battgen.si_anode``: Si-anode channel stability of a batch of Li–Si–X compounds (``battgen si-anode``, seed 004).

For every compound of the input batch that passes the capacity filter: ``n_configurations`` seeded random
delithiations + the fully lithiated cell, MLIP relaxation, capacity and channel radius per configuration.
The finished configurations are checkpointed in the remote work directory (``si_anode_checkpoint.jsonl``);
with ``parent_folder`` the job copies that checkpoint and relaxes only what is left. The checkpoint stays
remote; the table, relaxed batch, slopes and figure are retrieved.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common import datastructures

from aiida_battgen.calculations.base import BattgenCalcJob, settings_validator, validate_nonempty_batch
from aiida_battgen.data.batch import StructureBatchData
from battgen.contracts.si_anode import CHECKPOINT_FILENAME, INPUT_FILENAME, RETRIEVED_FILES, SiAnodeSettings


validate_si_anode_parameters = settings_validator(SiAnodeSettings)


class SiAnodeCalculation(BattgenCalcJob):
    """Delithiate, relax (MLIP) and analyse the Li channels of Li–Si–X compounds; resumable from its checkpoint."""

    COMMAND = "si-anode"
    OUTPUT_FILES = RETRIEVED_FILES

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.inputs["metadata"]["options"]["parser_name"].default = "battgen.si_anode"
        spec.input("structures", valid_type=StructureBatchData, validator=validate_nonempty_batch,
                   help="Fully lithiated Li–Si–X compounds (one row each; row ids name the compounds).")
        spec.input("parameters", valid_type=orm.Dict, required=False, validator=validate_si_anode_parameters,
                   help="`battgen si-anode` settings: " + SiAnodeSettings.help())
        spec.input("parent_folder", valid_type=orm.RemoteData, required=False,
                   help="Work directory of an interrupted run: its checkpoint is copied and finished "
                        "configurations are not relaxed again.")
        spec.output("output_parameters", valid_type=orm.Dict,
                    help="Status, counts (compounds, configurations, resumed), relax statuses, MLIP identity "
                         "(name, version, weights sha256), the CLI's ranking (slopes in Å per unit SOC), units.")
        spec.output("relaxed_structures", valid_type=StructureBatchData, required=False,
                    help="Every relaxed configuration; per row state_of_charge (Li left / Li fully lithiated), "
                         "removed_site_indices, energy_per_atom_eV (eV/atom), channel_radius_A (Å), "
                         "gravimetric_capacity_mAh_per_g (mAh/g), volume_A3 (Å³).")
        spec.output("configurations", valid_type=orm.ArrayData, required=False,
                    help="Per-configuration table as arrays (row order of relaxed_structures): compound_ids, "
                         "state_of_charge (0-1), channel_radius_A (Å, NaN if the analysis failed), "
                         "gravimetric_capacity_mAh_per_g (mAh/g), energy_per_atom_eV (eV/atom), volume_A3 (Å³), "
                         "used_in_fit; units in the `units` attribute.")
        spec.output("compounds", valid_type=orm.Dict, required=False,
                    help="Capacity filter of the input compounds (gravimetric_capacity_mAh_per_g in mAh/g, passed, "
                         "reason).")
        spec.output("figure", valid_type=orm.SinglefileData, required=False,
                    help="Channel radius (Å) vs state of charge per compound with the fitted line (PNG).")
        spec.default_output_node = "output_parameters"
        spec.exit_code(410, "WARNING_INCOMPLETE",
                       message="The run stopped at its wall-time budget with {done} of {total} configurations done.")

    def build_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"input": INPUT_FILENAME, "progress": False, "restart": True}
        if "parameters" in self.inputs:
            config.update(self.inputs.parameters.get_dict())
        return config

    def input_files(self) -> list[tuple[str, str, str]]:
        structures = self.inputs.structures
        return [(structures.uuid, structures.FILENAME, INPUT_FILENAME)]

    def prepare_for_submission(self, folder) -> datastructures.CalcInfo:
        calcinfo = super().prepare_for_submission(folder)
        if "parent_folder" in self.inputs:
            parent = self.inputs.parent_folder
            # A missing checkpoint (killed before the first configuration finished) is skipped by AiiDA.
            calcinfo.remote_copy_list = [
                (parent.computer.uuid, f"{parent.get_remote_path()}/{CHECKPOINT_FILENAME}", CHECKPOINT_FILENAME)]
        return calcinfo
