"""The aiida-core-only baseline of ``daemon_load.py``: a work chain calling two trivial calcfunctions.

A module of its own (not ``__main__``) so daemon workers can import it by name (``PYTHONPATH`` holds
``benchmarks/`` when the benchmark starts the daemon).
"""

from aiida import orm
from aiida.engine import WorkChain, calcfunction


@calcfunction
def add(x, y):
    return orm.Int(x.value + y.value)


@calcfunction
def multiply(x, y):
    return orm.Int(x.value * y.value)


class TrivialWorkChain(WorkChain):
    """(x + y) * z through two calcfunctions: three processes, no CalcJob, no files."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("x", valid_type=orm.Int)
        spec.input("y", valid_type=orm.Int)
        spec.input("z", valid_type=orm.Int)
        spec.outline(cls.run_add, cls.run_multiply)
        spec.output("result", valid_type=orm.Int)

    def run_add(self):
        self.ctx.sum = add(self.inputs.x, self.inputs.y)

    def run_multiply(self):
        self.out("result", multiply(self.ctx.sum, self.inputs.z))
