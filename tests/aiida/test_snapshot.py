"""SourceSnapshotData and the batch_from_snapshot calcfunction."""

from __future__ import annotations

import csv

import pytest
from aiida import orm
from pymatgen.core import Lattice, Structure

from aiida_battgen.calculations.functions.batch_from_snapshot import batch_from_snapshot
from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.data.snapshot import SourceSnapshotData
from battgen.sources.materials_project import write_snapshot


@pytest.fixture
def structures():
    licl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.13), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    mgo = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return licl, mgo


@pytest.fixture
def csv_file(tmp_path, structures):
    licl, mgo = structures
    path = tmp_path / "user_structures.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["material_id", "cif", "formation_energy_per_atom", "band_gap", "e_above_hull"])
        writer.writerow(["mp-22905", licl.to(fmt="cif"), "-1.9", "6.3", "0.0"])
        writer.writerow(["mp-1265", mgo.to(fmt="cif"), "-3.0", "4.45", "0.0"])
        writer.writerow(["mp-bad", "data_x\n_cell_length_a 1\nloop_\n junk", "0", "0", "0"])
    return path


@pytest.fixture
def mp_snapshot_file(tmp_path, structures):
    records = [
        {"material_id": "mp-22905", "structure": structures[0].as_dict(), "band_gap_eV": 6.3,
         "e_above_hull_eV_per_atom": 0.0, "formation_energy_per_atom_eV": -1.9, "energy_per_atom_eV": -3.6,
         "uncorrected_energy_per_atom_eV": -3.4, "entry": None},
    ]
    return write_snapshot(records, tmp_path / "mp.jsonl", {"elements": ["Li"], "api_key": "SECRET"}, "2025.09.25")


def test_file_snapshot_attributes(aiida_profile_clean, csv_file):
    node = SourceSnapshotData.from_file(csv_file).store()
    assert node.source_kind == "file" and node.base.attributes.get("format") == "csv"
    assert node.n_records == 3 and node.base.attributes.get("original_filename") == "user_structures.csv"
    import hashlib

    assert node.sha256 == hashlib.sha256(csv_file.read_bytes()).hexdigest()
    assert node.database_version is None and node.query == {}
    with pytest.raises(Exception):  # stored nodes are immutable
        node.set_file(csv_file)


def test_mp_snapshot_attributes_never_hold_key(aiida_profile_clean, mp_snapshot_file):
    node = SourceSnapshotData.from_file(mp_snapshot_file).store()
    assert node.source_kind == "materials_project" and node.database_version == "2025.09.25"
    assert node.query == {"elements": ["Li"]} and node.n_records == 1
    assert "SECRET" not in str(node.base.attributes.all) and "SECRET" not in node.get_content()
    result, calc = batch_from_snapshot.run_get_node(node)
    assert calc.is_finished_ok
    assert result["structures"].get_batch().row_ids == ["mp-22905"]


def test_invalid_files_rejected(tmp_path):
    bad_suffix = tmp_path / "x.parquet"
    bad_suffix.write_text("x")
    with pytest.raises(ValueError, match="unknown source suffix"):
        SourceSnapshotData.from_file(bad_suffix)
    fake_snapshot = tmp_path / "fake.jsonl"
    fake_snapshot.write_text('{"format": "something-else"}\n')
    with pytest.raises(ValueError, match="not a battgen.mp_snapshot"):
        SourceSnapshotData.from_file(fake_snapshot)


def test_batch_from_csv_with_skips_and_filters(aiida_profile_clean, csv_file):
    node = SourceSnapshotData.from_file(csv_file)
    result, calc = batch_from_snapshot.run_get_node(node)
    assert calc.is_finished_ok
    batch = result["structures"].get_batch()
    assert batch.row_ids == ["mp-22905", "mp-1265"]
    assert batch.meta[1]["band_gap_eV"] == pytest.approx(4.45)
    skipped = result["skipped"].get_dict()
    assert skipped["n_skipped"] == 1 and skipped["skipped_by_reason"] == {"malformed_structure": 1}
    assert skipped["examples"][0]["row"] == "mp-bad"
    result = batch_from_snapshot(node, orm.Dict({"exclude_elements": ["Li"], "max_sites": 8}))
    assert result["structures"].get_batch().row_ids == ["mp-1265"]
    assert result["skipped"]["n_filtered"] == 1


def test_empty_result_exit_310_nothing_stored(aiida_profile_clean, csv_file):
    node = SourceSnapshotData.from_file(csv_file).store()
    _, calc = batch_from_snapshot.run_get_node(node, orm.Dict({"elements": ["U"]}))
    assert calc.exit_status == 310 and "no usable structure" in calc.exit_message
    assert not calc.base.links.get_outgoing().all()
    assert orm.QueryBuilder().append(StructureBatchData).count() == 0


def test_unreadable_exit_311_and_bad_parameters_210(aiida_profile_clean, tmp_path, csv_file):
    snapshot = tmp_path / "mp.jsonl"
    snapshot.write_text('{"format": "battgen.mp_snapshot", "version": 1, "n_records": 0}\n')
    node = SourceSnapshotData.from_file(snapshot)
    # Valid header, but corrupt it inside the node's repository copy to simulate a damaged source.
    node.base.repository.put_object_from_bytes(b'{"format": "battgen.mp_snapshot", "n_records": 2}\nnot json\n',
                                              node.filename)
    _, calc = batch_from_snapshot.run_get_node(node)
    assert calc.exit_status == 311
    assert orm.QueryBuilder().append(StructureBatchData).count() == 0
    _, calc = batch_from_snapshot.run_get_node(SourceSnapshotData.from_file(csv_file), orm.Dict({"max_atoms": 3}))
    assert calc.exit_status == 210


def test_parameter_help_mentions_units():
    spec = batch_from_snapshot.spec()
    assert "atoms per cell" in spec.inputs["parameters"].help


def test_relative_path_is_resolved_and_recorded_absolute(aiida_profile_clean, csv_file, monkeypatch):
    monkeypatch.chdir(csv_file.parent)
    node = SourceSnapshotData.from_file(csv_file.name).store()
    assert node.base.attributes.get("original_path") == str(csv_file.resolve())
    assert node.base.attributes.get("original_filename") == csv_file.name and node.n_records == 3


def test_the_seeds_name_cif_csv_through_batch_from_snapshot(aiida_profile_clean, tmp_path, structures):
    """seed 000's published `Name,CIF` file; `id_column` picks another column for row ids."""
    path = tmp_path / "filtered_structures_unconditional.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Name", "CIF", "Tag"])
        for index, structure in enumerate(structures):
            writer.writerow([f"gen_{index:04d}_{structure.composition.reduced_formula}", structure.to(fmt="cif"),
                             f"t{index}"])
    snapshot = SourceSnapshotData.from_file(path)
    assert snapshot.n_records == 2
    result = batch_from_snapshot(snapshot=snapshot)
    assert result["structures"].get_batch().row_ids == ["gen_0000_LiCl", "gen_0001_MgO"]
    tagged = batch_from_snapshot(snapshot=snapshot, parameters=orm.Dict({"id_column": "TAG"}))
    assert tagged["structures"].get_batch().row_ids == ["t0", "t1"]
