"""``BattgenRestartWorkChain``: the one restart base of every ``battgen`` CalcJob wrapper.

A subclass names its CalcJob (``_process_class``) and the namespace its inputs are exposed in
(``_namespace``) and adds handlers only for its command's own exit codes (4xx). The failures every
``battgen`` CalcJob shares are handled here once, keyed to the exit codes of
:class:`aiida_battgen.calculations.base.BattgenCalcJob`:

==========================  ===========  ==========================================================================
handler                     exit codes   action
==========================  ===========  ==========================================================================
``handle_node_failure``     140          resubmit (from the checkpoint where the CalcJob takes ``parent_folder``),
                                         within the ``outputs_lost_retries`` budget, then 501
``handle_out_of_walltime``  120          continue from the checkpoint (``parent_folder``) with
                                         ``max_wallclock_seconds`` times ``walltime_factor``
``handle_outputs_lost``     300, 302     resubmit (from the checkpoint where there is one) within the
                                         ``outputs_lost_retries`` budget, then 501
``handle_output_unreadable`` 301         resubmit ``output_unreadable_retries`` times, then 501
``handle_cli_rejected``     303, 304     the CLI refused its input or crashed: deterministic, fail at once (502)
==========================  ===========  ==========================================================================

The knobs are class-level ``defaults`` (the aiida-quantumespresso ``PwBaseWorkChain`` pattern); a
subclass overrides the ones it needs, e.g. a checkpointed command (MD, training) sets
``outputs_lost_retries=None``: each resubmission continues from the checkpoint and makes progress, so only
``max_iterations`` bounds them. Failures a subclass owns get its own exit codes (500-599 band, 51x and up),
never the generic ones.
"""

from __future__ import annotations

from typing import Any, ClassVar

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ExitCode, ProcessHandlerReport, process_handler, while_

from aiida_battgen.calculations.base import BattgenCalcJob
from aiida_battgen.tools.progress import add_progress_monitor

CALC_EXIT = BattgenCalcJob.exit_codes  # the exit codes every battgen CalcJob has (scheduler 1xx, output 3xx)


