"""battgen.mlip: loaders (hash, elements, name resolution) and batched relaxation, without AiiDA.

Statuses are checked on an ASE EMT calculator (cheap, deterministic) and on CHGNet for the values."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from ase.calculators.emt import EMT
from pymatgen.core import Lattice, Structure

from battgen.batch import StructureBatch
from battgen.cli import EXIT_INVALID_INPUT, EXIT_OK, run_command
from battgen.mlip.calculators import _pretrained_chgnet_file, load_chgnet, load_mlip, sha256_of_file
from battgen.mlip.relax import RELAX_COLUMNS, relax_batch, relax_structure, status_counts

EMT_ELEMENTS = {"Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O"}


def si2() -> Structure:
    return Structure(Lattice.from_parameters(3.84, 3.84, 3.84, 60, 60, 60), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def licl() -> Structure:
    return Structure(Lattice.from_parameters(3.63, 3.63, 3.63, 60, 60, 60), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="session")
def chgnet():
    return load_chgnet()


def test_load_chgnet_records_hash_version_elements(chgnet):
    import chgnet as chgnet_package

    calculator, info = chgnet
    assert info.name == "chgnet" and info.model_name == "CHGNet-0.3.0"
    assert info.package_version == chgnet_package.__version__
    assert info.weights_sha256 == sha256_of_file(_pretrained_chgnet_file("0.3.0"))
    assert len(info.weights_sha256) == 64
    assert len(info.supported_elements) == 94 and "Pu" in info.supported_elements and "Am" not in info.supported_elements
    assert load_chgnet()[0] is calculator  # cached per process


def test_load_mlip_resolves_names_and_lists_known_ones(chgnet):
    assert load_mlip("chgnet")[0] is chgnet[0]
    assert load_mlip("battgen.chgnet")[0] is chgnet[0]
    with pytest.raises(KeyError, match="unknown MLIP 'mace'; available: chgnet, m3gnet, nequip, sevennet"):
        load_mlip("mace")


def test_load_m3gnet_from_local_directory(tmp_path):
    """No pretrained matgl model loads offline: save an untrained one and load it back by directory."""
    from matgl.apps.pes import Potential
    from matgl.models import M3GNet

    from battgen.mlip.calculators import load_m3gnet

    Potential(model=M3GNet(element_types=("Li", "Cl"), is_intensive=False)).save(tmp_path)
    calculator, info = load_m3gnet(str(tmp_path))
    assert info.supported_elements == {"Li", "Cl"}
    assert info.weights_sha256 == sha256_of_file(tmp_path / "model.pt")
    atoms = licl().to_ase_atoms()
    atoms.calc = calculator
    assert np.isfinite(atoms.get_potential_energy())


def test_relax_statuses_with_emt():
    cu = Structure(Lattice.cubic(3.7), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    calc = EMT()
    relaxed, record = relax_structure(cu, calc, supported_elements=EMT_ELEMENTS, fmax=0.01, max_steps=300)
    assert record["relax_status"] == "converged" and record["converged"]
    # EMT's fcc Cu minimum: a ≈ 3.59 Å
    assert relaxed.volume ** (1 / 3) == pytest.approx(3.59, abs=0.02)
    assert record["max_force_eV_per_A"] < 0.01 and record["volume_change"] < 1

    _, record = relax_structure(cu, calc, supported_elements=EMT_ELEMENTS, fmax=1e-6, max_steps=2)
    assert record["relax_status"] == "not_converged" and record["n_steps"] == 2

    original, record = relax_structure(licl(), calc, supported_elements=EMT_ELEMENTS)
    assert record["relax_status"] == "unsupported_element" and record["energy_eV"] is None
    assert "Cl, Li" in record["relax_message"] and record["unsupported_elements"] == ["Cl", "Li"]
    assert original == licl()


def test_blow_up_keeps_starting_structure(chgnet):
    calculator, info = chgnet
    # two Si in a cubic 5.43 Å cell (a quarter of diamond's density) collapse below V/3 under CHGNet
    sparse = Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    kept, record = relax_structure(sparse, calculator, supported_elements=info.supported_elements)
    assert record["relax_status"] == "exploded" and "volume changed" in record["relax_message"]
    assert kept == sparse and record["energy_eV"] is None


def test_relax_batch_chgnet_values_and_row_ids(chgnet):
    calculator, info = chgnet
    oganesson = Structure(Lattice.cubic(4.0), ["Og"], [[0, 0, 0]])
    batch = StructureBatch.from_structures([si2(), licl(), oganesson], [{"row_id": "si"}, {"row_id": "licl", "tag": 1}, {"row_id": "og"}])
    relaxed, records = relax_batch(batch, progress=False)
    assert relaxed.row_ids == ["si", "licl", "og"] and [r["row_id"] for r in records] == relaxed.row_ids
    assert relaxed.get("licl")[0]["tag"] == 1
    assert set(RELAX_COLUMNS) <= set(relaxed.meta[0])
    assert status_counts(records) == {"converged": 2, "not_converged": 0, "exploded": 0, "unsupported_element": 1}
    # energies are CHGNet's own prediction on the relaxed structure
    for row_id in ("si", "licl"):
        meta, structure = relaxed.get(row_id)
        direct = float(calculator.model.predict_structure(structure)["e"])
        assert meta["energy_per_atom_eV"] == pytest.approx(direct, abs=2e-4)
    assert relaxed.get("si")[0]["energy_per_atom_eV"] == pytest.approx(-5.31, abs=0.03)


def test_relax_command_writes_files_and_rejects_bad_config(tmp_path):
    StructureBatch.from_structures([licl()], [{"row_id": "licl"}]).write(tmp_path / "structures.jsonl.gz")
    code, summary = run_command("relax", {"fmax": 0.05, "max_steps": 50, "progress": False}, tmp_path)
    assert code == EXIT_OK, summary.get("error")
    outputs = summary["outputs"]
    assert outputs["counts"]["converged"] == 1 and outputs["model"]["weights_sha256"]
    assert outputs["units"]["fmax"] == "eV/Å"
    assert StructureBatch.read(tmp_path / "relaxed.jsonl.gz").row_ids == ["licl"]
    records = json.loads((tmp_path / "relax_records.json").read_text())["records"]
    assert records[0]["relax_status"] == "converged"
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries

    for bad, fragment in [({"fmax": 0.05, "tempreature": 1}, "unknown relax setting"), ({"mlip": "mace"}, "unknown MLIP"),
                          ({"max_steps": 0}, "max_steps"), ({"input": "absent.jsonl.gz"}, "does not exist")]:
        code, summary = run_command("relax", bad, tmp_path)
        assert code == EXIT_INVALID_INPUT and fragment in summary["error"], summary


@pytest.mark.slow
def test_sevennet_l3i5_is_selectable_by_name_and_recorded(tmp_path):
    """``mlip: sevennet_l3i5`` loads the l3i5 weights shipped in the sevenn wheel (not SevenNet-0's)."""
    pytest.importorskip("sevenn")
    from sevenn.util import pretrained_name_to_path

    StructureBatch.from_structures([si2()], [{"row_id": "si"}]).write(tmp_path / "structures.jsonl.gz")
    code, summary = run_command("relax", {"mlip": "sevennet_l3i5", "max_steps": 5, "progress": False}, tmp_path)
    assert code == EXIT_OK, summary.get("error")
    model = summary["outputs"]["model"]
    assert model["model_name"] == "7net-l3i5"
    assert model["weights_sha256"] == sha256_of_file(pretrained_name_to_path("7net-l3i5"))
    assert model["weights_sha256"] != sha256_of_file(pretrained_name_to_path("7net-0"))
    energy = StructureBatch.read(tmp_path / "relaxed.jsonl.gz").get("si")[0]["energy_per_atom_eV"]
    assert energy == pytest.approx(-5.4, abs=0.2)  # PBE Si about -5.42 eV/atom (MP)


def test_truncated_input_is_invalid_input(tmp_path):
    StructureBatch.from_structures([licl(), si2()]).write(tmp_path / "full.jsonl.gz")
    text = gzip.decompress((tmp_path / "full.jsonl.gz").read_bytes())
    (tmp_path / "structures.jsonl.gz").write_bytes(gzip.compress(text[: len(text) // 2]))
    code, summary = run_command("relax", {"progress": False}, tmp_path)
    assert code == EXIT_INVALID_INPUT and "cannot read the input batch" in summary["error"]


def test_fixed_cell_rows_keep_their_box():
    """A molecule in a vacuum box (fixed_cell, as elemental O2 references are) keeps its cell."""
    from battgen.mlip.relax import relax_batch

    box = Structure(Lattice.cubic(8.0), ["Cu", "Cu"], [[0, 0, 0], [0.3, 0, 0]])
    batch = StructureBatch.from_structures([box, box.copy()], [{"row_id": "fixed", "fixed_cell": True},
                                                                {"row_id": "free"}])
    relaxed, _ = relax_batch(batch, calculator=EMT(), supported_elements=EMT_ELEMENTS, fmax=0.05,
                             max_steps=200, progress=False)
    assert relaxed.structures[0].volume == pytest.approx(512.0, rel=1e-9)
    assert relaxed.structures[1].volume != pytest.approx(512.0, rel=1e-3)


def test_volume_guard_is_a_setting(chgnet):
    """Where a large volume change is physical (delithiation), a larger factor lets the relaxation finish."""
    calculator, info = chgnet
    sparse = Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    _, record = relax_structure(sparse, calculator, supported_elements=info.supported_elements,
                                max_volume_factor=10.0, fmax=0.1, max_steps=300)
    assert record["relax_status"] in ("converged", "not_converged"), record["relax_message"]
    assert record["volume_change"] < 1 / 3  # the collapse the default x3 guard calls a blow-up


def test_checkpoint_lets_a_killed_job_continue(tmp_path):
    """Rows finished before a kill are taken from the checkpoint (even after a torn last line); new rows relax."""
    from battgen.mlip.relax import CHECKPOINT_FILENAME, read_relax_checkpoint

    rows = [{"row_id": "licl"}, {"row_id": "si2"}]
    first = tmp_path / "first"
    first.mkdir()
    StructureBatch.from_structures([licl()], rows[:1]).write(first / "structures.jsonl.gz")
    code, summary = run_command("relax", {"max_steps": 50, "progress": False}, first)
    assert code == EXIT_OK and summary["outputs"]["rows_from_checkpoint"] == 0
    # Simulate a kill while the next row was being written: a torn line after the finished one.
    with open(first / CHECKPOINT_FILENAME, "a", encoding="utf-8") as handle:
        handle.write('{"row": {"row_id": "si2"}, "rec')
    finished = read_relax_checkpoint(first / CHECKPOINT_FILENAME)
    assert list(finished) == ["licl"]

    second = tmp_path / "second"
    second.mkdir()
    (second / "parent").symlink_to(first)  # what the CalcJob's parent_folder link looks like
    StructureBatch.from_structures([licl(), si2()], rows).write(second / "structures.jsonl.gz")
    config = {"max_steps": 50, "progress": False, "resume_from": f"parent/{CHECKPOINT_FILENAME}"}
    code, summary = run_command("relax", config, second)
    assert code == EXIT_OK, summary.get("error")
    assert summary["outputs"]["rows_from_checkpoint"] == 1
    records = {r["row_id"]: r for r in json.loads((second / "relax_records.json").read_text())["records"]}
    assert records["licl"]["wall_time_s"] == finished["licl"][2]["wall_time_s"]  # taken, not recomputed
    assert records["si2"]["relax_status"] in ("converged", "not_converged")
    relaxed = StructureBatch.read(second / "relaxed.jsonl.gz")
    assert relaxed.row_ids == ["licl", "si2"]
    np.testing.assert_allclose(relaxed.structures[0].lattice.matrix, finished["licl"][0].lattice.matrix, atol=1e-6)
    assert set(read_relax_checkpoint(second / CHECKPOINT_FILENAME)) == {"licl", "si2"}

    # Another fmax changes results: that checkpoint is not continued.
    code, summary = run_command("relax", {**config, "fmax": 0.01}, second)
    assert code == EXIT_INVALID_INPUT and "other settings" in summary["error"]
