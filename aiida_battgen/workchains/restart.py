"""Shared base of the battgen restart work chains: input exposure, the outline, one-retry bookkeeping and
the deterministic-failure exit code."""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, while_


class BattgenRestartWorkChain(BaseRestartWorkChain):
    """Shared outline, input exposure and the deterministic-failure handler."""

    _namespace = ""

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.expose_inputs(cls._process_class, namespace=cls._namespace)
        spec.expose_outputs(cls._process_class)
        spec.outline(cls.setup, while_(cls.should_run_process)(cls.run_process, cls.inspect_process), cls.results)
        spec.exit_code(501, "ERROR_OUTPUTS_LOST_TWICE",
                       message="The calculation lost its outputs twice in a row (exit {status}); giving up.")
        spec.exit_code(502, "ERROR_CLI_REJECTED",
                       message="The battgen CLI rejected the input or crashed (exit {status}); a restart cannot help.")

    def setup(self) -> None:
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(self._process_class, self._namespace))
        self.ctx.retried_once = []  # handler names that already used their single retry (a list: ctx is checkpointed)

    def report_error_handled(self, node, action: str) -> None:
        self.report(f"{node.process_label}<{node.pk}> failed with exit status {node.exit_status}: {node.exit_message}")
        self.report(f"Action taken: {action}")

    def _retry_once(self, key: str, node, action: str) -> ProcessHandlerReport:
        if key in self.ctx.retried_once:
            self.report_error_handled(node, "second time in a row: aborting")
            return ProcessHandlerReport(True, self.exit_codes.ERROR_OUTPUTS_LOST_TWICE.format(status=node.exit_status))
        self.ctx.retried_once.append(key)
        self.report_error_handled(node, action)
        return ProcessHandlerReport(True)

    def abort_deterministic(self, node) -> ProcessHandlerReport:
        """The CLI rejected its input or crashed: the same inputs would fail again."""
        self.report_error_handled(node, "aborting: the failure is deterministic")
        return ProcessHandlerReport(True, self.exit_codes.ERROR_CLI_REJECTED.format(status=node.exit_status))

    def halve_batch_size(self, node, section: str, default: int) -> ProcessHandlerReport:
        """After running out of memory: resubmit with ``parameters.<section>.batch_size`` halved (``default``
        when it was not set); abort once it is already 1."""
        parameters = self.ctx.inputs.parameters.get_dict() if "parameters" in self.ctx.inputs else {}
        settings = dict(parameters.get(section, {}))
        batch_size = int(settings.get("batch_size", default))
        if batch_size <= 1:
            self.report_error_handled(node, "already one structure per batch: aborting")
            return ProcessHandlerReport(True, self.exit_codes.ERROR_CLI_REJECTED.format(status=node.exit_status))
        settings["batch_size"] = batch_size // 2
        self.ctx.inputs.parameters = orm.Dict({**parameters, section: settings})
        self.report_error_handled(node, f"resubmitting with {section}.batch_size={batch_size // 2}")
        return ProcessHandlerReport(True)
