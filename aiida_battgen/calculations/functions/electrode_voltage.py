"""``battgen.electrode_voltage``: average insertion voltage (V) and capacity (mAh/g) from total energies.

The energies may come from DFT (``total_energy`` of ``battgen.dft.relax``) or from an MLIP, as long as the
charged state, the discharged state and the working-ion metal are computed with the same method. The
science (pymatgen ``InsertionElectrode``, seed 002 eq. 6) is in :mod:`battgen.electrochem.voltage`.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ExitCode, calcfunction
from pymatgen.core import Element

from battgen.electrochem.voltage import VoltageError, electrode_voltage as voltage_of


@calcfunction
def electrode_voltage(discharged: orm.StructureData, energy_discharged: orm.Float, charged: orm.StructureData,
                      energy_charged: orm.Float, working_ion: orm.Str, ion_energy_per_atom: orm.Float):
    """Average voltage of the step charged → discharged.

    :param discharged: the ion-rich (discharged) structure; ``energy_discharged`` its total energy (eV).
    :param charged: the ion-poor (charged) structure; ``energy_charged`` its total energy (eV).
    :param working_ion: element symbol of the working ion (Li, Na, Mg, ...).
    :param ion_energy_per_atom: energy per atom of the working-ion metal, same method (eV/atom).
    :returns: ``average_voltage`` (Float, V), ``capacity_grav`` (Float, mAh/g of the discharged state) and
        ``report`` (Dict with formulas and the reference used).
    """
    ion = working_ion.value
    if not Element.is_valid_symbol(ion):
        return ExitCode(350, f"working_ion {ion!r} is not an element symbol", invalidates_cache=True)
    try:
        result = voltage_of(discharged.get_pymatgen_structure(), energy_discharged.value,
                            charged.get_pymatgen_structure(), energy_charged.value, ion, ion_energy_per_atom.value)
    except VoltageError as exc:
        return ExitCode(351, f"no insertion electrode: {exc}", invalidates_cache=True)
    return {"average_voltage": orm.Float(result["average_voltage_V"]),
            "capacity_grav": orm.Float(result["capacity_grav_mAh_per_g"]),
            "report": orm.Dict(result)}
