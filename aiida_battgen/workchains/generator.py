"""``battgen.generate_base`` (GenerateBaseWorkChain), the restart wrapper of GenerateCalculation:

* 311 out of memory -> halve ``conditions.batch_size`` and resubmit; at 1 fail (503);
* 312 nothing generated -> resubmit once with the next random seed (a tiny or undertrained model may
  produce no parseable structure in one draw), then fail with 510 ERROR_NOTHING_GENERATED_TWICE;
* 120 walltime -> resubmit with twice the walltime; 140, 300/301/302 outputs lost -> resubmit once (501);
  303/304 -> fail at once (502): :class:`~aiida_battgen.workchains.restart.BattgenRestartWorkChain`.
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

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.exit_code(510, "ERROR_NOTHING_GENERATED_TWICE",
                       message="The generator produced no parseable structure twice, with two seeds (exit {status}).")

    @process_handler(priority=650, exit_codes=[GenerateCalculation.exit_codes.ERROR_OUT_OF_MEMORY])
    def handle_out_of_memory(self, node):
        return self.halve_batch_size(node, "conditions", DEFAULT_SAMPLING_BATCH_SIZE)

    @process_handler(priority=640, exit_codes=[GenerateCalculation.exit_codes.ERROR_NOTHING_GENERATED])
    def handle_nothing_generated(self, node):
        parameters = self._parameters()
        seed = int(parameters.get("seed", 0)) + 1
        report = self._retry("nothing_generated", node, f"resubmitting once with seed={seed}",
                             exit_code=self.exit_codes.ERROR_NOTHING_GENERATED_TWICE)
        if report.exit_code.status == 0:
            self.ctx.inputs.parameters = orm.Dict({**parameters, "seed": seed})
        return report
