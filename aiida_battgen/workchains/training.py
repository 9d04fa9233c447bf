"""Restart wrappers of the training CalcJobs (``battgen.generator.train_base``, ``battgen.predictor.train_base``,
``battgen.mlip.train_base``):

* 410 interrupted after a checkpoint, 120 scheduler walltime, 140 node failure, 300/302 outputs lost (a kill before the
  summary was written) -> resubmit with ``parent_folder`` = the killed run's remote folder, so training
  continues from its last checkpoint (from scratch when the run died before its first checkpoint);
  every resubmission counts towards ``max_iterations``;
* 301 an output unreadable -> resubmit once, then fail (501);
* 310 corrupt model directory -> resubmit once, then fail with 510 ERROR_MODEL_INVALID_TWICE;
* 303/304 -> the CLI rejected the input or crashed: deterministic, fail at once (502).

The 1xx/3xx handlers are :class:`~aiida_battgen.workchains.restart.BattgenRestartWorkChain`'s.
"""

from __future__ import annotations

from aiida.common import AttributeDict
from aiida.engine import ProcessHandlerReport, process_handler

from aiida_battgen.calculations.training import (
    CHECKPOINT_DIRNAME, MODEL_DIRNAME, GeneratorTrainCalculation, PotentialTrainCalculation, PredictorTrainCalculation,
)
from aiida_battgen.workchains.restart import BattgenRestartWorkChain


class _TrainBaseWorkChain(BattgenRestartWorkChain):
    _namespace = "train"

    defaults = AttributeDict({
        **BattgenRestartWorkChain.defaults,
        "walltime_factor": 1.0,  # training continues from its checkpoints: every call makes progress
        "outputs_lost_retries": None,  # bounded by max_iterations
    })

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.exit_code(510, "ERROR_MODEL_INVALID_TWICE",
                       message="The trained model directory was invalid twice in a row (exit {status}); giving up.")

    def resume_from_checkpoint(self, node) -> str:
        """Resume from the killed run's checkpoints; from the start when it wrote none."""
        remote = node.outputs.remote_folder if "remote_folder" in node.outputs else None
        has_checkpoint = False
        if remote is not None:
            try:
                has_checkpoint = bool(remote.listdir(f"{MODEL_DIRNAME}/{CHECKPOINT_DIRNAME}"))
            except OSError:
                has_checkpoint = False
        if has_checkpoint:
            self.ctx.inputs.parent_folder = remote
            return f"resuming from the checkpoints in {remote.get_remote_path()}"
        self.ctx.inputs.pop("parent_folder", None)
        return "no checkpoint was written: training again from the start"

    @process_handler(priority=620, exit_codes=[GeneratorTrainCalculation.exit_codes.WARNING_TRAINING_INTERRUPTED])
    def handle_interrupted(self, node):
        """Stopped cleanly after a checkpoint: resume from it."""
        self.report_error_handled(node, self.resume_from_checkpoint(node))
        return ProcessHandlerReport(True)

    @process_handler(priority=580, exit_codes=[GeneratorTrainCalculation.exit_codes.ERROR_MODEL_INVALID])
    def handle_model_invalid(self, node):
        """The model directory failed its check: train once more, then give up."""
        return self._retry("model_invalid", node, "resubmitting the same inputs once",
                           exit_code=self.exit_codes.ERROR_MODEL_INVALID_TWICE)


class GeneratorTrainBaseWorkChain(_TrainBaseWorkChain):
    """Train a generator; after a walltime kill or interruption, continue from the last checkpoint."""

    _process_class = GeneratorTrainCalculation


class PredictorTrainBaseWorkChain(_TrainBaseWorkChain):
    """Train a property predictor; after a walltime kill or interruption, continue from the last checkpoint."""

    _process_class = PredictorTrainCalculation


class PotentialTrainBaseWorkChain(_TrainBaseWorkChain):
    """Train an interatomic potential (NequIP); after a walltime kill, continue from the last checkpoint."""

    _process_class = PotentialTrainCalculation
