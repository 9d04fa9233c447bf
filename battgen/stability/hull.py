"""Energy above the convex hull against a *recorded* reference hull.

A number like "E_hull = 25 meV/atom" only means something together with the hull it was measured
against, so :class:`ReferenceHull` wraps pymatgen's :class:`~pymatgen.analysis.phase_diagram.PhaseDiagram`
together with a label, the energy-correction scheme and the counts of what went in
(:meth:`ReferenceHull.describe`). Two kinds of hull:

* **DFT references** (:meth:`ReferenceHull.from_entries`): Materials Project entries, processed with
  ``MaterialsProject2020Compatibility`` (entries the scheme rejects are dropped and counted);
* **MLIP references** (:meth:`ReferenceHull.from_energy_batch`): a batch of structures whose rows carry
  the total MLIP energy ``energy_eV`` — the elemental references of
  :mod:`battgen.stability.elemental` plus known phases, all relaxed with the same model as the
  candidates. Label it with the model, e.g. ``mlip:chgnet-0.4.2 (elemental + host references)``.

**MLIP candidates against an MP hull.** MP hulls contain MP2020 anion and GGA/GGA+U mixing corrections.
Potentials trained on MPtrj's corrected energies (CHGNet, SevenNet-0) already predict on that scale and take
``candidate_compatibility=None`` (``battgen.known_materials.MLIP_CANDIDATE_COMPATIBILITY``); a potential
trained on raw GGA/GGA+U energies (M3GNet-MP-2021) needs the correction. As matbench-discovery does for
such models, the candidate's energy is then wrapped in a
``ComputedStructureEntry`` carrying the parameters of the MP calculation it emulates (GGA+U with MP's
U values when the structure is an oxide or fluoride of Co, Cr, Fe, Mn, Mo, Ni, V or W, GGA otherwise;
MPRelaxSet POTCAR symbols) and processed by ``MaterialsProject2020Compatibility`` before it is placed
on the hull (``candidate_compatibility="MP2020"``). Matbench-discovery copies these parameters from
the matching WBM DFT entry; generated candidates have none, so they are derived here.

**Sign convention.** E_hull is the distance to the reference hull and may be *negative*: a candidate
below the hull would be a new ground state of that hull (``allow_negative`` in pymatgen).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from importlib import metadata
from typing import Any, NamedTuple

from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Composition, Structure
from pymatgen.entries.compatibility import MaterialsProject2020Compatibility
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry
from pymatgen.io.vasp.sets import MPRelaxSet

from battgen.batch import StructureBatch

MP2020 = "MP2020"
COMPATIBILITY_SCHEMES = (MP2020, None)
ANNOTATION_COLUMNS = (
    "e_above_hull_eV_per_atom",
    "formation_energy_per_atom_eV",
    "decomposition",
    "hull_label",
    "hull_energy_correction_eV",
    "hull_error",
)
DEFAULT_OUTPUT = "annotated.jsonl.gz"
HULL_DESCRIPTION_FILE = "hull.json"


class HullError(ValueError):
    """A hull cannot be built or a composition cannot be placed on it."""


class IncompleteHullError(HullError):
    """The reference entries lack an elemental (terminal) entry for some of their elements."""

    def __init__(self, missing_elements: Iterable[str], message: str | None = None) -> None:
        self.missing_elements = sorted(set(missing_elements))
        super().__init__(
            message or f"reference hull has no elemental entry for {', '.join(self.missing_elements)}"
        )


class OutsideChemicalSpaceError(HullError):
    """A composition contains elements the reference hull does not span."""

    def __init__(self, formula: str, missing_elements: Iterable[str], hull_elements: Iterable[str]) -> None:
        self.missing_elements = sorted(set(missing_elements))
        super().__init__(
            f"{formula} is outside the hull's chemical space: no reference for "
            f"{', '.join(self.missing_elements)} (hull spans {'-'.join(sorted(hull_elements))})"
        )


class HullPoint(NamedTuple):
    """Where one composition and energy sits relative to the hull (all energies per atom)."""

    e_above_hull_eV_per_atom: float
    formation_energy_per_atom_eV: float
    decomposition: dict[str, float]  # reduced formula of each stable phase -> atom fraction


def _check_scheme(compatibility: str | None) -> None:
    if compatibility not in COMPATIBILITY_SCHEMES:
        raise HullError(f"unknown compatibility scheme {compatibility!r}; use one of {COMPATIBILITY_SCHEMES}")


@functools.cache
def _mp2020() -> MaterialsProject2020Compatibility:
    """One shared instance: constructing it parses its YAML config (~0.1 s), too slow per candidate."""
    return MaterialsProject2020Compatibility()


def _quiet_process(entries: list[ComputedEntry], inplace: bool = False) -> list[ComputedEntry]:
    """MP2020-process entries; its oxidation-state guessing warns for every intermetallic — silence that.

    ``inplace=True`` only for entries built here: copying is most of the cost for a single candidate.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Failed to guess oxidation states")
        warnings.filterwarnings("ignore", message="No Pauling electronegativity")
        return _mp2020().process_entries(entries, clean=True, inplace=inplace)


