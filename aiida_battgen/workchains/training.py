"""Restart wrappers of the training CalcJobs (``battgen.generator.train_base``, ``battgen.predictor.train_base``,
``battgen.mlip.train_base``):

* 410 interrupted after a checkpoint, 120 scheduler walltime, 140 node failure, 300/302 outputs lost (a kill before the
  summary was written) -> resubmit with ``parent_folder`` = the killed run's remote folder, so training
  continues from its last checkpoint (from scratch when the run died before its first checkpoint);
  every resubmission counts towards ``max_iterations``;
* 310/301 corrupt model directory -> resubmit once;
* 303/304 -> the CLI rejected the input or crashed: deterministic, fail at once (502).
"""

from __future__ import annotations

from aiida.engine import ProcessHandlerReport, process_handler

from aiida_battgen.calculations.training import (
    CHECKPOINT_DIRNAME, MODEL_DIRNAME, GeneratorTrainCalculation, PotentialTrainCalculation, PredictorTrainCalculation,
)
from aiida_battgen.workchains.restart import BattgenRestartWorkChain

class _TrainBaseWorkChain(BattgenRestartWorkChain):
    _namespace = "train"

    @process_handler(priority=600, exit_codes=[
        GeneratorTrainCalculation.exit_codes.WARNING_TRAINING_INTERRUPTED,
        GeneratorTrainCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME,
        GeneratorTrainCalculation.exit_codes.ERROR_SCHEDULER_NODE_FAILURE,
        GeneratorTrainCalculation.exit_codes.ERROR_SUMMARY_MISSING,
        GeneratorTrainCalculation.exit_codes.ERROR_MISSING_OUTPUT_FILES,
    ])
    def handle_interrupted(self, node):
        """Resume from the killed run's checkpoints."""
        remote = node.outputs.remote_folder if "remote_folder" in node.outputs else None
        has_checkpoint = False
        if remote is not None:
            try:
                has_checkpoint = bool(remote.listdir(f"{MODEL_DIRNAME}/{CHECKPOINT_DIRNAME}"))
            except OSError:
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
        return self.abort_deterministic(node)


class GeneratorTrainBaseWorkChain(_TrainBaseWorkChain):
    """Train a generator; after a walltime kill or interruption, continue from the last checkpoint."""

    _process_class = GeneratorTrainCalculation


class PredictorTrainBaseWorkChain(_TrainBaseWorkChain):
    """Train a property predictor; after a walltime kill or interruption, continue from the last checkpoint."""

    _process_class = PredictorTrainCalculation


class PotentialTrainBaseWorkChain(_TrainBaseWorkChain):
    """Train an interatomic potential (NequIP); after a walltime kill, continue from the last checkpoint."""

    _process_class = PotentialTrainCalculation
