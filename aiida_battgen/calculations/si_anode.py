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

from aiida_battgen.calculations.base import BattgenCalcJob, validate_nonempty_batch
from aiida_battgen.data.batch import StructureBatchData

# Mirror battgen.anode.silicon (not imported: the AiiDA layer stays free of the MLIP stack); a test checks.
INPUT_FILENAME = "structures.jsonl.gz"
COMPOUNDS_FILENAME = "compounds.json"
CHECKPOINT_FILENAME = "si_anode_checkpoint.jsonl"
RELAXED_FILENAME = "relaxed.jsonl.gz"
TABLE_FILENAME = "configurations.csv"
TABLE_JSON_FILENAME = "configurations.json"
SLOPES_FILENAME = "slopes.json"
SLOPES_TABLE_FILENAME = "slopes.csv"
FIGURE_FILENAME = "channel_radius_vs_soc.png"

# Science settings a user may set (units in the names); input/source/restart/progress are set by the job.
SI_ANODE_KEYS = {
    "working_ion", "host_element", "min_capacity_mAh_per_g", "capacity_basis", "max_compounds", "max_sites",
    "primitive_cell", "n_configurations", "max_removed_fraction", "include_fully_lithiated", "seed", "mlip",
    "model_path", "device", "fmax", "max_steps", "cell_filter", "optimizer", "maxstep", "max_volume_factor", "channel_options",
    "max_wall_time_s",
}
_POSITIVE_INTEGERS = ("n_configurations", "max_steps", "max_compounds", "max_sites")
_POSITIVE_NUMBERS = ("fmax", "maxstep", "max_removed_fraction", "max_volume_factor")


def validate_si_anode_parameters(parameters: orm.Dict, _=None) -> str | None:
    """Catch unknown keys and impossible values before submission (the CLI checks everything again)."""
    values = parameters.get_dict()
    unknown = sorted(set(values) - SI_ANODE_KEYS)
    if unknown:
        return f"unknown si-anode parameter(s) {unknown}; allowed: {sorted(SI_ANODE_KEYS)} (units in the names)"
    for key in _POSITIVE_INTEGERS:
        value = values.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            return f"`{key}` must be a positive integer, got {value!r}"
    for key in _POSITIVE_NUMBERS:
        value = values.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            return f"`{key}` must be a positive number, got {value!r}"
    if values.get("max_removed_fraction", 1.0) > 1:
        return f"`max_removed_fraction` must be in (0, 1], got {values['max_removed_fraction']}"
    return None


class SiAnodeCalculation(BattgenCalcJob):
    """Delithiate, relax (MLIP) and analyse the Li channels of Li–Si–X compounds; resumable from its checkpoint."""

    COMMAND = "si-anode"
    OUTPUT_FILES = (COMPOUNDS_FILENAME, RELAXED_FILENAME, TABLE_FILENAME, TABLE_JSON_FILENAME, SLOPES_FILENAME,
                    SLOPES_TABLE_FILENAME, FIGURE_FILENAME)

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.inputs["metadata"]["options"]["parser_name"].default = "battgen.si_anode"
        spec.input("structures", valid_type=StructureBatchData, validator=validate_nonempty_batch,
                   help="Fully lithiated Li–Si–X compounds (one row each; row ids name the compounds).")
        spec.input("parameters", valid_type=orm.Dict, required=False, validator=validate_si_anode_parameters,
                   help="`battgen si-anode` settings, units in the names: min_capacity_mAh_per_g (mAh/g), "
                        "capacity_basis (host | discharged), n_configurations, max_removed_fraction, seed, mlip, "
                        "fmax (eV/Å), max_steps, maxstep (Å), max_volume_factor (relaxation blow-up guard, ratio), "
                        "channel_options, max_wall_time_s (s) ...")
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