def mp_style_entry(
    structure_or_composition: Structure | Composition | str, energy_eV: float, entry_id: str | None = None
) -> ComputedEntry:
    """Wrap an MLIP total energy in an entry with the parameters of the MP calculation it emulates.

    run_type is GGA+U with MP's U values when the most electronegative element is O or F and a
    U-element is present, GGA otherwise; POTCAR symbols are MPRelaxSet's. A structure gives a
    ComputedStructureEntry (MP2020 then detects peroxides/superoxides from the geometry), a composition
    a ComputedEntry.
    """
    if isinstance(structure_or_composition, Structure):
        composition = structure_or_composition.composition
    else:
        composition = Composition(structure_or_composition)
    elements = sorted(composition.elements, key=lambda el: el.X)
    anion = elements[-1].symbol
    u_settings = _mp2020().u_settings.get(anion, {})
    hubbards = {el.symbol: float(u_settings[el.symbol]) for el in elements if u_settings.get(el.symbol)}
    potcars = MPRelaxSet.CONFIG["POTCAR"]
    parameters = {
        "run_type": "GGA+U" if hubbards else "GGA",
        "is_hubbard": bool(hubbards),
        "hubbards": hubbards,
        "potcar_symbols": [f"PBE {potcars[el.symbol]}" for el in elements if el.symbol in potcars],
        "software": "vasp",
        "energy_source": "mlip (MP GGA/GGA+U emulated)",
    }
    if isinstance(structure_or_composition, Structure):
        return ComputedStructureEntry(structure_or_composition, energy_eV, parameters=parameters, entry_id=entry_id)
    return ComputedEntry(composition, energy_eV, parameters=parameters, entry_id=entry_id)


