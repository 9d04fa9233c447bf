"""``battgen.screen_novelty``: drop rows that StructureMatcher matches to a known (reference) structure."""

from __future__ import annotations

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from aiida_battgen.calculations.functions._screening import screen_step
from aiida_battgen.data.batch import StructureBatchData
from battgen.known_materials import KnownMaterialsFormatError

ERROR_INVALID_REFERENCE = ExitCode(322, "ERROR_INVALID_REFERENCE: {detail}", invalidates_cache=True)


@calcfunction
def screen_novelty(
    structures: StructureBatchData,
    reference: StructureBatchData | None = None,
    parameters: orm.Dict | None = None,
    known_materials: orm.SinglefileData | None = None,
):
    """Keep structures not matching any reference structure (outputs ``passed`` and ``rejected``; rejected
    rows say ``matches reference <material_id or row_id>``, e.g. ``matches reference mp-22862``).

    :param structures: the candidate structures (StructureBatchData).
    :param reference: known structures, e.g. the seeds or a Materials Project snapshot (StructureBatchData).
    :param parameters: optional Dict of StructureMatcher tolerances: ``ltol`` (fractional length tolerance,
        default 0.2), ``stol`` (site tolerance in units of (V/n)^(1/3), default 0.3), ``angle_tol_deg``
        (degrees, default 5).
    :param known_materials: the known-materials reference file (``battgen.known_materials``, e.g. the
        embedded MP-derived one); its structures are matched before ``reference``. At least one of the two.
    """
    if reference is None and known_materials is None:
        return ERROR_INVALID_REFERENCE.format(detail="give `reference` and/or `known_materials`")
    extra = None
    if known_materials is not None:
        from aiida_battgen.data.known_materials import load_known_materials

        try:
            extra = load_known_materials(known_materials).structure_batch()
        except KnownMaterialsFormatError as exc:
            return ERROR_INVALID_REFERENCE.format(detail=str(exc))
    return screen_step("novelty", structures, parameters, reference=reference, extra_reference=extra)
