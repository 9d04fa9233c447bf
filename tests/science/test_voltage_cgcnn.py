"""Working-ion-pooled CGCNN (battgen.predictors.voltage_cgcnn): graph, readout, training, CLI round trip."""

import gzip
import json

import numpy as np
import pytest
import torch
import yaml
from pymatgen.core import Lattice, Structure

from battgen.batch import StructureBatch
from battgen.cli import main
from battgen.generate.dataset import split_batch
from battgen.predictors.voltage_cgcnn import (
    ATOM_FEATURE_LENGTH,
    VoltageCGCNN,
    VoltageCGCNNPredictor,
    WorkingIonMissingError,
    atom_features,
    collate_graphs,
    gaussian_centres_A,
    gaussian_edge_features,
    neighbour_edges,
    structure_graph,
)


def licoo2() -> Structure:
    return Structure.from_spacegroup(
        "R-3m", Lattice.hexagonal(2.816, 14.05), ["Li", "Co", "O"], [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.24]]
    ).get_primitive_structure()


def electrode_batch() -> StructureBatch:
    """Eight small real-looking electrodes (rock salts, layered oxide) with distinct voltages."""
    rows, structures = [], []
    for index, (ion, anion, a, voltage) in enumerate([
        ("Li", "F", 4.03, 4.5), ("Li", "Cl", 5.13, 3.8), ("Na", "Cl", 5.64, 3.0), ("K", "Cl", 6.29, 2.5),
        ("Mg", "O", 4.21, 1.5), ("Ca", "O", 4.81, 1.0), ("Li", "Br", 5.50, 3.3), ("Na", "F", 4.63, 3.6),
    ]):
        structures.append(Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [ion, anion], [[0, 0, 0], [0.5, 0.5, 0.5]]))
        rows.append({"row_id": f"e{index}", "working_ion": ion, "average_voltage_V": voltage})
    structures.append(licoo2())
    rows.append({"row_id": "licoo2", "working_ion": "Li", "average_voltage_V": 3.9})
    return StructureBatch.from_structures(structures, rows)


def tiny_hyperparameters(**changes):
    hp = {**VoltageCGCNNPredictor.default_hyperparameters(), "atom_fea_len": 16, "h_fea_len": 16, "radius_A": 5.0,
          "batch_size": 4, "epochs": 3, "progress": False}
    hp.update(changes)
    return hp


def test_gaussian_edge_features_41_centres_every_0_2_A():
    centres = gaussian_centres_A()
    assert len(centres) == 41 and centres[0] == 0.0 and centres[-1] == pytest.approx(8.0)
    assert np.allclose(np.diff(centres), 0.2)
    features = gaussian_edge_features(np.array([2.0, 2.2]))
    assert features.shape == (2, 41)
    assert features[0, 10] == pytest.approx(1.0)  # d = μ_10 = 2.0 Å
    assert features[0, 11] == pytest.approx(np.exp(-1.0))  # one width (0.2 Å) away
    assert features[1, 10] == pytest.approx(np.exp(-1.0)) and features[1, 11] == pytest.approx(1.0)


def test_atom_features_are_cgcnn_one_hot_categories():
    li, o = np.array(atom_features("Li")), np.array(atom_features("O"))
    assert len(li) == ATOM_FEATURE_LENGTH == 91
    assert set(np.unique(li)) <= {0.0, 1.0} and li.sum() == 9  # one bin in each of nine categories
    assert li[0] == 1.0 and o[15] == 1.0  # group 1 and group 16
    assert not np.array_equal(li, np.array(atom_features("Na")))


