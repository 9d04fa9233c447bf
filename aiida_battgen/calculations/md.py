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

from aiida_battgen.calculations.base import BattgenCalcJob, settings_validator
from aiida_battgen.data.model import ModelData
from battgen.cli import SUMMARY_FILENAME as BATTGEN_SUMMARY_FILENAME
from battgen.contracts.base import MODEL_DIRNAME
from battgen.contracts.md import (DOWNSAMPLED_FILENAME, MSD_FIGURE_FILENAME, MSD_FILENAME, RESTART_FILES,
                                  RESULTS_FILENAME, STATE_FILENAME, STRUCTURE_FILENAME, SUMMARY_FILENAME,
                                  DiffusionSettings, MdSettings)

ANALYSIS_DIRNAME = "analysis"


validate_md_parameters = settings_validator(MdSettings)


# the job itself sets trajectories and working_ion
validate_analysis_parameters = settings_validator(DiffusionSettings, prefix="analysis",
                                                  job_values={"trajectories": [".."], "working_ion": "Li"})


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
    OUTPUT_FILES = (SUMMARY_FILENAME, DOWNSAMPLED_FILENAME, MSD_FILENAME)

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.inputs["metadata"]["options"]["parser_name"].default = "battgen.mlip.md"
        spec.input("structure", valid_type=orm.StructureData, help="The cell (a supercell is built if asked).")
        spec.input("parameters", valid_type=orm.Dict, validator=validate_md_parameters,
                   help="`battgen md` settings: " + MdSettings.help())
        spec.input("analysis", valid_type=orm.Dict, required=False, validator=validate_analysis_parameters,
                   help="`battgen diffusion` settings; given -> the job also computes D and σ of the working ion: "
                        + DiffusionSettings.help())
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
                                       "--workdir", ANALYSIS_DIRNAME, *self.thread_arguments()]
            codeinfo.stdout_name = f"{ANALYSIS_DIRNAME}/battgen.out"
            codeinfo.stderr_name = f"{ANALYSIS_DIRNAME}/battgen.err"
            calcinfo.codes_info.append(codeinfo)
            calcinfo.codes_run_mode = datastructures.CodeRunMode.SERIAL
            calcinfo.retrieve_list += [
                (f"{ANALYSIS_DIRNAME}/{name}", ".", 2)
                for name in (BATTGEN_SUMMARY_FILENAME, RESULTS_FILENAME, MSD_FIGURE_FILENAME, "battgen.err")
            ]
        return calcinfo


def md_stability_monitor(node, transport, max_stall_s: int | None = None) -> str | None:
    """CalcJob monitor (``battgen.md_stability``): kill a run whose MD state says it went unstable (temperature
    runaway, non-finite energies or forces) or, with ``max_stall_s``, whose state file stopped advancing."""
    import tempfile
    import time

    path = f"{node.get_remote_workdir()}/{STATE_FILENAME}"
    if not transport.isfile(path):
        return None
    with tempfile.TemporaryDirectory() as scratch:
        local = f"{scratch}/{STATE_FILENAME}"
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
