"""``battgen.channels``: Zeo++ channel analysis of a StructureBatchData by running ``battgen channels``."""

from __future__ import annotations

from typing import Any

from aiida import orm

from aiida_battgen.calculations.base import BattgenCalcJob, settings_validator, validate_nonempty_batch
from aiida_battgen.data.batch import StructureBatchData
from battgen.contracts.channels import INPUT_FILENAME, ChannelSettings
from battgen.contracts.channels import OUTPUT_FILES as CHANNEL_FILES


validate_channel_parameters = settings_validator(ChannelSettings, job_values={"input": INPUT_FILENAME})


class ChannelAnalysisCalculation(BattgenCalcJob):
    """Largest included / free sphere, channel radius, dimensionality, void and packing fraction per row."""

    COMMAND = "channels"
    OUTPUT_FILES = CHANNEL_FILES

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.inputs["metadata"]["options"]["parser_name"].default = "battgen.channels"
        spec.input("structures", valid_type=StructureBatchData, validator=validate_nonempty_batch,
                   help="The structures to analyse (row ids are kept).")
        spec.input("parameters", valid_type=orm.Dict, required=False, validator=validate_channel_parameters,
                   help="`battgen channels` settings: " + ChannelSettings.help())
        spec.output("analysed_structures", valid_type=StructureBatchData,
                    help="The input rows with largest_included_sphere_A, largest_free_sphere_A, "
                         "largest_included_sphere_along_free_path_A (diameters, Å), channel_radius_A (Å, = Df/2), "
                         "channel_dimensionality (0-3), void_fraction, packing_fraction (volume fractions).")
        spec.output("output_parameters", valid_type=orm.Dict,
                    help="Rows analysed / failed, settings, units, channel radius statistics (Å), rows per "
                         "dimensionality, wall time (s).")
        spec.output("output_arrays", valid_type=orm.ArrayData,
                    help="Per-row arrays: channel_radius_A (Å), largest_included_sphere_A (Å), "
                         "largest_free_sphere_A (Å), channel_dimensionality, void_fraction, packing_fraction; NaN "
                         "(or -1) where a row failed; row_ids.")
        spec.output("table", valid_type=orm.SinglefileData,
                    help="CSV table of the results (units in the header names).")
        spec.output("figure", valid_type=orm.SinglefileData, help="Channel-radius histogram and void fraction (PNG).")
        spec.default_output_node = "output_parameters"
        spec.exit_code(410, "WARNING_ROWS_FAILED", message="{n} row(s) could not be analysed (outputs attached).")

    def build_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"input": INPUT_FILENAME, "progress": False}
        if "parameters" in self.inputs:
            config.update(self.inputs.parameters.get_dict())
        return config

    def input_files(self) -> list[tuple[str, str, str]]:
        structures = self.inputs.structures
        return [(structures.uuid, structures.FILENAME, INPUT_FILENAME)]
