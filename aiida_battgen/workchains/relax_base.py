"""``battgen.mlip.relax_base``: MlipRelaxCalculation with automatic restarts of the rows that need it.

Only the rows that need more work are resubmitted; the rows already done are kept and every piece is
merged by ``row_id`` at the end by a calcfunction, so the provenance graph shows which calculation
produced each row:

* 400 not converged  -> the not-converged rows restart from their last structures with ``max_steps`` doubled;
* 401 exploded       -> the exploded rows are retried once from their starting structures with ``maxstep``
                        halved (not-converged rows of the same run go along); if they explode again they
                        are dropped from the output with a warning;
* 402 unsupported    -> nothing to retry: the rows stay flagged in the output;
* 300/301/302, 140   -> outputs lost (node failure, full disk): resubmit once, then fail (501);
* 120 walltime       -> continue from the killed job's checkpoint (``parent_folder``: every finished row is
                        taken over, the rest relax) with ``max_wallclock_seconds`` doubled (up to
                        ``max_iterations``);
* 303/304            -> the CLI rejected the input or crashed: deterministic, fail at once (502);
* 311, 110 memory    -> batched engine: continue from the checkpoint with ``batch_max_atoms`` halved (from the
                        CPU default 400 when unset) until one structure is in flight at a time; then, and
                        for the ASE engine (one structure at a time already), fail with 503.

The 1xx/3xx handlers are :class:`~aiida_battgen.workchains.restart.BattgenRestartWorkChain`'s; this chain adds
the 4xx ones. Protocol: ``protocols/relax_base.yaml`` (the one place the MLIP and its force criterion are set).

The work chain ends with 0 when every row converged, with 710 (outputs attached) when some rows are
flagged unsupported or were dropped.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import ExitCode, ProcessHandlerReport, process_handler

from aiida_battgen.calculations.functions.merge_relax_results import merge_relax_results
from aiida_battgen.calculations.functions.select_relax_rows import select_relax_rows
from aiida_battgen.calculations.relax import MlipRelaxCalculation
from aiida_battgen.workchains.protocols.utils import ProtocolMixin
from aiida_battgen.workchains.restart import BattgenRestartWorkChain
from battgen.contracts.relax import DEFAULT_CPU_BATCH_MAX_ATOMS

DEFAULT_MAX_STEPS = 500
DEFAULT_MAXSTEP_A = 0.2
MAXSTEP_REDUCTION = 0.5  # maxstep factor when retrying exploded rows


class MlipRelaxBaseWorkChain(ProtocolMixin, BattgenRestartWorkChain):
    """Relax a batch with MlipRelaxCalculation, restarting only the rows that did not converge or exploded."""

    _process_class = MlipRelaxCalculation
    _namespace = "relax"
    _namespace_help = "Inputs of the MlipRelaxCalculation (structures, parameters, code)."
    _protocol_file = "relax_base.yaml"

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.exit_code(710, "WARNING_ROWS_NOT_RELAXED",
                       message="Outputs attached, but {n_unsupported} row(s) have unsupported elements and "
                               "{n_dropped} exploded row(s) were dropped.")

    @classmethod
    def get_builder_from_protocol(cls, code, structures=None, protocol=None, overrides=None, options=None):
        """Builder with the protocol's ``relax.parameters`` (the MLIP, fmax in eV/Å, steps) and ``max_iterations``;
        ``overrides`` mirror the port tree (``{"relax": {"parameters": {"fmax": 0.1}}}``), unknown keys rejected;
        ``options`` go to ``relax.metadata.options``."""
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        builder.relax.code = code
        if structures is not None:
            builder.relax.structures = structures
        builder.relax.parameters = orm.Dict(inputs["relax"]["parameters"])
        builder.max_iterations = orm.Int(inputs["max_iterations"])
        if options:
            for key, value in options.items():  # keep the CalcJob's defaults (resources ...)
                builder.relax.metadata.options[key] = value
        return builder

    def setup(self) -> None:
        super().setup()
        self.ctx.pieces = []  # relaxed_structures nodes of earlier iterations, merged at the end
        self.ctx.dropped = []  # row ids removed after exploding twice
        self.ctx.exploded_retried = False

    # --- helpers ------------------------------------------------------------------------------
    def _restart_rows(self, node, statuses: list[str], **updates: Any) -> None:
        """Keep the node's rows for the final merge and resubmit those with one of ``statuses``."""
        relaxed = node.outputs.relaxed_structures
        self.ctx.pieces.append(relaxed)
        self.ctx.inputs.structures = select_relax_rows(relaxed, orm.List(statuses))["structures"]
        self.ctx.inputs.parameters = orm.Dict({**self._parameters(), **updates})
        self.ctx.inputs.pop("parent_folder", None)  # new settings: a checkpoint of the old ones does not apply

    def _finish_with(self, node) -> ProcessHandlerReport:
        """Nothing left to rerun: keep the node's rows and go to ``results``."""
        self.ctx.pieces.append(node.outputs.relaxed_structures)
        self.ctx.is_finished = True
        return ProcessHandlerReport(do_break=True, exit_code=ExitCode(0))

    @staticmethod
    def _counts(node) -> dict[str, int]:
        return node.outputs.output_parameters["counts"]

    # --- handlers -----------------------------------------------------------------------------
    # 120 walltime, 140 node failure, 300-302 outputs lost, 303/304 CLI rejected: BattgenRestartWorkChain
    @process_handler(priority=650, exit_codes=[MlipRelaxCalculation.exit_codes.ERROR_OUT_OF_MEMORY,
                                               MlipRelaxCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_MEMORY])
    def handle_out_of_memory(self, node):
        """Out of memory (the job's own error, 311, or the scheduler's kill, 110): fewer atoms in flight at once.

        Only the batched engine has a batch to shrink; the rows already finished are taken over from the
        checkpoint (``batch_max_atoms`` is not among the settings a checkpoint is bound to)."""
        parameters = self._parameters()
        exhausted = self.exit_codes.ERROR_BATCH_SIZE_EXHAUSTED.format(status=node.exit_status)
        largest = max((len(structure) for _, structure in self.ctx.inputs.structures.iter_structures()), default=1)
        if parameters.get("engine", "ase") != "batched":
            self.report_error_handled(node, "the ase engine relaxes one structure at a time already: aborting")
            return ProcessHandlerReport(True, exhausted)
        budget = int(parameters.get("batch_max_atoms") or DEFAULT_CPU_BATCH_MAX_ATOMS)
        if budget <= largest:
            self.report_error_handled(node, f"batch_max_atoms={budget} already holds one structure of up to {largest} "
                                            "atoms at a time: aborting")
            return ProcessHandlerReport(True, exhausted)
        self.ctx.inputs.parameters = orm.Dict({**parameters, "batch_max_atoms": budget // 2})
        resumed = self.resume_from_checkpoint(node)
        self.report_error_handled(node, f"resubmitting with batch_max_atoms={budget // 2}, {resumed}")
        return ProcessHandlerReport(True)

    @process_handler(priority=500, exit_codes=[MlipRelaxCalculation.exit_codes.WARNING_EXPLODED])
    def handle_exploded(self, node):
        """Retry exploded rows once with half the optimiser step; drop them if they explode again."""
        counts = self._counts(node)
        parameters = self._parameters()
        more_steps = {"max_steps": 2 * parameters.get("max_steps", DEFAULT_MAX_STEPS)} if counts["not_converged"] else {}
        if not self.ctx.exploded_retried:
            self.ctx.exploded_retried = True
            maxstep = MAXSTEP_REDUCTION * parameters.get("maxstep", DEFAULT_MAXSTEP_A)
            self._restart_rows(node, ["exploded", "not_converged"], maxstep=maxstep, **more_steps)
            self.report_error_handled(
                node, f"retrying {counts['exploded']} exploded row(s) with maxstep={maxstep:g} Å"
                + (f" and {counts['not_converged']} not-converged row(s) with max_steps={more_steps['max_steps']}" if more_steps else ""),
            )
            return ProcessHandlerReport(True)

        relaxed = node.outputs.relaxed_structures.get_batch()
        exploded = [meta["row_id"] for meta in relaxed.meta if meta.get("relax_status") == "exploded"]
        self.ctx.dropped.extend(exploded)
        self.logger.warning(f"dropping {len(exploded)} row(s) that exploded twice: {exploded}")
        if counts["not_converged"]:
            self._restart_rows(node, ["not_converged"], **more_steps)
            self.report_error_handled(node, f"dropped exploded rows {exploded}; restarting "
                                            f"{counts['not_converged']} not-converged row(s) with max_steps={more_steps['max_steps']}")
            return ProcessHandlerReport(True)
        self.report_error_handled(node, f"dropped rows {exploded} that exploded twice; finishing")
        return self._finish_with(node)

    @process_handler(priority=400, exit_codes=[MlipRelaxCalculation.exit_codes.WARNING_NOT_CONVERGED])
    def handle_not_converged(self, node):
        """Restart the not-converged rows from their last structures with twice the steps."""
        max_steps = 2 * self._parameters().get("max_steps", DEFAULT_MAX_STEPS)
        self._restart_rows(node, ["not_converged"], max_steps=max_steps)
        self.report_error_handled(
            node, f"restarting {self._counts(node)['not_converged']} not-converged row(s) from their last structures "
                  f"with max_steps={max_steps}")
        return ProcessHandlerReport(True)

    @process_handler(priority=300, exit_codes=[MlipRelaxCalculation.exit_codes.WARNING_UNSUPPORTED_ELEMENTS])
    def handle_unsupported_elements(self, node):
        """No MLIP setting fixes a missing element: keep the flagged rows and finish."""
        self.report_error_handled(node, "keeping the flagged rows unrelaxed; finishing")
        return self._finish_with(node)

    # --- outputs ------------------------------------------------------------------------------
    def get_outputs(self, node):
        """The last calculation's outputs, or, after restarts or drops, the merge of all pieces."""
        pieces = list(self.ctx.pieces)
        last = node.outputs.relaxed_structures if "relaxed_structures" in node.outputs else None
        if last is not None and all(piece.uuid != last.uuid for piece in pieces):
            pieces.append(last)
        if len(pieces) <= 1 and not self.ctx.dropped:
            return super().get_outputs(node)
        outputs = super().get_outputs(node)  # remote_folder, retrieved of the last calculation
        outputs.update(merge_relax_results(
            parameters=node.outputs.output_parameters,
            drop_row_ids=orm.List(list(self.ctx.dropped)),
            **{f"piece_{index:02d}": piece for index, piece in enumerate(pieces)},
        ))
        return outputs

    def results(self) -> ExitCode | None:
        super().results()
        if "output_parameters" not in self.outputs:
            return None
        counts = self.outputs["output_parameters"]["counts"]
        if counts["unsupported_element"] or self.ctx.dropped:
            return self.exit_codes.WARNING_ROWS_NOT_RELAXED.format(
                n_unsupported=counts["unsupported_element"], n_dropped=len(self.ctx.dropped))
        return None