class ReferenceHull:
    """A pymatgen PhaseDiagram plus the record of what it was built from.

    Build it with :meth:`from_entries` or :meth:`from_energy_batch`, not directly.
    """

    def __init__(
        self,
        phase_diagram: PhaseDiagram,
        label: str,
        compatibility: str | None = None,
        n_input_entries: int | None = None,
        n_dropped_by_compatibility: int = 0,
        n_rows_without_energy: int = 0,
        source: str = "entries",
    ) -> None:
        _check_scheme(compatibility)
        self.phase_diagram = phase_diagram
        self.label = label
        self.compatibility = compatibility
        self.n_input_entries = len(phase_diagram.all_entries) if n_input_entries is None else n_input_entries
        self.n_dropped_by_compatibility = n_dropped_by_compatibility
        self.n_rows_without_energy = n_rows_without_energy
        self.source = source

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def _build(cls, entries: list[ComputedEntry], **record: Any) -> ReferenceHull:
        if not entries:
            raise HullError("no reference entries to build a hull from")
        all_elements = {el.symbol for entry in entries for el in entry.composition.elements}
        with_terminal = {
            entry.composition.elements[0].symbol for entry in entries if len(entry.composition.elements) == 1
        }
        if all_elements - with_terminal:
            raise IncompleteHullError(all_elements - with_terminal)
        return cls(PhaseDiagram(entries), **record)

    @classmethod
    def from_entries(
        cls, entries: Iterable[ComputedEntry], label: str, compatibility: str | None = MP2020, *, copy: bool = True
    ) -> ReferenceHull:
        """A hull from computed entries (DFT, e.g. Materials Project).

        ``compatibility="MP2020"`` re-applies MaterialsProject2020Compatibility (entries it rejects —
        wrong run type, POTCAR, U value — are dropped and counted); ``None`` uses the energies as
        stored, including any correction already applied to them. MP2020 processing works on copies;
        ``copy=False`` corrects the given entries in place (faster; for entries loaded just for this hull).
        """
        _check_scheme(compatibility)
        entries = list(entries)
        processed = _quiet_process(entries, inplace=not copy) if compatibility == MP2020 else entries
        return cls._build(
            processed,
            label=label,
            compatibility=compatibility,
            n_input_entries=len(entries),
            n_dropped_by_compatibility=len(entries) - len(processed),
            source="entries",
        )

    @classmethod
    def from_energy_batch(
        cls, batch: StructureBatch, label: str, compatibility: str | None = None
    ) -> ReferenceHull:
        """A hull from a batch whose rows carry total energies ``energy_eV`` (e.g. MLIP-relaxed references).

        Rows without an energy (a failed relaxation) are skipped and counted; the batch must still hold
        an elemental row for every element it contains. ``compatibility="MP2020"`` wraps each row as an
        MP-style entry (see :func:`mp_style_entry`) and corrects it, for MLIP hulls meant to be compared
        with MP formation energies.
        """
        _check_scheme(compatibility)
        entries, n_without = [], 0
        for meta, structure in batch:
            energy = meta.get("energy_eV")
            if energy is None:
                n_without += 1
                continue
            if compatibility == MP2020:
                entry = mp_style_entry(structure, float(energy), entry_id=meta["row_id"])
            else:
                entry = ComputedStructureEntry(structure, float(energy), entry_id=meta["row_id"])
            entries.append(entry)
        if not entries:
            raise HullError(f"none of the {len(batch)} reference rows has an energy_eV")
        processed = _quiet_process(entries, inplace=True) if compatibility == MP2020 else entries
        return cls._build(
            processed,
            label=label,
            compatibility=compatibility,
            n_input_entries=len(entries),
            n_dropped_by_compatibility=len(entries) - len(processed),
            n_rows_without_energy=n_without,
            source="energy_batch",
        )

    # --- queries ------------------------------------------------------------------------------
    @property
    def elements(self) -> list[str]:
        return sorted(el.symbol for el in self.phase_diagram.elements)

    @property
    def stable_formulas(self) -> list[str]:
        return sorted({entry.composition.reduced_formula for entry in self.phase_diagram.stable_entries})

    def check_chemical_space(self, composition: Composition | str) -> None:
        """Raise :class:`OutsideChemicalSpaceError` if the composition has elements the hull lacks."""
        composition = Composition(composition)
        missing = {el.symbol for el in composition.elements} - set(self.elements)
        if missing:
            raise OutsideChemicalSpaceError(composition.reduced_formula, missing, self.elements)

    def entry_for(
        self,
        structure_or_composition: Structure | Composition | str,
        energy_eV: float,
        compatibility: str | None = None,
        entry_id: str | None = None,
    ) -> ComputedEntry:
        """The entry placed on the hull for a total energy; with MP2020 corrected as an MP-style entry."""
        _check_scheme(compatibility)
        if compatibility == MP2020:
            entry = mp_style_entry(structure_or_composition, energy_eV, entry_id=entry_id)
            processed = _quiet_process([entry], inplace=True)
            if not processed:
                raise HullError(f"MP2020 rejected the candidate {entry.composition.reduced_formula}")
            return processed[0]
        if isinstance(structure_or_composition, Structure):
            return ComputedStructureEntry(structure_or_composition, energy_eV, entry_id=entry_id)
        return ComputedEntry(Composition(structure_or_composition), energy_eV, entry_id=entry_id)

    def e_above_hull(
        self,
        structure_or_composition: Structure | Composition | str,
        energy_eV: float,
        compatibility: str | None = None,
    ) -> HullPoint:
        """E_hull (eV/atom, negative below the hull), formation energy (eV/atom) and decomposition.

        ``energy_eV`` is the total energy of the given structure (or of the given formula unit count of
        the composition). ``compatibility="MP2020"`` corrects it first, for MLIP energies on an MP hull.
        """
        composition = (
            structure_or_composition.composition
            if isinstance(structure_or_composition, Structure)
            else Composition(structure_or_composition)
        )
        self.check_chemical_space(composition)
        entry = self.entry_for(structure_or_composition, energy_eV, compatibility)
        return self._place(entry)

    def _place(self, entry: ComputedEntry) -> HullPoint:
        decomposition, e_hull = self.phase_diagram.get_decomp_and_e_above_hull(entry, allow_negative=True)
        fractions: dict[str, float] = {}
        for phase, amount in decomposition.items():
            formula = phase.composition.reduced_formula
            fractions[formula] = fractions.get(formula, 0.0) + float(amount)
        return HullPoint(
            float(e_hull), float(self.phase_diagram.get_form_energy_per_atom(entry)), fractions
        )

    def describe(self) -> dict[str, Any]:
        """What this hull is: label, corrections, counts, elements and its stable phases (JSON-safe)."""
        stable = sorted(
            self.phase_diagram.stable_entries, key=lambda e: (e.composition.reduced_formula, e.entry_id or "")
        )
        return {
            "label": self.label,
            "source": self.source,
            "compatibility": self.compatibility,
            "n_entries": len(self.phase_diagram.all_entries),
            "n_input_entries": self.n_input_entries,
            "n_dropped_by_compatibility": self.n_dropped_by_compatibility,
            "n_rows_without_energy": self.n_rows_without_energy,
            "elements": self.elements,
            "n_stable_phases": len(stable),
            "stable_phases": [
                {
                    "formula": entry.composition.reduced_formula,
                    "entry_id": entry.entry_id,
                    "formation_energy_per_atom_eV": round(float(self.phase_diagram.get_form_energy_per_atom(entry)), 6),
                }
                for entry in stable
            ],
            "pymatgen_version": metadata.version("pymatgen"),
        }


