"""``battgen.screen_charge_neutrality``: SMACT charge neutrality + Pauling electronegativity (CDVAE settings)."""

from __future__ import annotations

from aiida import orm
from aiida.engine import calcfunction

from aiida_battgen.calculations.functions._screening import screen_step
from aiida_battgen.data.batch import StructureBatchData


@calcfunction
def screen_charge_neutrality(structures: StructureBatchData, parameters: orm.Dict | None = None):
    """Split a batch by SMACT validity of each composition (outputs ``passed`` and ``rejected``).

    :param structures: the candidate structures (StructureBatchData).
    :param parameters: optional Dict: ``use_pauling_test`` (default True), ``include_alloys`` (default
        True), ``oxidation_states_set`` (default ``smact14``, the set CDVAE used; dimensionless settings).
    """
    return screen_step("charge_neutrality", structures, parameters)
