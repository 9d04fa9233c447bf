"""``battgen.mlip.md``: MLIP molecular dynamics of one structure (``battgen md``) followed, when a working ion
is set, by its diffusion analysis (``battgen diffusion``) in the same job.

The full trajectory (``traj/chunk_*.npz``) stays in the remote work directory: it is large and a restart
needs it there. The repository gets the summaries, a down-sampled ``TrajectoryData`` (at most
``downsampled_max_frames`` frames), the MSD (``ArrayData``: time in ps, MSD in Å²) and the MSD figure.
A restart (walltime, or instability with a smaller timestep) copies the chunks and the MD state from
``parent_folder`` on the remote computer and continues from the last complete chunk.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from aiida import orm
from aiida.common import datastructures

from aiida_battgen.calculations.base import BattgenCalcJob
from aiida_battgen.data.model import ModelData

# Mirrors battgen.md (not imported: no torch / ASE MD in this layer); tests check they agree.
STRUCTURE_FILENAME = "structure.json"
MODEL_DIRNAME = "model"
MD_SUMMARY_FILENAME = "md_summary.json"
MD_STATE_FILENAME = "md_state.json"
MD_STATE_ARRAYS_FILENAME = "md_state.npz"
MD_SETUP_FILENAME = "md_setup.json"
MD_INITIAL_STRUCTURE_FILENAME = "md_initial_structure.json"
TRAJ_DIRNAME = "traj"
DOWNSAMPLED_FILENAME = "trajectory.extxyz"
MSD_FILENAME = "msd.npz"
ANALYSIS_DIRNAME = "analysis"
DIFFUSION_RESULTS_FILENAME = "diffusion_results.json"
MSD_FIGURE_FILENAME = "msd.png"
# Files a restart needs from the interrupted run (the chunks are copied as a directory).
RESTART_FILES = (MD_STATE_FILENAME, MD_STATE_ARRAYS_FILENAME, MD_SETUP_FILENAME, MD_INITIAL_STRUCTURE_FILENAME,
                 TRAJ_DIRNAME)

MD_KEYS = {
    "mlip", "device", "temperature_K", "timestep_fs", "npt_time_ps", "nvt_time_ps", "pressure_GPa",
    "bulk_modulus_GPa", "taut_fs", "taup_fs", "nhc_chain_length", "npt_barostat", "nvt_thermostat", "nvt_cell",
    "sample_every", "chunk_steps", "seed", "max_temperature_factor", "max_wall_time_s", "supercell_min_atoms",
    "working_ion", "vacancy_fraction", "vacancy_count", "vacancy_seed", "downsampled_max_frames",
}
ANALYSIS_KEYS = {
    "charge", "phase", "skip_time_ps", "smoothed", "uncertainty", "n_blocks", "kinisi_samples", "seed",
    "hop_distance_A", "hop_smoothing_fs", "min_hops", "min_msd_exponent",
}


def validate_md_parameters(parameters: orm.Dict, _=None) -> str | None:
    values = parameters.get_dict()
    unknown = sorted(set(values) - MD_KEYS)
    if unknown:
        return f"unknown MD parameter(s) {unknown}; allowed: {sorted(MD_KEYS)} (units in the names)"
    for key in ("temperature_K", "timestep_fs", "nvt_time_ps"):
        value = values.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            return f"`{key}` must be a positive number, got {value!r}"
    return None


def validate_analysis_parameters(parameters: orm.Dict, _=None) -> str | None:
    unknown = sorted(set(parameters.get_dict()) - ANALYSIS_KEYS)
    if unknown:
        return f"unknown diffusion-analysis parameter(s) {unknown}; allowed: {sorted(ANALYSIS_KEYS)}"
    return None


def validate_md_inputs(inputs, _=None) -> str | None:
    model = inputs.get("model")
    if model is not None and model.kind != "potential":
        return f"model <{model.pk}> is a {model.kind!r} model, not an interatomic potential"
    parameters = inputs.get("parameters")  # absent when the namespace is exposed without it (ConductivityWorkChain)
    if "analysis" in inputs and parameters is not None and not parameters.get_dict().get("working_ion"):
        return "`analysis` needs `parameters.working_ion` (whose diffusion to analyse)"
    return None


class MdCalculation(BattgenCalcJob):
    """NPT equilibration + NVT production with an MLIP, then D, σ and hops of the working ion."""

    COMMAND = "md"
    OUTPUT_FILES = (MD_SUMMARY_FILENAME, DOWNSAMPLED_FILENAME, MSD_FILENAME)

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.inputs["metadata"]["options"]["parser_name"].default = "battgen.mlip.md"
        spec.input("structure", valid_type=orm.StructureData, help="The cell (a supercell is built if asked).")
        spec.input("parameters", valid_type=orm.Dict, validator=validate_md_parameters,
                   help="`battgen md` settings with units in the names: temperature_K, timestep_fs, npt_time_ps, "
                        "nvt_time_ps, working_ion, vacancy_fraction, supercell_min_atoms, mlip ...")
        spec.input("analysis", valid_type=orm.Dict, required=False, validator=validate_analysis_parameters,
                   help="`battgen diffusion` settings (uncertainty, skip_time_ps, hop_distance_A ...); given -> the "
                        "job also computes D and σ of the working ion.")
        spec.input("model", valid_type=ModelData, required=False,
                   help="A trained interatomic potential (battgen.model of kind potential, e.g. NequIP).")
        spec.input("parent_folder", valid_type=orm.RemoteData, required=False,
                   help="Work directory of an interrupted MD run: continue from its last complete chunk.")
        spec.inputs.validator = validate_md_inputs
        spec.output("output_parameters", valid_type=orm.Dict,
                    help="MD summary (steps, mean T in K, mean P in GPa, energy drift in eV/atom/ps, status) and, "
                         "with analysis, diffusivity_cm2_per_s, conductivity_mS_per_cm, hops and flags.")
        spec.output("trajectory", valid_type=orm.TrajectoryData, required=False,
                    help="Down-sampled trajectory (positions in Å, cells in Å).")
        spec.output("msd", valid_type=orm.ArrayData, required=False, help="MSD: time_ps and msd_A2_<species>.")
        spec.output("msd_figure", valid_type=orm.SinglefileData, required=False, help="MSD vs time (PNG).")
        spec.default_output_node = "output_parameters"
        spec.exit_code(410, "WARNING_MD_INCOMPLETE", message="The run stopped at its wall-time budget after {steps} steps.")
        spec.exit_code(411, "ERROR_MD_UNSTABLE", message="The MD became unstable at step {step}: {reason}")
        spec.exit_code(412, "ERROR_ANALYSIS_FAILED", message="The diffusion analysis failed: {error}")

    def build_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"input": STRUCTURE_FILENAME, "progress": False, "restart": True}
        config.update(self.inputs.parameters.get_dict())
        if "model" in self.inputs:
            config["model_path"] = MODEL_DIRNAME
            config.setdefault("mlip", "nequip")
        return config

    def input_files(self) -> list[tuple[str, str, str]]:
        if "model" in self.inputs:
            return [(self.inputs.model.uuid, "", MODEL_DIRNAME)]
        return []

    def prepare_for_submission(self, folder) -> datastructures.CalcInfo:
        structure = self.inputs.structure.get_pymatgen_structure()
        with folder.open(STRUCTURE_FILENAME, "w", encoding="utf-8") as handle:
            handle.write(structure.to_json())
        calcinfo = super().prepare_for_submission(folder)
        if "parent_folder" in self.inputs:
            parent = self.inputs.parent_folder
            calcinfo.remote_copy_list = [
                (parent.computer.uuid, f"{parent.get_remote_path()}/{name}", name) for name in RESTART_FILES
            ]
        if "analysis" in self.inputs:
            analysis = {"trajectories": [".."], "working_ion": self.inputs.parameters["working_ion"],
                        **self.inputs.analysis.get_dict()}
            folder.get_subfolder(ANALYSIS_DIRNAME, create=True)
            with folder.open(f"{ANALYSIS_DIRNAME}/config.yaml", "w", encoding="utf-8") as handle:
                handle.write(yaml.safe_dump(analysis, sort_keys=False))
            codeinfo = datastructures.CodeInfo()
            codeinfo.code_uuid = self.inputs.code.uuid
            codeinfo.cmdline_params = ["diffusion", "--config", f"{ANALYSIS_DIRNAME}/config.yaml",
                                       "--workdir", ANALYSIS_DIRNAME]
            codeinfo.stdout_name = f"{ANALYSIS_DIRNAME}/battgen.out"
            codeinfo.stderr_name = f"{ANALYSIS_DIRNAME}/battgen.err"
            calcinfo.codes_info.append(codeinfo)
            calcinfo.codes_run_mode = datastructures.CodeRunMode.SERIAL
            calcinfo.retrieve_list += [
                (f"{ANALYSIS_DIRNAME}/{name}", ".", 2)
                for name in ("battgen-summary.yaml", DIFFUSION_RESULTS_FILENAME, MSD_FIGURE_FILENAME, "battgen.err")
            ]
        return calcinfo


def md_stability_monitor(node, transport, max_stall_s: int | None = None) -> str | None:
    """CalcJob monitor (``battgen.md_stability``): kill a run whose MD state says it went unstable (temperature
    runaway, non-finite energies or forces) or, with ``max_stall_s``, whose state file stopped advancing."""
    import tempfile
    import time

    path = f"{node.get_remote_workdir()}/{MD_STATE_FILENAME}"
    if not transport.isfile(path):
        return None
    with tempfile.TemporaryDirectory() as scratch:
        local = f"{scratch}/{MD_STATE_FILENAME}"
        transport.getfile(path, local)
        try:
            with open(local, encoding="utf-8") as handle:
                state = json.load(handle)
        except ValueError:
            return None  # being rewritten: look again at the next poll
    if state.get("status") == "unstable":
        return f"MD unstable at step {state.get('unstable_at_step')}: {state.get('unstable_reason')}"
    if max_stall_s is not None and time.time() - transport.get_attribute(path).st_mtime > max_stall_s:
        return f"MD state not updated for more than {max_stall_s} s"
    return None
