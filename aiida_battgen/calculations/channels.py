"""``battgen.channels``: Zeo++ channel analysis of a StructureBatchData by running ``battgen channels``."""

from __future__ import annotations

from typing import Any

from aiida import orm

from aiida_battgen.calculations.base import BattgenCalcJob, validate_parameters_dict, validate_nonempty_batch
from aiida_battgen.data.batch import StructureBatchData

# Mirrors battgen.channels.analysis (tests check they agree).
INPUT_FILENAME = "structures.jsonl.gz"
OUTPUT_BATCH = "channels.jsonl.gz"
OUTPUT_TABLE_CSV = "channels.csv"
OUTPUT_TABLE_JSON = "channels.json"
OUTPUT_FIGURE = "channels.png"

PARAMETERS_SCHEMA: dict[str, tuple[type | tuple[type, ...], str]] = {
    "mobile_ion": ((str, type(None)), "element removed before the analysis (the ion that moves), e.g. Li"),
    "probe_radius_A": ((float, int, type(None)), "probe radius in Å for the channel dimensionality; default "
                                                 "0.9 × channel radius"),
    "radii": ((str, dict), "atomic radii: 'crystal' (Shannon crystal radii, default), 'zeopp' or element -> Å"),
    "grid_spacing_A": ((float, int), "clearance-grid spacing in Å for void fraction; default 0.2"),
    "engine": (str, "void-analysis engine: 'zeopp' (pyzeo, default) or 'cavd' (CAVD's Voronoi network)"),
}


def validate_channel_parameters(parameters: orm.Dict, _=None) -> str | None:
    values = parameters.get_dict()
    error = validate_parameters_dict(values, PARAMETERS_SCHEMA)
    if error:
        return error
    if values.get("engine", "zeopp") not in ("zeopp", "cavd"):
        return f"engine must be 'zeopp' or 'cavd', got {values['engine']!r}"
    if isinstance(values.get("radii"), str) and values["radii"] not in ("crystal", "zeopp"):
        return f"radii must be 'crystal', 'zeopp' or a mapping element -> Å, got {values['radii']!r}"
    probe = values.get("probe_radius_A")
    if probe is not None and probe < 0:
        return f"probe_radius_A must be ≥ 0 Å, got {probe}"
    if "grid_spacing_A" in values and not values["grid_spacing_A"] > 0:
        return f"grid_spacing_A must be > 0 Å, got {values['grid_spacing_A']}"
    return None


class ChannelAnalysisCalculation(BattgenCalcJob):
    """Largest included / free sphere, channel radius, dimensionality, void and packing fraction per row."""

    COMMAND = "channels"
    OUTPUT_FILES = (OUTPUT_BATCH, OUTPUT_TABLE_CSV, OUTPUT_TABLE_JSON, OUTPUT_FIGURE)

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.inputs["metadata"]["options"]["parser_name"].default = "battgen.channels"
        spec.input("structures", valid_type=StructureBatchData, validator=validate_nonempty_batch,
                   help="The structures to analyse (row ids are kept).")
        spec.input("parameters", valid_type=orm.Dict, required=False, validator=validate_channel_parameters,
                   help="Settings: " + "; ".join(f"{k}: {d}" for k, (_, d) in PARAMETERS_SCHEMA.items()))
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
