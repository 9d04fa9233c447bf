"""The seed batch of a work chain that takes ``seed_structures`` or a ``snapshot`` (discovery, campaign)."""

from __future__ import annotations

from aiida.plugins import CalculationFactory

batch_from_snapshot = CalculationFactory("battgen.batch_from_snapshot")


class SeedSourceMixin:
    """For a WorkChain with the inputs ``seed_structures`` / ``snapshot`` and the exit code ERROR_SOURCE_FAILED."""

    def _run_calcfunction(self, function, label, **kwargs):
        """Run a calcfunction with a call link label; returns (outputs, node)."""
        return function.run_get_node(**kwargs, metadata={"call_link_label": label})

    def seeds_from_inputs(self):
        """Set ``ctx.seeds``: the given batch, else the snapshot's structures through ``batch_from_snapshot`` (so
        the graph links them to the query); returns ERROR_SOURCE_FAILED when that fails, else None."""
        if "seed_structures" in self.inputs:
            self.ctx.seeds = self.inputs.seed_structures
            return None
        outputs, node = self._run_calcfunction(batch_from_snapshot, "batch_from_snapshot", snapshot=self.inputs.snapshot)
        if not node.is_finished_ok:
            self.report(f"batch_from_snapshot<{node.pk}> failed: {node.exit_message}")
            return self.exit_codes.ERROR_SOURCE_FAILED
        self.ctx.seeds = outputs["structures"]
        return None