def test_neighbour_list_keeps_twelve_nearest_within_radius():
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.0), ["Li", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    edges, distances = neighbour_edges(rocksalt, radius_A=8.0, max_neighbours=12)
    counts = np.bincount(edges[0])
    assert np.all(counts == 12)
    # Rock salt: 6 unlike neighbours at a/2, then 12 like ones at a/√2, so the 12 nearest are 6 + 6 of them.
    first = np.sort(distances[edges[0] == 0])
    assert np.allclose(first[:6], 2.0) and np.allclose(first[6:], 4.0 / np.sqrt(2))


def _predict(network, structures, ions):
    network.eval()
    with torch.no_grad():
        return network(collate_graphs([structure_graph(s, ion) for s, ion in zip(structures, ions)]))


def test_readout_pools_only_working_ion_atoms():
    torch.manual_seed(0)
    structure = licoo2()
    network = VoltageCGCNN(atom_fea_len=16, h_fea_len=16)
    base = _predict(network, [structure], ["Li"])
    # Reordering the non-ion atoms changes nothing.
    ion_sites = [i for i, site in enumerate(structure) if site.specie.symbol == "Li"]
    others = [i for i in range(len(structure)) if i not in ion_sites]
    permuted = Structure.from_sites([structure[i] for i in ion_sites + others[::-1]])
    assert torch.allclose(base, _predict(network, [permuted], ["Li"]), atol=1e-5)
    # Moving a non-ion atom changes the output only through the convolutions: with 0 layers it is invariant.
    moved = structure.copy()
    cobalt = next(i for i in others if structure[i].specie.symbol == "Co")
    oxygen = next(i for i in others if structure[i].specie.symbol == "O")
    moved.replace(cobalt, "Ni")
    moved.translate_sites([oxygen], [0.0, 0.0, 0.02])
    no_conv = VoltageCGCNN(atom_fea_len=16, h_fea_len=16, n_conv=0)
    assert torch.allclose(_predict(no_conv, [structure], ["Li"]), _predict(no_conv, [moved], ["Li"]))
    assert not torch.allclose(base, _predict(network, [moved], ["Li"]), atol=1e-4)
    # Pooling a different ion species of the same structure gives a different voltage.
    assert not torch.allclose(base, _predict(network, [structure], ["Co"]), atol=1e-4)


def test_structure_without_its_working_ion_raises_naming_the_row():
    coo2 = licoo2()
    coo2.remove_species(["Li"])
    with pytest.raises(WorkingIonMissingError, match="row 'charged-1'.*no Li"):
        structure_graph(coo2, "Li", row_id="charged-1")


def test_tiny_model_trains_and_round_trips(tmp_path):
    batch = electrode_batch()
    splits = split_batch(batch, (0.8, 0.1, 0.1), seed=0)
    hp = tiny_hyperparameters(epochs=40, learning_rate=0.01)
    result = VoltageCGCNNPredictor.fit(splits, ["average_voltage_V"], tmp_path, hp, seed=0)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    history = checkpoint["state"]["history"]
    assert history[-1]["train_mae_V"] < 0.5 * history[0]["train_mae_V"]  # the L1 loss falls
    assert result["metrics"]["n_test"] == len(splits.test)
    assert any(key.startswith("test_mae_average_voltage_V_") for key in result["metrics"])

    from battgen.models import write_manifest

    write_manifest(tmp_path, "predictor", "voltage-cgcnn", hp, {"targets": ["average_voltage_V"]}, result["metrics"])
    first = VoltageCGCNNPredictor(tmp_path).predict(batch)["average_voltage_V"]
    second = VoltageCGCNNPredictor(tmp_path).predict(batch)["average_voltage_V"]
    assert first.shape == (len(batch),) and np.array_equal(first, second)
    # Standardised targets are undone: predictions are volts in the range of the training labels.
    assert 0.0 < float(np.mean(first)) < 5.0


def test_resume_continues_from_checkpoint(tmp_path):
    splits = split_batch(electrode_batch(), (0.8, 0.1, 0.1), seed=0)
    VoltageCGCNNPredictor.fit(splits, ["average_voltage_V"], tmp_path / "a", tiny_hyperparameters(epochs=2), seed=0)
    result = VoltageCGCNNPredictor.fit(splits, ["average_voltage_V"], tmp_path / "b", tiny_hyperparameters(epochs=4),
                                       seed=0, resume_from=tmp_path / "a")
    assert result["training"]["resumed_from_epoch"] == 2 and result["training"]["epochs_run"] == 4


def test_cli_train_stratified_by_ion_then_predict(tmp_path):
    batch = StructureBatch.concatenate([
        electrode_batch().with_columns(row_id=[f"{r}-{copy}" for r in electrode_batch().row_ids]) for copy in range(2)
    ])
    batch.write(tmp_path / "electrodes.jsonl.gz")
    hp = {k: v for k, v in tiny_hyperparameters().items()}
    config = {
        "predictor": "voltage-cgcnn", "train": "electrodes.jsonl.gz", "targets": ["average_voltage_V"],
        "output": "model", "split": {"fractions": [0.5, 0.25, 0.25], "stratify_by": "working_ion"},
        "hyperparameters": hp, "seed": 1,
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    assert main(["train-predictor", "--config", str(tmp_path / "train.yaml"), "--workdir", str(tmp_path)]) == 0
    manifest = yaml.safe_load((tmp_path / "model" / "battgen-model.yaml").read_text())
    assert manifest["training"]["stratify_by"] == "working_ion"
    for ion in ("Li", "Na"):  # ions with at least 4 rows land in the test set
        assert f"test_mae_average_voltage_V_{ion}" in manifest["metrics"]
    assert "baseline_mae_average_voltage_V" in manifest["metrics"]

    candidates = batch.select(lambda m, s: True).with_columns(working_ion=[None] * len(batch))
    candidates = candidates.select([m["row_id"].startswith(("e4", "e5")) for m in candidates.meta])  # Mg, Ca oxides
    candidates.write(tmp_path / "mg.jsonl.gz")
    predict = {"predictor": "voltage-cgcnn", "model": "model", "input": "mg.jsonl.gz", "output": "out.jsonl.gz",
               "options": {"working_ion": "Mg"}}
    (tmp_path / "predict.yaml").write_text(yaml.safe_dump(predict))
    # The Ca oxide has no Mg: a clear error naming the row, not a silent NaN.
    code = main(["predict", "--config", str(tmp_path / "predict.yaml"), "--workdir", str(tmp_path)])
    assert code != 0
    candidates.select([m["row_id"].startswith("e4") for m in candidates.meta]).write(tmp_path / "mg.jsonl.gz")
    assert main(["predict", "--config", str(tmp_path / "predict.yaml"), "--workdir", str(tmp_path)]) == 0
    out = StructureBatch.read(tmp_path / "out.jsonl.gz")
    assert all(np.isfinite(v) for v in out.column("predicted_average_voltage_V"))
    assert out.column("predicted_by")[0].startswith("voltage-cgcnn:")
