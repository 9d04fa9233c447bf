"""Inputs as users have them: the seed's published CSV (``Name,CIF``), any-case column names, a chosen id
column, a folder of CIF/POSCAR files, an ASE database — read by the sources and by every command's
``input`` (not only the internal batch format)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter
from pymatgen.io.vasp import Poscar

from battgen.batch import BatchFormatError, StructureBatch
from battgen.cli import EXIT_OK, SUMMARY_FILENAME, run_command
from battgen.sources.files import (
    SourceFormatError,
    describe_source_file,
    read_input_batch,
    read_structures,
)

LICL = Structure(Lattice.cubic(5.14), ["Li"] * 4 + ["Cl"] * 4,
                 [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                  [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]])
NACL = LICL.copy()
NACL.replace_species({"Li": "Na"})
NACL.scale_lattice(NACL.volume * 1.35)


def _csv(path, header, rows):
    lines = [header] + [",".join(f'"{v}"' for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_seeds_published_csv_reads(tmp_path):
    """seed 000's `filtered_structures_unconditional.csv`: columns `Name`, `CIF` (as published)."""
    path = _csv(tmp_path / "filtered_structures_unconditional.csv", "Name,CIF",
                [("LiCl_gen_0001", CifWriter(LICL)), ("NaCl_gen_0002", CifWriter(NACL))])
    batch, report = read_structures(path)
    assert batch.row_ids == ["LiCl_gen_0001", "NaCl_gen_0002"]
    assert [s.composition.reduced_formula for s in batch.structures] == ["LiCl", "NaCl"]
    assert report.n_skipped == 0
    assert describe_source_file(path)["n_records"] == 2


def test_csv_columns_are_case_insensitive_and_the_id_column_is_configurable(tmp_path):
    path = _csv(tmp_path / "mine.csv", "Material_ID,Formula_Tag,Cif,Band_Gap",
                [("mp-1", "a", CifWriter(LICL), "6.1"), ("mp-2", "b", CifWriter(NACL), "5.0")])
    batch, _ = read_structures(path)
    assert batch.row_ids == ["mp-1", "mp-2"] and batch.meta[0]["band_gap_eV"] == pytest.approx(6.1)
    tagged, _ = read_structures(path, id_column="formula_tag")
    assert tagged.row_ids == ["a", "b"]
    with pytest.raises(SourceFormatError, match="no id column 'nope'"):
        read_structures(path, id_column="nope")
    no_cif = _csv(tmp_path / "nocif.csv", "Name,Structure", [("x", "y")])
    with pytest.raises(SourceFormatError, match="no 'cif' column"):
        read_structures(no_cif)


def test_a_folder_of_cif_and_poscar_files(tmp_path):
    folder = tmp_path / "structures"
    folder.mkdir()
    CifWriter(LICL).write_file(folder / "licl.cif")
    Poscar(NACL).write_file(folder / "POSCAR_nacl")
    Poscar(LICL).write_file(folder / "second.vasp")
    (folder / "notes.txt").write_text("not a structure")
    batch, report = read_structures(folder)
    assert batch.row_ids == ["POSCAR_nacl", "licl", "second"]
    assert [s.composition.reduced_formula for s in batch.structures] == ["NaCl", "LiCl", "LiCl"]
    assert report.n_read == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceFormatError, match="folder without CIF or POSCAR"):
        read_structures(empty)


def test_an_ase_database(tmp_path):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.db import connect
    from pymatgen.io.ase import AseAtomsAdaptor

    path = tmp_path / "hosts.db"
    with connect(str(path)) as db:
        atoms = AseAtomsAdaptor.get_atoms(LICL)
        atoms.calc = SinglePointCalculator(atoms, energy=-28.0)
        db.write(atoms, material_id="mp-22905")
        db.write(AseAtomsAdaptor.get_atoms(NACL))
    batch, _ = read_structures(path)
    assert batch.row_ids == ["mp-22905", "hosts-2"]
    assert batch.meta[0]["energy_per_atom_eV"] == pytest.approx(-3.5)
    assert describe_source_file(path) == {"source_kind": "file", "database_version": None, "query": {},
                                          "format": "ase_db", "n_records": 2}


def test_read_input_batch_takes_batches_and_sources_and_names_what_it_accepts(tmp_path):
    batch_file = StructureBatch([LICL], [{"row_id": "licl"}]).write(tmp_path / "in.jsonl.gz")
    assert read_input_batch(batch_file).row_ids == ["licl"]
    csv_file = _csv(tmp_path / "mp.csv", "material_id,cif", [("mp-22905", CifWriter(LICL))])
    assert read_input_batch(csv_file).row_ids == ["mp-22905"]
    foreign = tmp_path / "notes.txt"
    foreign.write_text("hello")
    with pytest.raises(BatchFormatError, match="neither a battgen batch file nor a structure source"):
        read_input_batch(foreign)
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(batch_file.read_bytes()[:-20])
    with pytest.raises(BatchFormatError):  # a broken batch stays a batch error, never read as a source
        read_input_batch(truncated)


def test_battgen_screen_reads_a_cdvae_csv_through_the_real_cli(tmp_path):
    _csv(tmp_path / "mp_20.csv", "material_id,cif,formation_energy_per_atom",
         [("mp-22905", CifWriter(LICL), "-1.9"), ("mp-22862", CifWriter(NACL), "-2.1")])
    (tmp_path / "screen.yaml").write_text(yaml.safe_dump({"input": "mp_20.csv", "steps": ["validity"]}))
    battgen = Path(sys.executable).parent / "battgen"
    result = subprocess.run([str(battgen), "screen", "--config", "screen.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    summary = yaml.safe_load((tmp_path / SUMMARY_FILENAME).read_text())
    assert summary["outputs"]["funnel"][-1]["n_out"] == 2


@pytest.mark.parametrize("command", ["screen", "generate"])
def test_commands_take_a_folder_input(tmp_path, command):
    folder = tmp_path / "hosts"
    folder.mkdir()
    CifWriter(LICL).write_file(folder / "licl.cif")
    config = {"input": "hosts", "steps": ["validity"]} if command == "screen" else \
        {"input": "hosts", "generator": "substitution", "n": 2, "seed": 1}
    code, summary = run_command(command, config, tmp_path)
    assert code == EXIT_OK, summary
