"""``battgen.insertion``: InsertionCalculation with restarts (seed 001 insertion potentials by MLIP).

Handlers:

* 410 not converged    -> resubmit with ``max_steps`` doubled (until ``max_iterations``);
* 120 walltime         -> resubmit with ``max_wallclock_seconds`` doubled;
* 300/301/302, 130     -> outputs lost or node failure: resubmit once, then fail (501);
* 303/304              -> the CLI rejected the input or crashed: deterministic, fail at once (502).
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ProcessHandlerReport, process_handler

from aiida_battgen.calculations.insertion import InsertionCalculation
from aiida_battgen.workchains.protocols.utils import ProtocolMixin
from aiida_battgen.workchains.restart import BattgenRestartWorkChain

DEFAULT_MAX_STEPS = 300


class InsertionPotentialWorkChain(ProtocolMixin, BattgenRestartWorkChain):
    """Insertion potentials V per ion and channel type of one host, restarted until the relaxations converge."""

    _process_class = InsertionCalculation
    _namespace = "insertion"
    _protocol_file = "insertion.yaml"

    @classmethod
    def get_builder_from_protocol(cls, code, structure, protocol=None, overrides=None, options=None):
        """Builder for ``structure`` with the protocol's parameters (``overrides`` deep-merged, unknown keys
        rejected); ``options`` go to ``insertion.metadata.options``."""
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        builder.insertion.code = code
        builder.insertion.structure = structure
        builder.insertion.parameters = orm.Dict(inputs["parameters"])
        builder.max_iterations = orm.Int(inputs["max_iterations"])
        if options:
            builder.insertion.metadata.options = options
        return builder

    def _parameters(self) -> dict:
        return self.ctx.inputs.parameters.get_dict() if "parameters" in self.ctx.inputs else {}

    @process_handler(priority=610, exit_codes=[
        InsertionCalculation.exit_codes.ERROR_MISSING_OUTPUT_FILES,
        InsertionCalculation.exit_codes.ERROR_OUTPUT_UNREADABLE,
        InsertionCalculation.exit_codes.ERROR_SUMMARY_MISSING,
        InsertionCalculation.exit_codes.ERROR_SCHEDULER_NODE_FAILURE,
    ])
    def handle_outputs_lost(self, node):
        """Outputs missing or truncated, or the node died: the same inputs once more, then fail."""
        return self._retry_once("outputs_lost", node, "resubmitting the same inputs once")

    @process_handler(priority=605, exit_codes=[InsertionCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME])
    def handle_out_of_walltime(self, node):
        """Killed at the walltime (the command writes its outputs at the end): twice the walltime."""
        options = dict(self.ctx.inputs.get("metadata", {}).get("options", {}))
        walltime = options.get("max_wallclock_seconds") or node.get_option("max_wallclock_seconds")
        if not walltime:
            return self.handle_outputs_lost(node)
        options["max_wallclock_seconds"] = 2 * int(walltime)
        self.ctx.inputs.metadata = {**dict(self.ctx.inputs.get("metadata", {})), "options": options}
        self.report_error_handled(node, f"resubmitting with max_wallclock_seconds={options['max_wallclock_seconds']} s")
        return ProcessHandlerReport(True)

    @process_handler(priority=590, exit_codes=[
        InsertionCalculation.exit_codes.ERROR_CLI_INVALID_INPUT,
        InsertionCalculation.exit_codes.ERROR_CLI_FAILED,
    ])
    def handle_cli_rejected(self, node):
        return self.abort_deterministic(node)

    @process_handler(priority=400, exit_codes=[InsertionCalculation.exit_codes.WARNING_NOT_CONVERGED])
    def handle_not_converged(self, node):
        """Some relaxations hit max_steps: rerun with twice the steps (V from unconverged runs is not final)."""
        max_steps = 2 * int(self._parameters().get("max_steps", DEFAULT_MAX_STEPS))
        self.ctx.inputs.parameters = orm.Dict({**self._parameters(), "max_steps": max_steps})
        self.report_error_handled(node, f"resubmitting with max_steps={max_steps}")
        return ProcessHandlerReport(True)
