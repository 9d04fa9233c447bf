"""``battgen.capacity``: theoretical gravimetric and volumetric capacity of every row for a working ion."""

from __future__ import annotations

from aiida import orm
from aiida.engine import ExitCode, calcfunction
from pymatgen.core import Element

from aiida_battgen.data.batch import StructureBatchData
from battgen.electrochem.capacity import CAPACITY_BASES, electrode_capacity

_KEYS = {"working_ion", "fraction", "basis"}


@calcfunction
def capacity(structures: StructureBatchData, parameters: orm.Dict):
    """Add ``gravimetric_capacity_mAh_per_g`` and ``volumetric_capacity_Ah_per_L`` (pymatgen
    InsertionElectrode conventions, per discharged mass/volume unless ``basis: host``) to every row.

    :param parameters: ``working_ion`` (element symbol), ``fraction`` (share of the ion removed, (0, 1];
        default 1), ``basis`` (discharged | host; default discharged). Rows without the working ion get
        None and ``capacity_note``.
    """
    settings = parameters.get_dict()
    unknown = sorted(set(settings) - _KEYS)
    if unknown:
        return ExitCode(321, f"unknown capacity parameter(s) {unknown}; allowed: {sorted(_KEYS)}")
    ion = settings.get("working_ion")
    if not isinstance(ion, str) or not Element.is_valid_symbol(ion):
        return ExitCode(321, f"`working_ion` must be an element symbol, got {ion!r}")
    fraction = float(settings.get("fraction", 1.0))
    basis = settings.get("basis", "discharged")
    if not 0 < fraction <= 1 or basis not in CAPACITY_BASES:
        return ExitCode(321, f"`fraction` must be in (0, 1] and `basis` one of {CAPACITY_BASES}")
    batch = structures.get_batch()
    gravimetric, volumetric, notes = [], [], []
    for _, structure in batch:
        if structure.composition[Element(ion)] == 0:
            gravimetric.append(None)
            volumetric.append(None)
            notes.append(f"no {ion} in the structure")
            continue
        result = electrode_capacity(structure, ion, fraction, basis=basis)
        gravimetric.append(result.gravimetric_mAh_per_g)
        volumetric.append(result.volumetric_Ah_per_L)
        notes.append(None)
    annotated = batch.with_columns(
        gravimetric_capacity_mAh_per_g=gravimetric, volumetric_capacity_Ah_per_L=volumetric,
        capacity_working_ion=[ion] * len(batch), capacity_note=notes,
    )
    return {"structures": StructureBatchData(annotated)}
