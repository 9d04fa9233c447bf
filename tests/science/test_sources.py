"""File readers: CDVAE/MP-20 CSVs, extended XYZ, entries JSON, CIF; skip reports and filters."""

from __future__ import annotations

import csv
import json
import time

import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

from battgen.sources.files import (
    DISORDERED,
    DUPLICATE_ID,
    MALFORMED,
    MISSING_COLUMN,
    NO_STRUCTURE,
    OVERLAPPING,
    SourceFormatError,
    describe_source_file,
    read_entries_json,
    read_extxyz,
    read_mp20_csv,
    read_structures,
)

MP20_COLUMNS = ["", "material_id", "formation_energy_per_atom", "band_gap", "pretty_formula", "e_above_hull",
                "elements", "cif", "spacegroup.number"]


@pytest.fixture
def licl():
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.13), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture
def mgo():
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture
def mp20_csv(tmp_path, licl, mgo):
    """Six rows: LiCl, MgO, a malformed CIF, an overlapping pair, a disordered cell, an empty cif cell."""
    overlapping = Structure(Lattice.cubic(4.0), ["Li", "Li"], [[0, 0, 0], [0.05, 0, 0]])  # 0.2 Å apart
    disordered = Structure(Lattice.cubic(4.0), [{"Li": 0.5, "Na": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rows = [
        ["0", "mp-22905", "-1.9", "6.3", "LiCl", "0.0", "['Cl', 'Li']", licl.to(fmt="cif"), "225"],
        ["1", "mp-1265", "-3.0", "4.45", "MgO", "0.01", "['Mg', 'O']", mgo.to(fmt="cif"), "225"],
        ["2", "mp-bad", "-1.0", "0.0", "X", "0.0", "[]", "data_broken\n_cell_length_a 3\nloop_\n nonsense", "1"],
        ["3", "mp-overlap", "0.5", "0.0", "Li", "0.9", "['Li']", overlapping.to(fmt="cif"), "221"],
        ["4", "mp-disorder", "-1.0", "5.0", "LiNaCl2", "0.0", "[]", disordered.to(fmt="cif"), "221"],
        ["5", "mp-empty", "-1.0", "5.0", "LiCl", "0.0", "[]", "", "225"],
    ]
    path = tmp_path / "mini_mp20.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(MP20_COLUMNS)
        writer.writerows(rows)
    return path


def test_mp20_csv_values_and_skips(mp20_csv):
    batch, report = read_mp20_csv(mp20_csv)
    assert batch.row_ids == ["mp-22905", "mp-1265"]
    meta, structure = batch.get("mp-1265")
    assert structure.composition.reduced_formula == "MgO"
    assert structure.lattice.a == pytest.approx(4.21, abs=1e-4)
    assert meta["formation_energy_per_atom_eV"] == pytest.approx(-3.0)
    assert meta["band_gap_eV"] == pytest.approx(4.45)
    assert meta["e_above_hull_eV_per_atom"] == pytest.approx(0.01)
    assert meta["spacegroup_number"] == 225 and meta["formula"] == "MgO"
    assert report.n_read == 6 and report.n_kept == 2 and report.n_skipped == 4
    assert report.counts() == {MALFORMED: 1, OVERLAPPING: 1, DISORDERED: 1, MISSING_COLUMN: 1}
    reasons = {item["row"]: item for item in report.skipped}
    assert reasons["mp-bad"]["reason"] == MALFORMED and reasons["mp-bad"]["detail"]
    assert "0.200 A" in reasons["mp-overlap"]["detail"]
    summary = report.as_dict(max_examples=2)
    assert summary["n_skipped"] == 4 and len(summary["examples"]) == 2 and summary["examples_truncated"]


def test_filters(mp20_csv):
    assert read_mp20_csv(mp20_csv, elements=["Li"])[0].row_ids == ["mp-22905"]
    batch, report = read_mp20_csv(mp20_csv, exclude_elements=["Li"])
    assert batch.row_ids == ["mp-1265"] and report.n_filtered == 1
    assert read_mp20_csv(mp20_csv, max_sites=7)[0].row_ids == []  # conventional rock salt has 8 sites
    assert read_mp20_csv(mp20_csv, max_rows=1)[0].row_ids == ["mp-22905"]
    with pytest.raises(ValueError, match="not an element"):
        read_mp20_csv(mp20_csv, elements=["Xx"])


def test_duplicate_material_id_skipped(tmp_path, licl):
    path = tmp_path / "dups.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["material_id", "cif", "energy_above_hull", "band_gap"])
        writer.writerow(["mp-1", licl.to(fmt="cif"), "0.0", "1.0"])
        writer.writerow(["mp-1", licl.to(fmt="cif"), "0.0", "1.0"])
    batch, report = read_structures(path)
    assert batch.row_ids == ["mp-1"] and report.counts() == {DUPLICATE_ID: 1}
    assert "formation_energy_per_atom_eV" not in batch.meta[0]  # MP-40 style: no Ef column, no key


def test_csv_without_cif_column(tmp_path):
    path = tmp_path / "nocif.csv"
    path.write_text("material_id,band_gap\nmp-1,1.0\n")
    with pytest.raises(SourceFormatError, match="no 'cif' column"):
        read_structures(path)
    with pytest.raises(SourceFormatError, match="no 'cif' column"):
        describe_source_file(path)


def test_perov5_rows_get_file_prefixed_ids(tmp_path, licl):
    path = tmp_path / "perov.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", "material_id", "cif", "formula", "heat_all", "heat_ref", "dir_gap", "ind_gap"])
        writer.writerow(["0", "3961", licl.to(fmt="cif"), "LiCl", "1.2", "-0.4", "2.0", "1.5"])
    meta, _ = next(iter(read_mp20_csv(path)[0]))
    assert meta["row_id"] == "perov-3961"
    assert meta["formation_energy_per_atom_eV"] == pytest.approx(-0.4)
    assert meta["band_gap_eV"] == pytest.approx(1.5)  # the smaller of direct and indirect


def test_extxyz_energies_and_ids(tmp_path, licl, mgo):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = []
    for structure, energy in ((licl, -26.0), (mgo, -48.0)):
        atoms = AseAtomsAdaptor.get_atoms(structure)
        forces = [[0.0, 0.0, 0.0]] * len(atoms)
        forces[0] = [0.3, 0.4, 0.0]
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    path = tmp_path / "frames.extxyz"
    write(path, frames, format="extxyz")
    batch, report = read_structures(path)
    assert batch.row_ids == ["frames-0", "frames-1"]
    assert batch.meta[1]["energy_eV"] == pytest.approx(-48.0)
    assert batch.meta[1]["energy_per_atom_eV"] == pytest.approx(-6.0)
    assert batch.meta[0]["max_force_eV_per_A"] == pytest.approx(0.5)
    assert describe_source_file(path)["n_records"] == 2
    assert read_extxyz(path, elements=["Mg"])[0].row_ids == ["frames-1"]


def test_entries_json_mson_and_plain(tmp_path, licl, mgo):
    entries = [
        ComputedStructureEntry(licl, energy=-28.0, correction=-1.0, entry_id="mp-22905"),
        ComputedStructureEntry(mgo, energy=-48.0, entry_id="mp-1265"),
        ComputedEntry("Li", -1.9, entry_id="mp-135"),
    ]
    mson = tmp_path / "entries.json"
    mson.write_text(json.dumps([e.as_dict() for e in entries]))
    batch, report = read_entries_json(mson)
    assert batch.row_ids == ["mp-22905", "mp-1265"]
    meta = batch.meta[0]
    assert meta["energy_eV"] == pytest.approx(-29.0) and meta["energy_per_atom_eV"] == pytest.approx(-29.0 / 8)
    assert meta["uncorrected_energy_per_atom_eV"] == pytest.approx(-3.5)
    assert report.counts() == {NO_STRUCTURE: 1}
    plain = tmp_path / "plain.json"  # no @class tags (like MgVO_batt.json)
    dicts = [{k: v for k, v in e.as_dict().items() if not k.startswith("@")} for e in entries[:2]]
    plain.write_text(json.dumps(dicts))
    assert len(read_structures(plain)[0]) == 2


def test_unknown_suffix_and_missing_file(tmp_path):
    path = tmp_path / "structures.parquet"
    path.write_text("x")
    with pytest.raises(SourceFormatError, match=r"unknown source suffix '.parquet'.*\.csv"):
        read_structures(path)
    with pytest.raises(SourceFormatError, match="does not exist"):
        read_structures(tmp_path / "nope.csv")


@pytest.mark.slow  # ~7 s standalone (2.8 ms per CIF), ~15 s under pytest
@pytest.mark.shared_data
def test_real_mp20_mini(shared_data):
    """All 2,573 CIFs of the MP-20 mini slice parse; 238 contain Li (SOURCES.md)."""
    path = shared_data / "mp20_mini_slices" / "raw_mp20_dataset_mini.csv"
    started = time.perf_counter()
    batch, report = read_mp20_csv(path)
    elapsed = time.perf_counter() - started
    assert len(batch) == 2573 and report.n_skipped == 0
    assert sum("Li" in {el.symbol for el in s.composition.elements} for s in batch.structures) == 238
    assert max(len(s) for s in batch.structures) <= 20
    meta, _ = batch.get("mp-1221227")
    assert meta["formation_energy_per_atom_eV"] == pytest.approx(-1.637460082715517)
    assert meta["e_above_hull_eV_per_atom"] == pytest.approx(0.0430011104166663)
    print(f"parsed {len(batch)} MP-20 CIFs in {elapsed:.1f} s")


@pytest.mark.shared_data
def test_real_chemeleon_and_entries(shared_data):
    batch, report = read_mp20_csv(shared_data / "mp40_chemeleon" / "mineral_test.csv", max_rows=40)
    assert len(batch) == 40 and "formation_energy_per_atom_eV" not in batch.meta[0]
    assert all(m["e_above_hull_eV_per_atom"] is not None for m in batch.meta)
    batch, report = read_structures(shared_data / "pymatgen_battery_2014" / "MgVO_batt.json")
    assert sorted(m["formula"] if "formula" in m else s.composition.reduced_formula for m, s in batch) == [
        "MgV2O4", "VO2"]
    batch, report = read_structures(shared_data / "emmet_test_files" / "Li-Fe-O.json.gz", elements=["Li", "Fe"])
    assert report.n_read == 375 and len(batch) + report.n_filtered == 375 and len(batch) > 0