class BattgenRestartWorkChain(BaseRestartWorkChain):
    """Shared outline, input exposure and the handlers of the failures every battgen CalcJob shares."""

    _process_class = BattgenCalcJob
    _namespace = ""
    _namespace_help = ""

    defaults: ClassVar[AttributeDict] = AttributeDict({
        "walltime_factor": 2.0,  # max_wallclock_seconds multiplier after a walltime kill (1: keep it)
        "max_wallclock_seconds": None,  # s; cap of the increased walltime (None: no cap)
        "outputs_lost_retries": 1,  # resubmissions after 300/302/140 (None: until max_iterations)
        "output_unreadable_retries": 1,  # resubmissions after 301
    })

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        options = {"help": cls._namespace_help} if cls._namespace_help else None
        spec.expose_inputs(cls._process_class, namespace=cls._namespace, namespace_options=options)
        spec.expose_outputs(cls._process_class)
        spec.outline(cls.setup, while_(cls.should_run_process)(cls.run_process, cls.inspect_process), cls.results)
        spec.exit_code(501, "ERROR_OUTPUTS_LOST_TWICE",
                       message="The calculation lost its outputs again after the allowed resubmissions (exit {status}); "
                               "giving up.")
        spec.exit_code(502, "ERROR_CLI_REJECTED",
                       message="The battgen CLI rejected the input or crashed (exit {status}); a restart cannot help.")
        spec.exit_code(503, "ERROR_BATCH_SIZE_EXHAUSTED",
                       message="Out of memory (exit {status}) with one structure per batch already; giving up.")

    # --- helpers for every subclass ------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(self._process_class, self._namespace))
        add_progress_monitor(self.ctx.inputs)
        self.ctx.retries = {}  # retry budget name -> resubmissions so far (ctx is checkpointed: plain types)

    def report_error_handled(self, node, action: str) -> None:
        """Log the failure of ``node`` and what is done about it."""
        self.report(f"{node.process_label}<{node.pk}> failed with exit status {node.exit_status}: {node.exit_message}")
        self.report(f"Action taken: {action}")

    def _parameters(self) -> dict[str, Any]:
        return self.ctx.inputs.parameters.get_dict() if "parameters" in self.ctx.inputs else {}

    @classmethod
    def is_resumable(cls) -> bool:
        """Whether the CalcJob continues from a previous run's checkpoint (it takes ``parent_folder``)."""
        return "parent_folder" in cls._process_class.spec().inputs

    def resume_from_checkpoint(self, node) -> str:
        """Point the next run at ``node``'s remote folder (its checkpoint); returns what was done, for the report."""
        if self.is_resumable() and "remote_folder" in node.outputs:
            self.ctx.inputs.parent_folder = node.outputs.remote_folder
            return f"continuing from the checkpoint in RemoteData<{node.outputs.remote_folder.pk}>"
        return "resubmitting the same inputs"

    def _retry(self, key: str, node, action: str, limit: int | None = 1,
               exit_code: ExitCode | None = None) -> ProcessHandlerReport:
        """Resubmit within a budget of ``limit`` retries for ``key`` (None: unbounded, ``max_iterations`` bounds
        it); past the budget fail with ``exit_code`` (default ERROR_OUTPUTS_LOST_TWICE)."""
        retries = dict(self.ctx.get("retries", {}))
        if limit is not None and retries.get(key, 0) >= limit:
            self.report_error_handled(node, f"{key}: already resubmitted {retries[key]} time(s): aborting")
            exit_code = exit_code or self.exit_codes.ERROR_OUTPUTS_LOST_TWICE
            return ProcessHandlerReport(True, exit_code.format(status=node.exit_status))
        retries[key] = retries.get(key, 0) + 1
        self.ctx.retries = retries
        self.report_error_handled(node, action)
        return ProcessHandlerReport(True)

    def abort_deterministic(self, node) -> ProcessHandlerReport:
        """The CLI rejected its input or crashed: the same inputs would fail again."""
        self.report_error_handled(node, "aborting: the failure is deterministic")
        return ProcessHandlerReport(True, self.exit_codes.ERROR_CLI_REJECTED.format(status=node.exit_status))

    def halve_batch_size(self, node, section: str, default: int) -> ProcessHandlerReport:
        """After running out of memory: resubmit with ``parameters.<section>.batch_size`` halved (``default``
        when it was not set); fail with ERROR_BATCH_SIZE_EXHAUSTED once it is already 1."""
        parameters = self._parameters()
        settings = dict(parameters.get(section, {}))
        batch_size = int(settings.get("batch_size", default))
        if batch_size <= 1:
            self.report_error_handled(node, "already one structure per batch: aborting")
            return ProcessHandlerReport(True, self.exit_codes.ERROR_BATCH_SIZE_EXHAUSTED.format(status=node.exit_status))
        settings["batch_size"] = batch_size // 2
        self.ctx.inputs.parameters = orm.Dict({**parameters, section: settings})
        self.report_error_handled(node, f"resubmitting with {section}.batch_size={batch_size // 2}")
        return ProcessHandlerReport(True)

    def _scale_walltime(self, node) -> int | None:
        """``max_wallclock_seconds`` of the next run: the last one's times ``walltime_factor`` (capped); None when
        the walltime is unknown."""
        metadata = dict(self.ctx.inputs.get("metadata", {}))
        options = dict(metadata.get("options", {}))
        walltime = options.get("max_wallclock_seconds") or node.get_option("max_wallclock_seconds")
        if not walltime:
            return None
        scaled = int(self.defaults.walltime_factor * int(walltime))
        if self.defaults.max_wallclock_seconds:
            scaled = min(scaled, int(self.defaults.max_wallclock_seconds))
        if scaled != int(walltime):
            options["max_wallclock_seconds"] = scaled
            self.ctx.inputs.metadata = {**metadata, "options": options}
        return scaled

    # --- the generic handlers -----------------------------------------------------------------
    @process_handler(priority=610, exit_codes=[CALC_EXIT.ERROR_SCHEDULER_NODE_FAILURE])
    def handle_node_failure(self, node):
        """The scheduler reported a node failure: the same work on another (or the revived) node."""
        action = self.resume_from_checkpoint(node)
        return self._retry("outputs_lost", node, action, self.defaults.outputs_lost_retries)

    @process_handler(priority=605, exit_codes=[CALC_EXIT.ERROR_SCHEDULER_OUT_OF_WALLTIME])
    def handle_out_of_walltime(self, node):
        """Killed at the walltime: continue from the checkpoint (where there is one) with more walltime."""
        walltime = self._scale_walltime(node)
        action = self.resume_from_checkpoint(node)
        if walltime is None and not self.is_resumable():  # nothing would change: it is a plain resubmission
            return self._retry("outputs_lost", node, action, self.defaults.outputs_lost_retries)
        self.report_error_handled(node, f"{action} with max_wallclock_seconds={walltime or 'unchanged'} s")
        return ProcessHandlerReport(True)

    @process_handler(priority=600, exit_codes=[CALC_EXIT.ERROR_MISSING_OUTPUT_FILES, CALC_EXIT.ERROR_SUMMARY_MISSING])
    def handle_outputs_lost(self, node):
        """Outputs or the summary missing (a kill without SIGTERM, a full disk): resubmit within the budget."""
        action = self.resume_from_checkpoint(node)
        return self._retry("outputs_lost", node, action, self.defaults.outputs_lost_retries)

    @process_handler(priority=595, exit_codes=[CALC_EXIT.ERROR_OUTPUT_UNREADABLE])
    def handle_output_unreadable(self, node):
        """An output truncated or corrupt: resubmit (from the checkpoint where there is one) within the budget."""
        action = self.resume_from_checkpoint(node)
        return self._retry("output_unreadable", node, action, self.defaults.output_unreadable_retries)

    @process_handler(priority=590, exit_codes=[CALC_EXIT.ERROR_CLI_INVALID_INPUT, CALC_EXIT.ERROR_CLI_FAILED])
    def handle_cli_rejected(self, node):
        """The CLI rejected its input or crashed: the same inputs would fail again."""
        return self.abort_deterministic(node)
