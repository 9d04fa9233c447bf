"""``battgen.screen_validity``: CDVAE structure validity (no two sites closer than 0.5 Å, volume >= 0.1 Å³)."""

from __future__ import annotations

from aiida import orm
from aiida.engine import calcfunction

from aiida_battgen.calculations.functions._screening import screen_step
from aiida_battgen.data.batch import StructureBatchData


@calcfunction
def screen_validity(structures: StructureBatchData, parameters: orm.Dict | None = None):
    """Split a batch into structurally valid and invalid rows (outputs ``passed`` and ``rejected``).

    :param structures: the candidate structures (StructureBatchData).
    :param parameters: optional Dict: ``min_distance_A`` (minimum interatomic distance in Å incl. periodic
        images, default 0.5), ``min_volume_A3`` (minimum cell volume in Å³, default 0.1),
        ``check_self_images`` (bool, default False as in CDVAE).
    """
    return screen_step("validity", structures, parameters)
