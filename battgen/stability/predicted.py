"""E_hull from a *predicted* formation energy, against an MP-referenced hull (seed 000 §2.4 screening).

A model trained on MP formation energies predicts Ef relative to MP's elemental references; placing that
on the MP hull (MP2020-corrected entries, :class:`battgen.stability.hull.ReferenceHull`) gives an E_hull
on the same scale as MP's. A hull from another database (ALIGNN's public JARVIS E_hull model) is on a
different reference and must not be used for an MP-style cut; every value here says where it came from.
"""

from __future__ import annotations

import numpy as np

from battgen.batch import StructureBatch
from battgen.contracts.predict import PREDICTED_PREFIX
from battgen.stability.hull import HullError, ReferenceHull

E_HULL_COLUMN = "predicted_e_above_hull_eV_per_atom"


def ehull_from_predicted_formation_energy(
    batch: StructureBatch,
    reference_hull: ReferenceHull,
    formation_energy_column: str = PREDICTED_PREFIX + "formation_energy_per_atom_eV",
) -> StructureBatch:
    """E_hull of each row from its predicted formation energy, against ``reference_hull``.

    The formation energy (eV/atom, relative to the elemental references of the hull — MP's, corrected by
    MP2020, for a model trained on MP formation energies and an MP hull) is turned into a total energy
    ``N * Ef + sum_i n_i mu_i`` with ``mu_i`` the hull's elemental reference energies per atom, and placed
    on the hull. Adds ``predicted_e_above_hull_eV_per_atom`` (negative below the hull),
    ``e_above_hull_source`` (which column, which model, which hull) and ``e_above_hull_error`` (why a row
    has no value: no prediction, or elements outside the hull).
    """
    from pymatgen.entries.computed_entries import ComputedEntry

    references = {el.symbol: entry.energy_per_atom for el, entry in reference_hull.phase_diagram.el_refs.items()}
    e_hull, sources, errors = [], [], []
    for meta, structure in batch:
        formation = meta.get(formation_energy_column)
        model = meta.get("predicted_by")
        sources.append(
            f"{formation_energy_column}{f' ({model})' if model else ''} on hull '{reference_hull.label}'"
        )
        try:
            if formation is None or not np.isfinite(float(formation)):
                raise HullError(f"row has no {formation_energy_column}")
            composition = structure.composition
            reference_hull.check_chemical_space(composition)
            total_energy = float(formation) * composition.num_atoms + sum(
                amount * references[el.symbol] for el, amount in composition.items()
            )
            point = reference_hull._place(ComputedEntry(composition, total_energy, entry_id=meta["row_id"]))
            e_hull.append(point.e_above_hull_eV_per_atom)
            errors.append(None)
        except HullError as exc:
            e_hull.append(None)
            errors.append(str(exc))
    return batch.with_columns(**{E_HULL_COLUMN: e_hull, "e_above_hull_source": sources, "e_above_hull_error": errors})
