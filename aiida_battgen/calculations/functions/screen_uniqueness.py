"""``battgen.screen_uniqueness``: drop rows that StructureMatcher matches to an earlier row of the batch."""

from __future__ import annotations

from aiida import orm
from aiida.engine import calcfunction

from aiida_battgen.calculations.functions._screening import screen_step
from aiida_battgen.data.batch import StructureBatchData


@calcfunction
def screen_uniqueness(structures: StructureBatchData, parameters: orm.Dict | None = None):
    """Keep the first of every set of matching structures (outputs ``passed`` and ``rejected``; rejected rows
    say ``duplicate of <row_id>``).

    :param structures: the candidate structures (StructureBatchData).
    :param parameters: optional Dict of StructureMatcher tolerances: ``ltol`` (fractional length tolerance,
        default 0.2), ``stol`` (site tolerance in units of (V/n)^(1/3), default 0.3), ``angle_tol_deg``
        (degrees, default 5).
    """
    return screen_step("uniqueness", structures, parameters)
