"""Base CalcJob for every ``battgen <command>`` run: writes a config YAML (+ input files), runs the CLI,
retrieves the outputs and the summary.

Subclasses set :attr:`BattgenCalcJob.COMMAND` and :attr:`BattgenCalcJob.OUTPUT_FILES`, add their own
inputs, outputs and exit codes in ``define`` and implement :meth:`BattgenCalcJob.build_config` (the
command's YAML settings) and, if they need input files, :meth:`BattgenCalcJob.input_files`.

Exit codes below 400 automatically invalidate caching (a broken run must never be reused), like
``aiida_quantumespresso.calculations.CalcJob``; 4xx codes are recoverable and keep partial outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import yaml
from aiida import engine
from aiida.common import datastructures
from aiida.engine.processes.process_spec import CalcJobProcessSpec

from battgen.cli import SUMMARY_FILENAME
from battgen.progress import PROGRESS_FILENAME

CONFIG_FILENAME = "config.yaml"
STDOUT_FILENAME = "battgen.out"
STDERR_FILENAME = "battgen.err"


def settings_validator(settings, prefix: str = "parameters", job_values: Mapping[str, Any] | None = None):
    """A port validator that checks a ``Dict`` with a command's settings model (``battgen.contracts``) at submit
    time; ``job_values``: what ``build_config`` writes itself (needed by models with required job fields)."""

    def validator(parameters, _=None) -> str | None:
        return settings.parameters_error(parameters.get_dict(), prefix=prefix, job_values=job_values)

    validator.__doc__ = f"``battgen {settings.COMMAND}`` settings ({settings.__name__}) at submit time."
    return validator


def validate_nonempty_batch(structures, _=None) -> str | None:
    """Port validator shared by the CalcJobs that take a ``structures`` batch: an empty batch is bad input."""
    if structures.n_rows == 0:
        return "the input batch `structures` is empty"
    return None


class BattgenCalcJobProcessSpec(CalcJobProcessSpec):
    """Process spec where every exit code below 400 invalidates the cache unless explicitly told otherwise."""

    def exit_code(self, status: int, label: str, message: str, invalidates_cache: bool | None = None) -> None:
        if invalidates_cache is None:
            invalidates_cache = status < 400
        super().exit_code(status, label, message, invalidates_cache=invalidates_cache)


class BattgenCalcJob(engine.CalcJob):
    """Run one ``battgen <COMMAND> --config config.yaml --workdir .`` and retrieve its outputs."""

    _spec_class = BattgenCalcJobProcessSpec

    COMMAND: ClassVar[str] = ""
    # Files the command writes (relative to the working directory) that the parser reads.
    OUTPUT_FILES: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def define(cls, spec: BattgenCalcJobProcessSpec) -> None:  # type: ignore[override]
        super().define(spec)
        spec.inputs["metadata"]["options"]["resources"].default = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
        spec.inputs["metadata"]["options"]["withmpi"].default = False
        spec.inputs["metadata"]["options"]["input_filename"].default = CONFIG_FILENAME
        spec.inputs["metadata"]["options"]["output_filename"].default = STDOUT_FILENAME
        spec.input("metadata.options.error_filename", valid_type=str, default=STDERR_FILENAME)
        spec.input("metadata.options.num_threads", valid_type=int, required=False,
                   help="Compute threads of the job (OpenMP, MKL, torch; passed as `battgen --threads`). "
                        "Default: the job's cpus from `resources` (num_cores_per_mpiproc, else "
                        "num_cores_per_machine, else num_mpiprocs_per_machine, else tot_num_mpiprocs).")

        # 3xx: the run left nothing usable (invalidate the cache).
        spec.exit_code(300, "ERROR_MISSING_OUTPUT_FILES", message="An output file of the command was not retrieved: {files}.")
        spec.exit_code(301, "ERROR_OUTPUT_UNREADABLE", message="An output file is unreadable or truncated: {error}")
        spec.exit_code(302, "ERROR_SUMMARY_MISSING", message=f"The summary file {SUMMARY_FILENAME} was not retrieved or is not YAML.")
        spec.exit_code(303, "ERROR_CLI_INVALID_INPUT", message="The battgen CLI rejected its input: {error}")
        spec.exit_code(304, "ERROR_CLI_FAILED", message="The battgen CLI failed: {error}")

    # --- hooks for subclasses -----------------------------------------------------------------
    def build_config(self) -> dict[str, Any]:
        """The YAML settings of the command (plain Python types)."""
        raise NotImplementedError

    def input_files(self) -> list[tuple[str, str, str]]:
        """``local_copy_list`` entries ``(node uuid, file in its repository, name in the workdir)``."""
        return []

    # --- the submission -----------------------------------------------------------------------
    def num_threads(self) -> int:
        """Threads for the job: the explicit option, else the cpus its resources ask for (at least 1)."""
        options = self.inputs.metadata.options
        if options.get("num_threads") is not None:
            if options.num_threads < 1:
                raise ValueError(f"metadata.options.num_threads must be at least 1, got {options.num_threads}")
            return int(options.num_threads)
        resources = dict(options.resources)
        for key in ("num_cores_per_mpiproc", "num_cores_per_machine", "num_mpiprocs_per_machine", "tot_num_mpiprocs"):
            if resources.get(key):
                return max(1, int(resources[key]))
        return 1

    def thread_arguments(self) -> list[str]:
        """``battgen`` command-line arguments that set the job's threads."""
        return ["--threads", str(self.num_threads())]

    def prepare_for_submission(self, folder) -> datastructures.CalcInfo:
        if not self.COMMAND:
            raise NotImplementedError(f"{type(self).__name__} does not set COMMAND")
        options = self.inputs.metadata.options
        config_text = yaml.safe_dump(self.build_config(), sort_keys=False)
        with folder.open(options.input_filename, "w", encoding="utf-8") as handle:
            handle.write(config_text)

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = [self.COMMAND, "--config", options.input_filename, "--workdir", ".",
                                   *self.thread_arguments()]
        codeinfo.stdout_name = options.output_filename
        codeinfo.stderr_name = options.error_filename

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        # Inputs are copied straight from the node repositories: nothing is duplicated in the sandbox.
        calcinfo.local_copy_list = self.input_files()
        calcinfo.retrieve_list = [SUMMARY_FILENAME, PROGRESS_FILENAME, options.output_filename, options.error_filename,
                                  *self.OUTPUT_FILES]
        return calcinfo
