"""``battgen.generate_base`` (GenerateBaseWorkChain), the restart wrapper of GenerateCalculation:

* 311 out of memory -> halve ``conditions.batch_size`` and resubmit;
* 312 nothing generated -> resubmit once with the next random seed (a tiny or undertrained model may
  produce no parseable structure in one draw);
* 300/301/302 outputs lost -> resubmit once; 303/304 -> fail at once (502).
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import process_handler

from aiida_battgen.calculations.generator import GenerateCalculation
from aiida_battgen.workchains.restart import BattgenRestartWorkChain

DEFAULT_SAMPLING_BATCH_SIZE = 64  # assumed when an out-of-memory run did not set conditions.batch_size


class GenerateBaseWorkChain(BattgenRestartWorkChain):
    """Sample from a generator; smaller batches after running out of memory."""

    _process_class = GenerateCalculation
    _namespace = "generate"

    def _parameters(self) -> dict:
        return self.ctx.inputs.parameters.get_dict()

    @process_handler(priority=600, exit_codes=[GenerateCalculation.exit_codes.ERROR_OUT_OF_MEMORY])
    def handle_out_of_memory(self, node):
        return self.halve_batch_size(node, "conditions", DEFAULT_SAMPLING_BATCH_SIZE)

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
        return self.abort_deterministic(node)
