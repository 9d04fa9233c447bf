"""``battgen.predict_base`` (PredictBaseWorkChain), the restart wrapper of PredictCalculation:

* 311 out of memory -> halve ``options.batch_size`` and resubmit; at 1 fail (503);
* 120 walltime -> resubmit with twice the walltime; 140, 300/301/302 outputs lost -> resubmit once (501);
  303/304 -> fail at once (502): :class:`~aiida_battgen.workchains.restart.BattgenRestartWorkChain`.
"""

from __future__ import annotations

from aiida.engine import process_handler

from aiida_battgen.calculations.predict import PredictCalculation
from aiida_battgen.workchains.restart import BattgenRestartWorkChain

DEFAULT_PREDICTION_BATCH_SIZE = 64  # assumed when an out-of-memory run did not set options.batch_size


class PredictBaseWorkChain(BattgenRestartWorkChain):
    """Predict properties of a batch; smaller batches after running out of memory."""

    _process_class = PredictCalculation
    _namespace = "predict"

    @process_handler(priority=650, exit_codes=[PredictCalculation.exit_codes.ERROR_OUT_OF_MEMORY])
    def handle_out_of_memory(self, node):
        return self.halve_batch_size(node, "options", DEFAULT_PREDICTION_BATCH_SIZE)
