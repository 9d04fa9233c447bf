"""``battgen.dft_relax_results``: one set of outputs, in one set of units, from either DFT engine's raw outputs.

Called by ``battgen.dft.relax`` on the outputs of the relax work chain it ran, so the translation
(VASP kbar → GPa, per-atom energy, convergence flags) sits in the provenance graph.
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import ExitCode, calcfunction

KBAR_TO_GPA = 0.1


def _array(name: str, values) -> orm.ArrayData:
    array = orm.ArrayData()
    array.set_array(name, np.asarray(values, dtype=float))
    return array


@calcfunction
def dft_relax_results(
    structure: orm.StructureData,
    dft_settings: orm.Dict,
    vasp_misc: orm.Dict | None = None,
    qe_parameters: orm.Dict | None = None,
    qe_trajectory: orm.TrajectoryData | None = None,
):
    """Total energy (eV), energy per atom (eV/atom), forces (eV/Å), stress (GPa) and convergence flags.

    :param structure: the relaxed structure the energies belong to (Å).
    :param dft_settings: what the run used (engine, functional, cutoffs, U); copied to the outputs.
    :param vasp_misc: VASP: the ``misc`` output of aiida-vasp (``total_energies.energy_extrapolated`` in eV,
        ``forces`` eV/Å, ``stress`` kbar, ``run_status``).
    :param qe_parameters: QE: ``output_parameters`` (``energy`` in eV) of PwRelaxWorkChain.
    :param qe_trajectory: QE: ``output_trajectory`` (``forces`` eV/Å, ``stress`` GPa per step; last step used).
    """
    n_atoms = len(structure.sites)
    if vasp_misc is not None:
        misc = vasp_misc.get_dict()
        try:
            energy = float(misc["total_energies"]["energy_extrapolated"])
            forces, stress = np.asarray(misc["forces"], float), np.asarray(misc["stress"], float) * KBAR_TO_GPA
        except KeyError as exc:
            return ExitCode(330, f"the VASP misc output lacks {exc}", invalidates_cache=True)
        status = misc.get("run_status", {})
        # The static run after a cell relaxation has NSW = 0 and no ionic flag: the relax loop converged.
        ionic = status.get("ionic_converged")
        converged = {"ionic": True if ionic is None else bool(ionic),
                     "electronic": bool(status.get("electronic_converged"))}
    elif qe_parameters is not None and qe_trajectory is not None:
        energy = float(qe_parameters["energy"])
        forces = qe_trajectory.get_array("forces")[-1]
        names = qe_trajectory.get_arraynames()
        stress = qe_trajectory.get_array("stress")[-1] if "stress" in names else np.full((3, 3), np.nan)
        # PwRelaxWorkChain finishes ok only with ionic and SCF convergence (its handlers restart otherwise).
        converged = {"ionic": True, "electronic": True}
    else:
        return ExitCode(331, "give vasp_misc (VASP) or qe_parameters + qe_trajectory (QE)", invalidates_cache=True)
    if forces.shape != (n_atoms, 3):
        return ExitCode(332, f"forces have shape {forces.shape}, expected ({n_atoms}, 3)", invalidates_cache=True)
    return {
        "total_energy": orm.Float(energy),
        "energy_per_atom": orm.Float(energy / n_atoms),
        "forces": _array("forces", forces),
        "stress": _array("stress", np.asarray(stress, float).reshape(3, 3)),
        "converged": orm.Dict(converged),
        "dft_settings": orm.Dict(dft_settings.get_dict()),
    }
