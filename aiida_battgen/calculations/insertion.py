"""``battgen.insertion``: insertion potentials of working ions in the channels of a host (``battgen insertion``)."""

from __future__ import annotations

import gzip
import io
from typing import Any

from aiida import orm
from aiida.common import datastructures

from aiida_battgen.calculations.base import BattgenCalcJob, settings_validator
from aiida_battgen.data.batch import StructureBatchData
from battgen.contracts.insertion import DENSITY_FILENAME, HOST_FILENAME, InsertionSettings
from battgen.contracts.insertion import OUTPUT_FILES as INSERTION_FILES


validate_insertion_parameters = settings_validator(InsertionSettings, job_values={"input": HOST_FILENAME})


class InsertionCalculation(BattgenCalcJob):
    """Find channel sites of a host, insert n ions, relax with an MLIP, V per ion and channel type."""

    COMMAND = "insertion"
    OUTPUT_FILES = INSERTION_FILES

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.inputs["metadata"]["options"]["parser_name"].default = "battgen.insertion"
        spec.input("structure", valid_type=orm.StructureData, help="The host (empty channels; lengths in Å).")
        spec.input("parameters", valid_type=orm.Dict, required=False, validator=validate_insertion_parameters,
                   help="`battgen insertion` settings: " + InsertionSettings.help())
        spec.input("charge_density", valid_type=orm.SinglefileData, required=False,
                   help="A DFT charge density (CHGCAR or cube) of the host + ion for the optional Bader analysis; "
                        "run only where a `bader` binary is on PATH, otherwise a message is recorded.")
        spec.output("output_parameters", valid_type=orm.Dict,
                    help="Per (ion, n_ions, site type): voltage_V (V), insertion_energy_per_ion_eV (eV/ion), "
                         "energies (eV), reference_energy_eV_per_atom (eV/atom) and what the reference is; the "
                         "formula; site types with radius (Å); Bader result or message.")
        spec.output("inserted_structures", valid_type=StructureBatchData,
                    help="Relaxed host + ion structures, one row per insertion, with the result columns "
                         "(voltage_V in V, energies in eV).")
        spec.output("table", valid_type=orm.SinglefileData, help="CSV table: V per ion per channel (units in names).")
        spec.output("figure", valid_type=orm.SinglefileData, help="Insertion potential per ion and channel (PNG).")
        spec.default_output_node = "output_parameters"
        spec.exit_code(410, "WARNING_NOT_CONVERGED",
                       message="{n} relaxation(s) did not converge within max_steps (outputs attached).")

    def build_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"input": HOST_FILENAME, "progress": False}
        if "parameters" in self.inputs:
            config.update(self.inputs.parameters.get_dict())
        if "charge_density" in self.inputs:
            config["bader"] = {"density_file": DENSITY_FILENAME}
        return config

    def input_files(self) -> list[tuple[str, str, str]]:
        if "charge_density" in self.inputs:
            density = self.inputs.charge_density
            return [(density.uuid, density.filename, DENSITY_FILENAME)]
        return []

    def prepare_for_submission(self, folder) -> datastructures.CalcInfo:
        from battgen.batch import StructureBatch

        host = self.inputs.structure.get_pymatgen_structure()
        text = io.StringIO()
        StructureBatch.from_structures([host], meta=[{"row_id": "host"}]).write_stream(text)
        with folder.open(HOST_FILENAME, "wb") as handle:
            handle.write(gzip.compress(text.getvalue().encode("utf-8"), mtime=0))
        return super().prepare_for_submission(folder)
