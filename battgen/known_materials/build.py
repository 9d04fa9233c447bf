"""Build the embedded known-materials reference from the Materials-Project-derived sets in shared/data.

Run from the repository root::

    python -m battgen.known_materials.build --data ../shared/data \
        --output battgen/known_materials/data/known_materials_v1.jsonl.gz

Energies (``energy_per_atom_eV``, MP2020-compatible, eV/atom) come from one of two routes, recorded per
record in ``energy_source``:

* ``mp2020_entry`` — a Materials Project ComputedEntry processed here with pymatgen's
  ``MaterialsProject2020Compatibility`` (emmet / pymatgen entry sets);
* ``formation_energy`` — rebuilt from MP's formation energy per atom and MP's elemental reference
  entries (matbench-discovery, MP2020): E/atom = Ef/atom + sum_i x_i mu_i. The rebuild is checked
  against pymatgen on the entries that carry both (:func:`rebuild_check`; a test does it too).

Structures (for novelty) come from MP-20, MP-40 and the entry sets; the battery tables add formulas and
ids of known electrode phases without structures. Records are keyed by MP id; the first source that gives
a structure / energy wins, in the order of ``SOURCES`` (entry sets before CSVs for energies).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import statistics
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from monty.json import MontyDecoder
from pymatgen.core import Composition, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

from battgen.known_materials import FORMAT, FORMAT_VERSION

csv.field_size_limit(sys.maxsize)

ELEMENTAL_REFERENCES = "mp_elemental_refs/2023-02-07-mp-elemental-reference-entries.json.gz"
# (path, energies used): sets from before MP's 2020 recalculations (Li-Fe-P-O, TiO2: 2012-2014 runs) sit
# 6-25 meV/atom off the MP2020-era energies of the same ids, so they give structures only — one hull must
# not mix database eras.
ENTRY_SETS = (
    ("emmet_test_files/Li-Fe-O.json.gz", True),
    ("pymatgen_entries/entries/correction_calculator/calc_compounds_norm.json.gz", True),
    ("pymatgen_entries/entries/Mn-O_entries.json", True),
    ("pymatgen_entries/entries/Li-Fe-P-O_entries.json", False),
    ("pymatgen_entries/entries/TiO2_entries.json", False),
    ("emmet_test_files/LiTiO2_batt.json.gz", False),
    ("emmet_test_files/LiCoO2_batt.json.gz", False),
    ("emmet_test_files/mobility/LiMnP2O7_batt.json.gz", False),
)
STRUCTURE_CSVS = (  # (path, has formation energy)
    "mp20_mini_slices/raw_mp20_dataset_mini.csv",
    "mp40_chemeleon/test.csv",
    "mp40_chemeleon/random_split_test.csv",
    "mp40_chemeleon/mineral_test.csv",
    "mp40_chemeleon/test_v2025-01-20.csv",
)
TIME_SPLIT = "mp_time_split_dummy/mp_dummy_time_summary.json.gz"
BATTERY_2019 = "mp_battery_2019/data_2019_12_03.csv"
BATTERY_2024 = "mp_battery_2024/mp_batteries.csv"
_DECIMALS = 6  # Å and fractional coordinates: far below StructureMatcher tolerances


def _open_json(path: Path) -> Any:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return json.load(handle)


def _decode_entries(data: Any) -> list[ComputedEntry]:
    records = list(data.values()) if isinstance(data, dict) and "@class" not in data else data
    records = records if isinstance(records, list) else [records]
    entries = []
    for record in records:
        if "@class" in record:
            entries.append(MontyDecoder().process_decoded(record))
        elif "structure" in record:
            entries.append(ComputedStructureEntry.from_dict(record))
        else:
            entries.append(ComputedEntry.from_dict(record))
    return entries


def _mp_id(entry: ComputedEntry) -> str | None:
    for value in (entry.data.get("material_id"), entry.entry_id):
        if isinstance(value, str) and value.startswith(("mp-", "mvc-")):
            return value.removesuffix("-GGA").removesuffix("-GGA+U")
    return None


def elemental_chemical_potentials(data_dir: Path) -> tuple[dict[str, float], dict[str, ComputedEntry]]:
    """MP2020 energy per atom of each element's MP ground state (eV/atom), and the entries."""
    entries = {el: entry for el, entry in zip(*zip(*_open_json(data_dir / ELEMENTAL_REFERENCES).items()))}
    decoded = {el: MontyDecoder().process_decoded(entry) for el, entry in entries.items()}
    return {el: entry.energy_per_atom for el, entry in decoded.items()}, decoded


def rebuild_energy_per_atom(composition: Composition | str, formation_energy_per_atom: float,
                            mu: dict[str, float]) -> float | None:
    """E/atom (eV) = Ef/atom + sum_i x_i mu_i; None when an element has no MP reference."""
    composition = Composition(composition)
    try:
        return float(formation_energy_per_atom) + sum(
            composition.get_atomic_fraction(el) * mu[el.symbol] for el in composition.elements)
    except KeyError:
        return None


