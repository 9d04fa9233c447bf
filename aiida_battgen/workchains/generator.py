"""Restart wrappers of the generator CalcJobs.

``battgen.generator.train_base`` (GeneratorTrainBaseWorkChain):

* 410 interrupted after a checkpoint, 120 scheduler walltime, 300/302 outputs lost (a kill before the
  summary was written) -> resubmit with ``parent_folder`` = the killed run's remote folder, so training
  continues from its last checkpoint (from scratch when the run died before its first checkpoint);
* 310 corrupt model directory -> resubmit once;
* 303/304 -> the CLI rejected the input or crashed: deterministic, fail at once.

``battgen.generate_base`` (GenerateBaseWorkChain):

* 311 out of memory -> halve ``conditions.batch_size`` and resubmit;
* 312 nothing generated -> resubmit once with the next random seed (a tiny or undertrained model may
  produce no parseable structure in one draw);
* 300/301/302 outputs lost -> resubmit once; 303/304 -> fail at once.
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

from aiida_battgen.calculations.generator import (
    CHECKPOINT_DIRNAME, MODEL_DIRNAME, GenerateCalculation, GeneratorTrainCalculation,
)

DEFAULT_SAMPLING_BATCH_SIZE = 64  # assumed when an out-of-memory run did not set conditions.batch_size


class _BattgenRestartWorkChain(BaseRestartWorkChain):
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
        self.ctx.retried_once = set()  # handler names that already used their single retry

    def report_error_handled(self, node, action: str) -> None:
        self.report(f"{node.process_label}<{node.pk}> failed with exit status {node.exit_status}: {node.exit_message}")
        self.report(f"Action taken: {action}")

    def _retry_once(self, key: str, node, action: str) -> ProcessHandlerReport:
        if key in self.ctx.retried_once:
            self.report_error_handled(node, "second time in a row: aborting")
            return ProcessHandlerReport(True, self.exit_codes.ERROR_OUTPUTS_LOST_TWICE.format(status=node.exit_status))
        self.ctx.retried_once.add(key)
        self.report_error_handled(node, action)
        return ProcessHandlerReport(True)


class GeneratorTrainBaseWorkChain(_BattgenRestartWorkChain):
    """Train a generator; after a walltime kill or interruption, continue from the last checkpoint."""

    _process_class = GeneratorTrainCalculation
    _namespace = "train"

    @process_handler(priority=600, exit_codes=[
        GeneratorTrainCalculation.exit_codes.WARNING_TRAINING_INTERRUPTED,
        GeneratorTrainCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME,
        GeneratorTrainCalculation.exit_codes.ERROR_SUMMARY_MISSING,
        GeneratorTrainCalculation.exit_codes.ERROR_MISSING_OUTPUT_FILES,
    ])
    def handle_interrupted(self, node):
        """Resume from the killed run's checkpoints (each resubmission counts towards max_iterations)."""
        remote = node.outputs.remote_folder if "remote_folder" in node.outputs else None
        has_checkpoint = False
        if remote is not None:
            try:
                has_checkpoint = bool(remote.listdir(f"{MODEL_DIRNAME}/{CHECKPOINT_DIRNAME}"))
            except (OSError, FileNotFoundError):
                has_checkpoint = False
        if has_checkpoint:
            self.ctx.inputs.parent_folder = remote
            self.report_error_handled(node, f"resuming from the checkpoints in {remote.get_remote_path()}")
        else:
            self.ctx.inputs.pop("parent_folder", None)
            self.report_error_handled(node, "no checkpoint was written: training again from the start")
        return ProcessHandlerReport(True)

    @process_handler(priority=590, exit_codes=[GeneratorTrainCalculation.exit_codes.ERROR_MODEL_INVALID,
                                               GeneratorTrainCalculation.exit_codes.ERROR_OUTPUT_UNREADABLE])
    def handle_model_invalid(self, node):
        return self._retry_once("model_invalid", node, "resubmitting the same inputs once")

    @process_handler(priority=580, exit_codes=[GeneratorTrainCalculation.exit_codes.ERROR_CLI_INVALID_INPUT,
                                               GeneratorTrainCalculation.exit_codes.ERROR_CLI_FAILED])
    def handle_cli_rejected(self, node):
        self.report_error_handled(node, "aborting: the failure is deterministic")
        return ProcessHandlerReport(True, self.exit_codes.ERROR_CLI_REJECTED.format(status=node.exit_status))


class GenerateBaseWorkChain(_BattgenRestartWorkChain):
    """Sample from a generator; smaller batches after running out of memory."""

    _process_class = GenerateCalculation
    _namespace = "generate"

    def _parameters(self) -> dict:
        return self.ctx.inputs.parameters.get_dict()

    @process_handler(priority=600, exit_codes=[GenerateCalculation.exit_codes.ERROR_OUT_OF_MEMORY])
    def handle_out_of_memory(self, node):
        parameters = self._parameters()
        conditions = dict(parameters.get("conditions", {}))
        batch_size = int(conditions.get("batch_size", DEFAULT_SAMPLING_BATCH_SIZE))
        if batch_size <= 1:
            self.report_error_handled(node, "already sampling one structure at a time: aborting")
            return ProcessHandlerReport(True, self.exit_codes.ERROR_CLI_REJECTED.format(status=node.exit_status))
        conditions["batch_size"] = batch_size // 2
        self.ctx.inputs.parameters = orm.Dict({**parameters, "conditions": conditions})
        self.report_error_handled(node, f"resubmitting with conditions.batch_size={batch_size // 2}")
        return ProcessHandlerReport(True)

    @process_handler(priority=590, exit_codes=[GenerateCalculation.exit_codes.ERROR_NOTHING_GENERATED])
    def handle_nothing_generated(self, node):
        parameters = self._parameters()
        seed = int(parameters.get("seed", 0)) + 1
        self.ctx.inputs.parameters = orm.Dict({**parameters, "seed": seed})
        return self._retry_once("nothing_generated", node, f"resubmitting once with seed={seed}")

    @process_handler(priority=580, exit_codes=[
        GenerateCalculation.exit_codes.ERROR_MISSING_OUTPUT_FILES,
        GenerateCalculation.exit_codes.ERROR_OUTPUT_UNREADABLE,
        GenerateCalculation.exit_codes.ERROR_SUMMARY_MISSING,
    ])
    def handle_outputs_lost(self, node):
        return self._retry_once("outputs_lost", node, "resubmitting the same inputs once")

    @process_handler(priority=570, exit_codes=[GenerateCalculation.exit_codes.ERROR_CLI_INVALID_INPUT,
                                               GenerateCalculation.exit_codes.ERROR_CLI_FAILED])
    def handle_cli_rejected(self, node):
        self.report_error_handled(node, "aborting: the failure is deterministic")
        return ProcessHandlerReport(True, self.exit_codes.ERROR_CLI_REJECTED.format(status=node.exit_status))
