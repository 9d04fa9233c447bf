"""``battgen.screen_novelty``: drop rows that StructureMatcher matches to a known (reference) structure."""

from __future__ import annotations

from aiida import orm
from aiida.engine import calcfunction

from aiida_battgen.calculations.functions._screening import screen_step
from aiida_battgen.data.batch import StructureBatchData


@calcfunction
def screen_novelty(
    structures: StructureBatchData, reference: StructureBatchData, parameters: orm.Dict | None = None
):
    """Keep structures not matching any reference structure (outputs ``passed`` and ``rejected``; rejected
    rows say ``matches reference <material_id or row_id>``).

    :param structures: the candidate structures (StructureBatchData).
    :param reference: the known structures, e.g. a Materials Project snapshot (StructureBatchData).
    :param parameters: optional Dict of StructureMatcher tolerances: ``ltol`` (fractional length tolerance,
        default 0.2), ``stol`` (site tolerance in units of (V/n)^(1/3), default 0.3), ``angle_tol_deg``
        (degrees, default 5).
    """
    return screen_step("novelty", structures, parameters, reference=reference)