def _structure_row(structure: Structure) -> dict[str, Any] | None:
    if not structure.is_ordered:
        return None
    return {
        "lattice": np.round(structure.lattice.matrix, _DECIMALS).tolist(),
        "species": [site.specie.symbol for site in structure],
        "frac_coords": np.round(structure.frac_coords % 1.0, _DECIMALS).tolist(),
    }


class _Records:
    def __init__(self) -> None:
        self.by_id: dict[str, dict[str, Any]] = {}
        self.n_skipped: dict[str, int] = {}

    def add(self, material_id: str, formula: str, source: str, structure: Structure | None = None,
            energy: float | None = None, energy_source: str | None = None,
            e_above_hull: float | None = None) -> None:
        composition = Composition(formula)
        record = self.by_id.setdefault(material_id, {
            "material_id": material_id,
            "formula": composition.reduced_formula,
            "chemical_system": composition.chemical_system,
            "sources": [],
            "energy_per_atom_eV": None,
            "energy_source": None,
            "e_above_hull_mp_eV_per_atom": None,
            "structure": None,
        })
        if record["formula"] != composition.reduced_formula:  # same id, other compound: keep the first
            self.n_skipped[source] = self.n_skipped.get(source, 0) + 1
            return
        if source not in record["sources"]:
            record["sources"].append(source)
        if record["structure"] is None and structure is not None:
            record["structure"] = _structure_row(structure)
        if record["energy_per_atom_eV"] is None and energy is not None:
            record["energy_per_atom_eV"] = round(float(energy), 6)
            record["energy_source"] = energy_source
        if record["e_above_hull_mp_eV_per_atom"] is None and e_above_hull not in (None, ""):
            record["e_above_hull_mp_eV_per_atom"] = round(float(e_above_hull), 6)


def processed_entry_sets(data_dir: Path, mp2020_era_only: bool = False
                         ) -> list[tuple[str, ComputedEntry, ComputedEntry | None]]:
    """(source, raw entry, MP2020-processed entry or None) of every entry set; None also for the energies of
    pre-2020 sets (see ``ENTRY_SETS``), which ``mp2020_era_only`` leaves out altogether."""
    from battgen.stability.hull import _quiet_process

    out = []
    for relative, energies_used in ENTRY_SETS:
        if mp2020_era_only and not energies_used:
            continue
        entries = _decode_entries(_open_json(data_dir / relative))
        for entry in entries:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                processed = _quiet_process([entry], inplace=False)
            out.append((relative, entry, processed[0] if processed and energies_used else None))
    return out


def rebuild_check(data_dir: Path) -> dict[str, Any]:
    """Rebuilt (formation energy + elemental references) vs pymatgen-processed MP2020 energies per atom.

    Pairs: entries of the MP2020-era entry sets whose ``data`` carry MP's ``formation_energy_per_atom`` or
    whose MP id has one in a formation-energy CSV. Returns |delta| statistics in meV/atom.
    """
    mu, _ = elemental_chemical_potentials(data_dir)
    formation = _formation_energies_by_id(data_dir)
    deltas = []
    pairs = []
    for source, raw, processed in processed_entry_sets(data_dir, mp2020_era_only=True):
        if processed is None:
            continue
        ef = raw.data.get("formation_energy_per_atom")
        material_id = _mp_id(raw)
        if ef is None and material_id in formation:
            ef = formation[material_id]
        if ef is None:
            continue
        rebuilt = rebuild_energy_per_atom(raw.composition, ef, mu)
        if rebuilt is None:
            continue
        delta = rebuilt - processed.energy_per_atom
        deltas.append(abs(delta) * 1000)
        pairs.append({"source": source, "material_id": material_id, "formula": raw.composition.reduced_formula,
                      "delta_meV_per_atom": round(delta * 1000, 3)})
    return {
        "n_pairs": len(deltas),
        "median_abs_delta_meV_per_atom": statistics.median(deltas) if deltas else None,
        "max_abs_delta_meV_per_atom": max(deltas) if deltas else None,
        "pairs": pairs,
    }


def _read_csv(path: Path) -> Iterable[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)


def _formation_energies_by_id(data_dir: Path) -> dict[str, float]:
    formation = {}
    for row in _read_csv(data_dir / STRUCTURE_CSVS[0]):
        formation[row["material_id"]] = float(row["formation_energy_per_atom"])
    for record in _time_split_rows(data_dir):
        formation.setdefault(record["material_id"], float(record["formation_energy_per_atom"]))
    return formation


def _time_split_rows(data_dir: Path) -> list[dict[str, Any]]:
    data = _open_json(data_dir / TIME_SPLIT)
    columns, rows = data["columns"], data["data"]
    return [dict(zip(columns, row)) for row in rows]


