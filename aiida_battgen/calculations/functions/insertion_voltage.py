"""``battgen.insertion_voltage``: insertion potential from host, host + n ion and reference energies (eV)."""

from __future__ import annotations

import math

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from battgen.contracts.ions import ion_charges

# Charge z per working ion: pymatgen's formal charges, as the science layer uses them.
ION_CHARGES = ion_charges()


@calcfunction
def insertion_voltage(energy_host_eV: orm.Float, energy_inserted_eV: orm.Float, n_ions: orm.Int,
                      reference_energy_eV_per_atom: orm.Float, ion: orm.Str, ion_charge: orm.Int | None = None,
                      reference: orm.Str | None = None):
    """V = −(E(host + n ion) − E(host) − n E_ref) / (n z) in volts, from total energies in eV (DFT or MLIP,
    as long as all three come from the same method). ``z`` is the ion's charge (Li/Na/K 1, Mg/Ca/Zn 2, Al 3)
    unless ``ion_charge`` (Int) is given; ``reference`` (Str) describes E_ref and is copied to the output.

    Returns ``voltage`` (Float, V) and ``parameters`` (Dict: voltage_V, insertion_energy_per_ion_eV in eV/ion,
    the inputs with units, the formula).
    """
    symbol = ion.value
    charge = ion_charge.value if ion_charge is not None else ION_CHARGES.get(symbol)
    if charge is None:
        return ExitCode(320, f"unknown working ion {symbol!r}: pass ion_charge; known: {sorted(ION_CHARGES)}")
    n = n_ions.value
    if n < 1 or charge < 1:
        return ExitCode(321, f"n_ions and the ion charge must be positive, got {n} and {charge}")
    energies = (energy_host_eV.value, energy_inserted_eV.value, reference_energy_eV_per_atom.value)
    if not all(math.isfinite(e) for e in energies):
        return ExitCode(322, f"energies must be finite, got {energies}")
    delta = energy_inserted_eV.value - energy_host_eV.value - n * reference_energy_eV_per_atom.value
    voltage = -delta / (n * charge)
    return {
        "voltage": orm.Float(voltage),
        "parameters": orm.Dict({
            "voltage_V": voltage, "insertion_energy_per_ion_eV": delta / n, "ion": symbol, "ion_charge": charge,
            "n_ions": n, "energy_host_eV": energy_host_eV.value, "energy_inserted_eV": energy_inserted_eV.value,
            "reference_energy_eV_per_atom": reference_energy_eV_per_atom.value,
            "reference": reference.value if reference is not None else "not stated",
            "formula": "V = -(E(host+n ion) - E(host) - n E_ref) / (n z)",
        }),
    }
