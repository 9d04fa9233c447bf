"""``battgen.insertion``: insertion potentials of working ions in the channels of a host (``battgen insertion``)."""

from __future__ import annotations

import gzip
import io
from typing import Any

from aiida import orm
from aiida.common import datastructures

from aiida_battgen.calculations.base import BattgenCalcJob, validate_parameters_dict
from aiida_battgen.data.batch import StructureBatchData

# Mirrors battgen.insertion.potential (tests check they agree).
HOST_FILENAME = "host.jsonl.gz"
DENSITY_FILENAME = "CHGCAR"
OUTPUT_BATCH = "inserted.jsonl.gz"
OUTPUT_TABLE_CSV = "insertion.csv"
OUTPUT_TABLE_JSON = "insertion.json"
OUTPUT_FIGURE = "insertion.png"
ION_CHARGES = {"Li": 1, "Na": 1, "K": 1, "Mg": 2, "Ca": 2, "Zn": 2, "Al": 3}

PARAMETERS_SCHEMA: dict[str, tuple[type | tuple[type, ...], str]] = {
    "ions": (list, f"working ions to insert, from {sorted(ION_CHARGES)}; default [Li]"),
    "n_ions": (list, "numbers of ions per insertion (each a positive int); default [1]"),
    "reference_energies_eV_per_atom": ((dict, type(None)), "ion -> reference energy in eV/atom (default: bulk "
                                                           "metal relaxed with the same MLIP)"),
    "mlip": (str, "MLIP name (chgnet, sevennet, m3gnet); default chgnet"),
    "model_path": ((str, type(None)), "weights on the remote computer instead of the pretrained model"),
    "device": (str, "torch device: cpu or cuda"),
    "fmax": ((float, int), "force convergence in eV/Å; default 0.05"),
    "max_steps": (int, "optimiser steps per relaxation; default 300"),
    "cell_filter": ((str, type(None)), "None (fixed cell, default), 'frechet' or 'exp'"),
    "optimizer": (str, "FIRE, BFGS or LBFGS"),
    "supercell": (list, "supercell of the host before insertion, three positive ints; default [1, 1, 1]"),
    "max_site_types": (int, "site types to try in all, widest first; default 3"),
    "sites_per_channel": (int, "site types to try per channel, widest first; default 1"),
    "min_site_radius_A": ((float, int), "smallest empty-sphere radius of a site in Å; default 0.5"),
    "min_distance_A": ((float, int), "smallest site-to-framework distance in Å; default 1.6"),
    "radii": ((str, dict), "radii for the void analysis: 'crystal', 'zeopp' or element -> Å"),
    "mobile_ion": ((str, type(None)), "element removed from the host before the void analysis"),
}


def validate_insertion_parameters(parameters: orm.Dict, _=None) -> str | None:
    values = parameters.get_dict()
    error = validate_parameters_dict(values, PARAMETERS_SCHEMA)
    if error:
        return error
    unknown_ions = [ion for ion in values.get("ions", []) if ion not in ION_CHARGES]
    if unknown_ions:
        return f"unknown working ion(s) {unknown_ions}; known: {sorted(ION_CHARGES)}"
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in values.get("n_ions", [1])):
        return f"n_ions must be positive integers, got {values['n_ions']}"
    if "fmax" in values and not values["fmax"] > 0:
        return f"fmax must be > 0 eV/Å, got {values['fmax']}"
    if values.get("cell_filter") not in (None, "frechet", "exp"):
        return f"cell_filter must be None, 'frechet' or 'exp', got {values['cell_filter']!r}"
    supercell = values.get("supercell", [1, 1, 1])
    if len(supercell) != 3 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in supercell):
        return f"supercell must be three positive integers, got {supercell}"
    return None


class InsertionCalculation(BattgenCalcJob):
    """Find channel sites of a host, insert n ions, relax with an MLIP, V per ion and channel type."""

    COMMAND = "insertion"
    OUTPUT_FILES = (OUTPUT_BATCH, OUTPUT_TABLE_CSV, OUTPUT_TABLE_JSON, OUTPUT_FIGURE)

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.inputs["metadata"]["options"]["parser_name"].default = "battgen.insertion"
        spec.input("structure", valid_type=orm.StructureData, help="The host (empty channels; lengths in Å).")
        spec.input("parameters", valid_type=orm.Dict, required=False, validator=validate_insertion_parameters,
                   help="Settings: " + "; ".join(f"{k}: {d}" for k, (_, d) in PARAMETERS_SCHEMA.items()))
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