def build_records(data_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All records (sorted by MP id) and the build record (sources, counts, rebuild check)."""
    data_dir = Path(data_dir)
    mu, elemental = elemental_chemical_potentials(data_dir)
    records = _Records()
    for element, entry in sorted(elemental.items()):
        records.add(_mp_id(entry) or f"element-{element}", element, ELEMENTAL_REFERENCES,
                    energy=entry.energy_per_atom, energy_source="mp2020_entry", e_above_hull=0.0)
    for source, raw, processed in processed_entry_sets(data_dir):
        material_id = _mp_id(raw)
        if material_id is None:
            records.n_skipped[source] = records.n_skipped.get(source, 0) + 1
            continue
        structure = raw.structure if isinstance(raw, ComputedStructureEntry) else None
        records.add(material_id, raw.composition.reduced_formula, source, structure,
                    energy=None if processed is None else processed.energy_per_atom,
                    energy_source="mp2020_entry", e_above_hull=raw.data.get("e_above_hull"))
    for relative in STRUCTURE_CSVS:
        for row in _read_csv(data_dir / relative):
            structure = Structure.from_str(row["cif"], fmt="cif")
            ef = row.get("formation_energy_per_atom")
            energy = rebuild_energy_per_atom(structure.composition, float(ef), mu) if ef else None
            records.add(row["material_id"], structure.composition.reduced_formula, relative, structure,
                        energy=energy, energy_source="formation_energy",
                        e_above_hull=row.get("e_above_hull", row.get("energy_above_hull")))
    for row in _time_split_rows(data_dir):
        structure = Structure.from_dict(row["structure"])
        energy = rebuild_energy_per_atom(structure.composition, row["formation_energy_per_atom"], mu)
        records.add(row["material_id"], structure.composition.reduced_formula, TIME_SPLIT, structure,
                    energy=energy, energy_source="formation_energy", e_above_hull=row["energy_above_hull"])
    for row in _read_csv(data_dir / BATTERY_2019):
        for side in ("charge", "discharge"):
            records.add(row[f"id_{side}"], row[f"formula_{side}"], BATTERY_2019,
                        e_above_hull=row[f"stability_{side}"])
    formulas_2024 = set()
    for row in _read_csv(data_dir / BATTERY_2024):
        formulas_2024.update(Composition(row[f"Formula {side}"]).reduced_formula for side in ("Charge", "Discharge"))
    known = {record["formula"] for record in records.by_id.values()}
    for formula in sorted(formulas_2024 - known):  # phases only the 2024 table names (no MP id there)
        records.add(f"battery-2024:{formula}", formula, BATTERY_2024)

    ordered = [records.by_id[key] for key in sorted(records.by_id)]
    check = rebuild_check(data_dir)
    source_files = sorted({ELEMENTAL_REFERENCES, *(path for path, _ in ENTRY_SETS), *STRUCTURE_CSVS, TIME_SPLIT, BATTERY_2019, BATTERY_2024})
    build = {
        "sources": {
            relative: hashlib.sha256((data_dir / relative).read_bytes()).hexdigest() for relative in source_files
        },
        "n_skipped_per_source": records.n_skipped,
        "rebuild_check": {key: value for key, value in check.items() if key != "pairs"},
    }
    return ordered, build


def coverage_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "n_records": len(records),
        "n_structures": sum(r["structure"] is not None for r in records),
        "n_energies": sum(r["energy_per_atom_eV"] is not None for r in records),
        "n_chemical_systems": len({r["chemical_system"] for r in records}),
        "n_chemical_systems_with_energies": len({r["chemical_system"] for r in records
                                                 if r["energy_per_atom_eV"] is not None}),
    }


def write_reference(records: list[dict[str, Any]], build: dict[str, Any], output: Path) -> dict[str, Any]:
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": "battgen known materials (Materials Project derived)",
        "licence": "CC-BY-4.0 (Materials Project data: Jain et al., APL Mater. 1, 011002 (2013))",
        "energy_scheme": "MP2020 (MaterialsProject2020Compatibility), eV/atom",
        **coverage_counts(records),
        "build": build,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same inputs give byte-identical output.
    with open(output, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as handle:
        handle.write((json.dumps(header, separators=(",", ":")) + "\n").encode())
        for record in records:
            handle.write((json.dumps(record, separators=(",", ":")) + "\n").encode())
    return header


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data directory")
    parser.add_argument("--output", type=Path, required=True, help="the reference file to write (.jsonl.gz)")
    args = parser.parse_args(argv)
    records, build = build_records(args.data)
    header = write_reference(records, build, args.output)
    summary = {k: v for k, v in header.items() if k != "build"}
    summary["rebuild_check"] = build["rebuild_check"]
    summary["bytes"] = args.output.stat().st_size
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