def annotate_batch(
    batch: StructureBatch, hull: ReferenceHull, candidate_compatibility: str | None = None
) -> StructureBatch:
    """A copy of ``batch`` with hull columns, computed from each row's ``energy_eV`` (total, eV).

    Adds ``e_above_hull_eV_per_atom``, ``formation_energy_per_atom_eV``, ``decomposition``
    ({reduced formula: atom fraction}), ``hull_label``, ``hull_energy_correction_eV`` (the MP2020
    correction applied to the candidate, 0 without) and ``hull_error``. Rows without an energy or outside
    the hull's chemical space get None values and the reason in ``hull_error``; they never abort the
    batch. Use ``candidate_compatibility="MP2020"`` for MLIP energies against an MP2020 hull.
    """
    _check_scheme(candidate_compatibility)
    columns: dict[str, list[Any]] = {key: [] for key in ANNOTATION_COLUMNS}
    for meta, structure in batch:
        values: dict[str, Any] = dict.fromkeys(ANNOTATION_COLUMNS)
        values["hull_label"] = hull.label
        energy = meta.get("energy_eV")
        try:
            if energy is None:
                raise HullError("row has no energy_eV")
            hull.check_chemical_space(structure.composition)
            entry = hull.entry_for(structure, float(energy), candidate_compatibility, entry_id=meta["row_id"])
            point = hull._place(entry)
            values.update(point._asdict())
            values["hull_energy_correction_eV"] = float(entry.correction)
        except HullError as exc:
            values["hull_error"] = str(exc)
        for key in ANNOTATION_COLUMNS:
            columns[key].append(values[key])
    return batch.with_columns(**columns)


__all__ = [
    "MP2020",
    "HullError",
    "HullPoint",
    "IncompleteHullError",
    "OutsideChemicalSpaceError",
    "ReferenceHull",
    "annotate_batch",
    "mp_style_entry",
]
