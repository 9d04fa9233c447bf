"""Training data for the working-ion voltage model (seed 002): discharged electrode structures + voltages.

(a) Real Materials Project electrodes, :func:`build_mp_electrode_batch`. The shared Battery Explorer
tables (``mp_battery_2019``: with charged/discharged mp-ids; ``mp_battery_2024``: formulas only) carry
no structures, so each discharged state is looked up in the shared MP structure sources
(:data:`STRUCTURE_SOURCES`): by mp-id where the table has one (``structure_match: material_id``), else by
reduced formula with the polymorph chosen by the closest energy above hull to the table's
``stability_discharge`` within ``hull_tolerance_eV_per_atom`` (``structure_match: formula+hull``).
Rows are de-duplicated over both tables by (working ion, discharged structure, charged formula).

(b) MLIP-labelled electrodes (the offline route), :func:`mlip_voltage_labels`: remove all (or a share)
of the working ion from real discharged structures, relax both states and the ion metal with the same
MLIP (CHGNet by default, via :mod:`battgen.mlip.relax`), and compute the average voltage with pymatgen's
``InsertionElectrode`` (V = −[E(discharged) − E(charged) − n E(ion metal)] / (n z e)). Rows are tagged
``voltage_source: mlip:chgnet-<version>``; :func:`mlip_vs_mp_errors` compares them with MP.

Run as ``python -m battgen.predictors.electrode_data --shared-data /work/shared/data --output
electrodes.jsonl.gz`` to write the real-electrode batch (a).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Element, Lattice, Structure
from tqdm import tqdm

from battgen.batch import BatchFormatError, StructureBatch
from battgen.electrochem.voltage import insertion_voltage_V  # noqa: F401 - moved there; re-exported for callers

SEED_002_IONS = ("Li", "Mg", "Na", "Al", "K", "Ca", "Zn")
MP_BATTERY_TABLES = {
    "mp_battery_2019": "mp_battery_2019/data_2019_12_03.csv",
    "mp_battery_2024": "mp_battery_2024/mp_batteries.csv",
}
# Shared MP structure sources: CSVs with a CIF column, and files of ComputedStructureEntry objects.
STRUCTURE_SOURCES = {
    "mp20_mini": "mp20_mini_slices/raw_mp20_dataset_mini.csv",
    "mp40_test": "mp40_chemeleon/test.csv",
    "mp40_random_split_test": "mp40_chemeleon/random_split_test.csv",
    "mp40_mineral_test": "mp40_chemeleon/mineral_test.csv",
    "mp40_test_v2025": "mp40_chemeleon/test_v2025-01-20.csv",
    "emmet_Li-Fe-O": "emmet_test_files/Li-Fe-O.json.gz",
    "mp2020_calc_compounds": "pymatgen_entries/entries/correction_calculator/calc_compounds_norm.json.gz",
}
# Column renames to one schema, units in the names (MP: V, mAh/g, mAh/cm³ = Ah/L, Wh/kg, Wh/L, eV/atom).
_COLUMNS_2019 = {
    "battery_id": "battery_id", "working_ion": "working_ion", "formula_charge": "formula_charge",
    "formula_discharge": "formula_discharge", "id_charge": "id_charge", "id_discharge": "id_discharge",
    "average_voltage": "average_voltage_V", "capacity_grav": "capacity_grav_mAh_per_g",
    "capacity_vol": "capacity_vol_mAh_per_cm3", "energy_grav": "energy_grav_Wh_per_kg",
    "energy_vol": "energy_vol_Wh_per_L", "stability_charge": "stability_charge_eV_per_atom",
    "stability_discharge": "stability_discharge_eV_per_atom", "max_delta_volume": "max_delta_volume",
}
_COLUMNS_2024 = {
    "Battery ID": "battery_id", "Working Ion": "working_ion", "Formula Charge": "formula_charge",
    "Formula Discharge": "formula_discharge", "Average Voltage": "average_voltage_V",
    "Gravimetric Capacity": "capacity_grav_mAh_per_g", "Volumetric Capacity": "capacity_vol_mAh_per_cm3",
    "Gravimetric Energy": "energy_grav_Wh_per_kg", "Volumetric Energy": "energy_vol_Wh_per_L",
    "Stability Charge": "stability_charge_eV_per_atom", "Stability Discharge": "stability_discharge_eV_per_atom",
    "Max Delta Volume": "max_delta_volume", "Steps": "n_steps",
}
# Bulk metals of the working ions (experimental lattices, relaxed by the MLIP before use).
ION_METALS = {
    "Li": ("Im-3m", Lattice.cubic(3.44)), "Na": ("Im-3m", Lattice.cubic(4.23)), "K": ("Im-3m", Lattice.cubic(5.23)),
    "Ca": ("Fm-3m", Lattice.cubic(5.58)), "Al": ("Fm-3m", Lattice.cubic(4.05)),
    "Mg": ("P6_3/mmc", Lattice.hexagonal(3.21, 5.21)), "Zn": ("P6_3/mmc", Lattice.hexagonal(2.66, 4.95)),
}


# --- (a) real MP electrodes -------------------------------------------------------------------------
def read_mp_battery_table(shared_data: Path, table: str) -> pd.DataFrame:
    """One MP battery table with :data:`_COLUMNS_2019` names; ``id_*`` are None where the table has none."""
    path = Path(shared_data) / MP_BATTERY_TABLES[table]
    frame = pd.read_csv(path)
    columns = _COLUMNS_2019 if table == "mp_battery_2019" else _COLUMNS_2024
    frame = frame.rename(columns=columns)[list(columns.values())]
    for key in ("id_charge", "id_discharge"):
        if key not in frame:
            frame[key] = None
    frame["battery_table"] = table
    return frame


def _reduced(formula: str) -> str:
    return Composition(formula).reduced_formula


@dataclass
class _StructureRecord:
    material_id: str
    reduced_formula: str
    e_above_hull_eV_per_atom: float | None
    source: str
    cif: str | None = None
    structure: Structure | None = None

    def get_structure(self) -> Structure:
        if self.structure is None:
            with warnings.catch_warnings():  # CIF rounding notes from pymatgen's parser, harmless here
                warnings.simplefilter("ignore")
                self.structure = Structure.from_str(self.cif, fmt="cif")
        return self.structure


def load_structure_sources(shared_data: Path, sources: tuple[str, ...] | None = None) -> dict[str, _StructureRecord]:
    """Every shared MP structure (of ``sources``, default all of :data:`STRUCTURE_SOURCES`) by mp-id; CIFs
    are parsed lazily, only when a row needs them."""
    from monty.json import MontyDecoder

    records: dict[str, _StructureRecord] = {}
    for source, relative in STRUCTURE_SOURCES.items():
        if sources is not None and source not in sources:
            continue
        path = Path(shared_data) / relative
        if not path.exists():
            continue
        if path.suffix == ".csv":
            frame = pd.read_csv(path)
            formula_column = "pretty_formula" if "pretty_formula" in frame else "composition"
            hull_column = "e_above_hull" if "e_above_hull" in frame else "energy_above_hull"
            for mid, formula, hull, cif in zip(frame.material_id, frame[formula_column], frame[hull_column], frame.cif):
                records.setdefault(mid, _StructureRecord(mid, _reduced(formula), float(hull), source, cif=cif))
        else:
            with gzip.open(path, "rt") as handle:
                entries = json.load(handle, cls=MontyDecoder)
            for entry in entries.values() if isinstance(entries, dict) else entries:
                mid = str(entry.entry_id)
                if mid.startswith("mp-") and hasattr(entry, "structure"):
                    records.setdefault(mid, _StructureRecord(mid, entry.composition.reduced_formula, None, source,
                                                             structure=entry.structure))
    return records


def _match_structure(row: pd.Series, records: dict[str, _StructureRecord],
                     by_formula: dict[str, list[_StructureRecord]], hull_tolerance: float) -> tuple[_StructureRecord | None, str]:
    """The discharged structure of a battery row and how it was found ("" when not found)."""
    if isinstance(row.id_discharge, str) and row.id_discharge in records:
        return records[row.id_discharge], "material_id"
    candidates = [r for r in by_formula.get(_reduced(row.formula_discharge), []) if r.e_above_hull_eV_per_atom is not None]
    if not candidates or not math.isfinite(row.stability_discharge_eV_per_atom):
        return None, ""
    best = min(candidates, key=lambda r: abs(r.e_above_hull_eV_per_atom - row.stability_discharge_eV_per_atom))
    if abs(best.e_above_hull_eV_per_atom - row.stability_discharge_eV_per_atom) > hull_tolerance:
        return None, ""
    return best, "formula+hull"


def build_mp_electrode_batch(
    shared_data: Path,
    tables: tuple[str, ...] = ("mp_battery_2019", "mp_battery_2024"),
    ions: tuple[str, ...] = SEED_002_IONS,
    hull_tolerance_eV_per_atom: float = 0.03,
    progress: bool = True,
    sources: tuple[str, ...] | None = None,
) -> tuple[StructureBatch, dict[str, Any]]:
    """Discharged MP electrode structures with their MP voltages and capacities, and a count report.

    Each row: ``row_id`` (the battery id, ``@<table>`` appended when both tables hold it with different
    states), ``working_ion``, ``average_voltage_V``, ``capacity_grav_mAh_per_g``,
    ``capacity_vol_mAh_per_cm3`` (Ah/L), ``battery_id``, ``formula_charge``, ``formula_discharge``,
    ``material_id`` (of the structure used), ``structure_source``, ``structure_match``,
    ``battery_table``, ``voltage_source: "mp:gga+u"``. The report counts rows per ion read, matched, kept.
    """
    records = load_structure_sources(shared_data, sources)
    by_formula: dict[str, list[_StructureRecord]] = {}
    for record in records.values():
        by_formula.setdefault(record.reduced_formula, []).append(record)

    structures, meta, seen, row_ids = [], [], set(), set()
    report: dict[str, Any] = {"n_structures_in_sources": len(records), "tables": {}}
    for table in tables:
        frame = read_mp_battery_table(shared_data, table)
        frame = frame[frame.working_ion.isin(ions)]
        counts = {"n_rows": Counter(frame.working_ion), "matched": Counter(), "duplicates": Counter(), "unreadable": 0}
        for _, row in tqdm(frame.iterrows(), total=len(frame), desc=f"match {table}", disable=not progress):
            record, how = _match_structure(row, records, by_formula, hull_tolerance_eV_per_atom)
            if record is None:
                continue
            counts["matched"][row.working_ion] += 1
            key = (row.working_ion, record.material_id, _reduced(row.formula_charge))
            if key in seen:
                counts["duplicates"][row.working_ion] += 1
                continue
            try:
                structure = record.get_structure()
                if Element(row.working_ion) not in structure.composition:
                    raise ValueError("structure lacks the working ion")
            except (ValueError, BatchFormatError):
                counts["unreadable"] += 1
                continue
            seen.add(key)
            row_id = str(row.battery_id)
            if row_id in row_ids:  # the other table, or the same battery id twice in one table
                row_id = f"{row_id}@{table}"
            suffix = 2
            while row_id in row_ids:
                row_id, suffix = f"{str(row.battery_id)}@{table}-{suffix}", suffix + 1
            row_ids.add(row_id)
            structures.append(structure)
            meta.append({
                "row_id": row_id, "working_ion": row.working_ion, "average_voltage_V": float(row.average_voltage_V),
                "capacity_grav_mAh_per_g": float(row.capacity_grav_mAh_per_g),
                "capacity_vol_mAh_per_cm3": float(row.capacity_vol_mAh_per_cm3),
                "battery_id": str(row.battery_id), "formula_charge": row.formula_charge,
                "formula_discharge": row.formula_discharge, "material_id": record.material_id,
                "structure_source": record.source, "structure_match": how, "battery_table": table,
                "voltage_source": "mp:gga+u",
            })
        report["tables"][table] = {key: dict(value) if isinstance(value, Counter) else value for key, value in counts.items()}
    batch = StructureBatch(structures, meta)
    report["n_rows"] = len(batch)
    report["rows_per_ion"] = dict(Counter(batch.column("working_ion")))
    report["rows_per_match"] = dict(Counter(batch.column("structure_match")))
    return batch, report


# --- (b) MLIP-labelled electrodes -------------------------------------------------------------------
def remove_working_ion(structure: Structure, working_ion: str, removed_fraction: float = 1.0, seed: int = 0) -> Structure:
    """``structure`` without ``round(removed_fraction · n_ion)`` of its working-ion sites (chosen at random
    with ``seed``); at least one ion is removed."""
    ion_sites = [i for i, site in enumerate(structure) if site.specie.symbol == working_ion]
    if not ion_sites:
        raise ValueError(f"{structure.composition.reduced_formula} has no {working_ion} to remove")
    n_remove = min(len(ion_sites), max(1, int(round(removed_fraction * len(ion_sites)))))
    chosen = np.random.default_rng(seed).choice(ion_sites, size=n_remove, replace=False)
    charged = structure.copy()
    charged.remove_sites(sorted(int(i) for i in chosen))
    return charged


def removed_fraction_from_formulas(formula_discharge: str, formula_charge: str, working_ion: str) -> float:
    """Share of the working ion an MP battery removes between its two formulas (framework-normalised)."""
    def ions_per_framework(formula: str) -> float:
        comp = Composition(formula)
        framework = Composition({el: n for el, n in comp.items() if el.symbol != working_ion})
        return comp[Element(working_ion)] / framework.get_reduced_composition_and_factor()[1]

    n_dis, n_chg = ions_per_framework(formula_discharge), ions_per_framework(formula_charge)
    return (n_dis - n_chg) / n_dis


def ion_metal_energies_per_atom_eV(ions: set[str] | list[str], calculator: Any, relax_settings: dict[str, Any]) -> dict[str, float]:
    """Energy per atom of each working-ion metal relaxed with the same MLIP."""
    from battgen.mlip.relax import relax_structure

    energies = {}
    for ion in sorted(ions):
        spacegroup, lattice = ION_METALS[ion]
        coords = [[1 / 3, 2 / 3, 0.25]] if spacegroup == "P6_3/mmc" else [[0, 0, 0]]
        metal = Structure.from_spacegroup(spacegroup, lattice, [ion], coords)
        _, record = relax_structure(metal, calculator, **relax_settings)
        if record["energy_per_atom_eV"] is None:
            raise RuntimeError(f"relaxing {ion} metal failed: {record['relax_message']}")
        energies[ion] = float(record["energy_per_atom_eV"])
    return energies


def mlip_voltage_labels(
    batch: StructureBatch,
    removed_fraction: float | None = 1.0,
    mlip: str = "chgnet",
    fmax: float = 0.1,
    max_steps: int = 300,
    seed: int = 0,
    progress: bool = True,
    calculator: Any = None,
) -> tuple[StructureBatch, dict[str, Any]]:
    """MLIP average voltages for discharged rows carrying ``working_ion``.

    ``removed_fraction``: share of the ion taken out (1 = all); None takes it from each row's
    ``formula_charge`` (to reproduce an MP battery). Returns the relaxed discharged structures with
    ``average_voltage_V`` (MLIP), ``mp_average_voltage_V`` (the row's earlier ``average_voltage_V`` if
    any), energies, ``removed_fraction``, ``voltage_source: mlip:<name>-<version>``, plus a report with
    per-row failures. Rows whose relaxation fails are reported and left out.
    """
    from battgen.mlip.calculators import MlipInfo
    from battgen.mlip.relax import load_relax_mlip, relax_structure

    info: MlipInfo | None = None
    if calculator is None:
        calculator, info = load_relax_mlip(mlip)
    settings = {"fmax": fmax, "max_steps": max_steps, "cell_filter": "frechet", "optimizer": "FIRE",
                "supported_elements": info.supported_elements if info else None}
    version = info.package_version if info else "custom"
    ions = {m["working_ion"] for m in batch.meta}
    metal_energies = ion_metal_energies_per_atom_eV(ions, calculator, settings)

    structures, meta, failures = [], [], []
    for index, (row, structure) in enumerate(tqdm(batch, total=len(batch), desc=f"mlip voltages ({mlip})", disable=not progress)):
        ion = row["working_ion"]
        fraction = removed_fraction
        if fraction is None:
            fraction = (removed_fraction_from_formulas(row["formula_discharge"], row["formula_charge"], ion)
                        if row.get("formula_charge") else 1.0)
        charged = remove_working_ion(structure, ion, fraction, seed + index)
        relaxed_dis, rec_dis = relax_structure(structure, calculator, **settings)
        relaxed_chg, rec_chg = relax_structure(charged, calculator, **settings)
        if rec_dis["energy_eV"] is None or rec_chg["energy_eV"] is None:
            failures.append({"row_id": row["row_id"], "discharged": rec_dis["relax_status"], "charged": rec_chg["relax_status"]})
            continue
        voltage = insertion_voltage_V(rec_dis["energy_eV"], structure.composition, rec_chg["energy_eV"],
                                      charged.composition, ion, metal_energies[ion])
        new = {k: v for k, v in row.items() if k != "average_voltage_V"}
        if row.get("average_voltage_V") is not None:
            new["mp_average_voltage_V"] = row["average_voltage_V"]
        new.update(
            average_voltage_V=voltage, voltage_source=f"mlip:{mlip}-{version}",
            removed_fraction=float((len(structure) - len(charged)) / structure.composition[Element(ion)]),
            energy_discharged_eV=rec_dis["energy_eV"], energy_charged_eV=rec_chg["energy_eV"],
            ion_metal_energy_per_atom_eV=metal_energies[ion], formula_charged_mlip=charged.composition.reduced_formula,
            relax_converged=bool(rec_dis["converged"] and rec_chg["converged"]),
        )
        structures.append(relaxed_dis)
        meta.append(new)
    report = {"n_input": len(batch), "n_labelled": len(meta), "failures": failures,
              "ion_metal_energies_per_atom_eV": metal_energies, "mlip": mlip, "mlip_version": version}
    return StructureBatch(structures, meta), report


def mlip_vs_mp_errors(labelled: StructureBatch) -> dict[str, Any]:
    """MAE (V) of MLIP labels against the MP voltages of the same rows, overall and per ion."""
    rows = [(m["working_ion"], m["average_voltage_V"], m["mp_average_voltage_V"]) for m in labelled.meta
            if m.get("mp_average_voltage_V") is not None]
    if not rows:
        return {"n": 0}
    ions, mlip, mp = (np.array(x) for x in zip(*rows))
    errors = np.abs(mlip.astype(float) - mp.astype(float))
    result: dict[str, Any] = {"n": len(rows), "mae_V": float(errors.mean()),
                              "mean_signed_error_V": float((mlip.astype(float) - mp.astype(float)).mean())}
    for ion in sorted(set(ions.tolist())):
        result[f"mae_V_{ion}"] = float(errors[ions == ion].mean())
        result[f"n_{ion}"] = int((ions == ion).sum())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the real MP electrode batch (discharged structures + MP voltages).")
    parser.add_argument("--shared-data", default="/work/shared/data")
    parser.add_argument("--output", default="mp_electrodes.jsonl.gz")
    args = parser.parse_args(argv)
    batch, report = build_mp_electrode_batch(Path(args.shared_data))
    batch.write(Path(args.output))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
