"""``battgen.insertion``: InsertionCalculation with restarts (seed 001 insertion potentials by MLIP).

Handlers:

* 410 not converged    -> resubmit with ``max_steps`` doubled (until ``max_iterations``);
* 120 walltime         -> resubmit with ``max_wallclock_seconds`` doubled;
* 300/301/302, 140     -> outputs lost or node failure: resubmit once, then fail (501);
* 303/304              -> the CLI rejected the input or crashed: deterministic, fail at once (502).

The 1xx/3xx handlers are :class:`~aiida_battgen.workchains.restart.BattgenRestartWorkChain`'s. Protocol:
``protocols/insertion.yaml``; the MLIP and fmax come from ``relax_base.yaml`` (same protocol name).
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ProcessHandlerReport, process_handler

from aiida_battgen.calculations.insertion import InsertionCalculation
from aiida_battgen.workchains.protocols.utils import ProtocolMixin, recursive_merge, relax_settings
from aiida_battgen.workchains.restart import BattgenRestartWorkChain

DEFAULT_MAX_STEPS = 300


class InsertionPotentialWorkChain(ProtocolMixin, BattgenRestartWorkChain):
    """Insertion potentials V per ion and channel type of one host, restarted until the relaxations converge."""

    _process_class = InsertionCalculation
    _namespace = "insertion"
    _protocol_file = "insertion.yaml"

    @classmethod
    def compose_protocol_inputs(cls, protocol, inputs):
        """``insertion.parameters.mlip`` and ``.fmax`` from the relax base protocol of the same name (what
        insertion.yaml states itself wins)."""
        return recursive_merge({"insertion": {"parameters": relax_settings(protocol)}}, inputs, strict=False)

    @classmethod
    def get_builder_from_protocol(cls, code, structure, protocol=None, overrides=None, options=None):
        """Builder for ``structure`` with the protocol's ``insertion.parameters`` and ``max_iterations``
        (``overrides`` mirror the ports, deep-merged, unknown keys rejected); ``options`` go to
        ``insertion.metadata.options``."""
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        builder.insertion.code = code
        builder.insertion.structure = structure
        builder.insertion.parameters = orm.Dict(inputs["insertion"]["parameters"])
        builder.max_iterations = orm.Int(inputs["max_iterations"])
        if options:
            for key, value in options.items():  # keep the CalcJob's defaults (resources ...)
                builder.insertion.metadata.options[key] = value
        return builder

    # 120 walltime (twice the walltime: the command writes its outputs at the end), 140 node failure and
    # 300-302 outputs lost (resubmit once, 501), 303/304 CLI rejected (502): BattgenRestartWorkChain

    @process_handler(priority=400, exit_codes=[InsertionCalculation.exit_codes.WARNING_NOT_CONVERGED])
    def handle_not_converged(self, node):
        """Some relaxations hit max_steps: rerun with twice the steps (V from unconverged runs is not final)."""
        max_steps = 2 * int(self._parameters().get("max_steps", DEFAULT_MAX_STEPS))
        self.ctx.inputs.parameters = orm.Dict({**self._parameters(), "max_steps": max_steps})
        self.report_error_handled(node, f"resubmitting with max_steps={max_steps}")
        return ProcessHandlerReport(True)
