"""Graph-network predictors: ALIGNN (DGL-free), matgl M3GNet and MEGNet; E_hull from predicted Ef.

Tiny networks, a few epochs on the built-in hosts with target columns set here; run with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from pymatgen.core import Lattice, Structure

from battgen.batch import StructureBatch
from battgen.generate.dataset import split_batch
from battgen.models import read_manifest
from battgen.predictors.base import load_predictor

EF = "formation_energy_per_atom_eV"
EG = "band_gap_eV"
TARGETS = [EF, EG]

TINY_HYPERPARAMETERS = {
    "alignn": {"alignn_layers": 1, "gcn_layers": 1, "hidden_features": 16, "embedding_features": 8,
               "edge_input_features": 16, "triplet_input_features": 8, "epochs": 3, "batch_size": 4},
    "m3gnet": {"nblocks": 1, "units": 16, "dim_node_embedding": 16, "dim_edge_embedding": 16,
               "epochs": 3, "batch_size": 4},
    "megnet": {"nblocks": 1, "dim_edge_embedding": 16, "epochs": 3, "batch_size": 4},
}
# an element each model cannot featurise: no CGCNN features beyond Z=100; not in matgl's DEFAULT_ELEMENTS
UNSUPPORTED_ELEMENT = {"alignn": "No", "m3gnet": "Po", "megnet": "Po"}


@pytest.fixture(scope="module")
def labelled_hosts() -> StructureBatch:
    """The 14 built-in hosts with made-up targets; one row lacks a band gap (masked, not dropped)."""
    from battgen.sources.builtin_hosts import builtin_hosts

    hosts = builtin_hosts()
    formation = [-0.5 - 0.2 * i for i in range(len(hosts))]
    gaps = [0.3 * i for i in range(len(hosts))]
    gaps[3] = None
    return hosts.with_columns(**{EF: formation, EG: gaps})


@pytest.fixture(scope="module", params=["alignn", "m3gnet", "megnet"])
def trained(request, labelled_hosts, tmp_path_factory):
    """(predictor class, model directory, fit result) of a tiny model trained on the hosts."""
    from battgen.predictors.base import predictor_class

    cls = predictor_class(request.param)
    model_dir = tmp_path_factory.mktemp(request.param) / "model"
    splits = split_batch(labelled_hosts, (0.6, 0.2, 0.2), seed=0)
    result = cls.fit(splits, TARGETS, model_dir, {**cls.default_hyperparameters(), **TINY_HYPERPARAMETERS[request.param]},
                     seed=0)
    return cls, model_dir, result, splits


def test_fit_writes_model_checkpoint_and_metrics(trained):
    cls, model_dir, result, splits = trained
    manifest = read_manifest(model_dir, architecture=cls.architecture)
    assert manifest["training"]["targets"] == TARGETS
    assert (model_dir / "checkpoints" / "last.pt").is_file()
    assert not any(name.startswith("checkpoints/") for name in manifest["files"])
    assert result["training"]["epochs_run"] == 3
    for target in TARGETS:
        for key in ("test_mae_", "test_rmse_", "baseline_mae_"):
            assert np.isfinite(result["metrics"][key + target])
    assert result["metrics"]["n_test"] == len(splits.test)


def test_predict_shapes_units_and_finite_values(trained, labelled_hosts):
    cls, model_dir, _, _ = trained
    predictor = load_predictor(cls.name, model_dir)
    values = predictor.predict(labelled_hosts)
    assert sorted(values) == sorted(TARGETS)
    for target in TARGETS:
        assert values[target].shape == (len(labelled_hosts),)
        assert np.isfinite(values[target]).all()
    annotated = predictor.annotate(labelled_hosts)
    assert {"predicted_formation_energy_per_atom_eV", "predicted_band_gap_eV", "predicted_by"} <= set(annotated.meta[0])
    assert annotated.column("predicted_by")[0].startswith(cls.architecture + ":")


def test_unfeaturisable_row_is_nan_and_reported_not_dropped(trained, labelled_hosts):
    cls, model_dir, _, _ = trained
    odd = Structure(Lattice.cubic(4.0), ["Li", UNSUPPORTED_ELEMENT[cls.name]], [[0, 0, 0], [0.5, 0.5, 0.5]])
    _, host = next(iter(labelled_hosts))
    batch = StructureBatch.from_structures([host, odd], [{"row_id": "host"}, {"row_id": "odd"}])
    predictor = cls(model_dir)
    values = predictor.predict(batch)
    assert values[EF].shape == (2,)
    assert np.isfinite(values[EF][0]) and np.isnan(values[EF][1])
    assert list(predictor.last_errors) == ["odd"]
    assert predictor.annotate(batch).column("predicted_formation_energy_per_atom_eV")[1] is None


def test_saved_model_reproduces_fit_metrics_and_copies_predict_identically(trained, labelled_hosts, tmp_path):
    """The saved (standardisation-folded) weights give the test MAE measured in memory during fit, and a
    copied model directory predicts bit-identically."""
    cls, model_dir, result, splits = trained
    predictor = cls(model_dir)
    test_values = predictor.predict(splits.test)[EF]
    true = np.array(splits.test.column(EF), dtype=float)
    assert np.mean(np.abs(test_values - true)) == pytest.approx(result["metrics"][f"test_mae_{EF}"], abs=1e-5)
    copy_dir = tmp_path / "copy"
    shutil.copytree(model_dir, copy_dir)
    original, copied = predictor.predict(labelled_hosts), cls(copy_dir).predict(labelled_hosts)
    for target in TARGETS:
        np.testing.assert_array_equal(original[target], copied[target])


def test_alignn_resume_after_interruption_matches_uninterrupted_run(labelled_hosts, tmp_path, monkeypatch):
    from battgen.predictors import _graph_training
    from battgen.predictors.alignn import ALIGNNPredictor

    splits = split_batch(labelled_hosts, (0.6, 0.2, 0.2), seed=0)
    hp = {**ALIGNNPredictor.default_hyperparameters(), **TINY_HYPERPARAMETERS["alignn"]}
    ALIGNNPredictor.fit(splits, [EF], tmp_path / "full", hp, seed=0)

    real_run_batches, calls = _graph_training.run_batches, []

    def interrupted_at_second_validation(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("stopped during epoch 2")
        return real_run_batches(*args, **kwargs)

    monkeypatch.setattr(_graph_training, "run_batches", interrupted_at_second_validation)
    with pytest.raises(KeyboardInterrupt):
        ALIGNNPredictor.fit(splits, [EF], tmp_path / "interrupted", hp, seed=0)
    monkeypatch.undo()

    result = ALIGNNPredictor.fit(splits, [EF], tmp_path / "resumed", hp, seed=0, resume_from=tmp_path / "interrupted")
    assert result["training"]["resumed_from_epoch"] == 1
    full = ALIGNNPredictor(tmp_path / "full").predict(labelled_hosts)[EF]
    resumed = ALIGNNPredictor(tmp_path / "resumed").predict(labelled_hosts)[EF]
    np.testing.assert_allclose(resumed, full, atol=1e-5)


def test_cli_train_predictor_and_predict_with_alignn(labelled_hosts, tmp_path):
    from battgen.cli import SUMMARY_FILENAME, main

    labelled_hosts.write(tmp_path / "train.jsonl.gz")
    train_config = {
        "predictor": "alignn", "train": "train.jsonl.gz", "targets": TARGETS, "output": "model",
        "split": {"fractions": [0.6, 0.2, 0.2], "seed": 0}, "hyperparameters": TINY_HYPERPARAMETERS["alignn"],
        "seed": 0,
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train_config))
    assert main(["train-predictor", "--config", str(tmp_path / "train.yaml"), "--workdir", str(tmp_path)]) == 0
    summary = yaml.safe_load((tmp_path / SUMMARY_FILENAME).read_text())
    assert summary["outputs"]["architecture"] == "alignn"
    assert f"test_mae_{EF}" in summary["outputs"]["metrics"]

    predict_config = {"predictor": "alignn", "model": "model", "input": "train.jsonl.gz", "output": "predicted.jsonl.gz"}
    (tmp_path / "predict.yaml").write_text(yaml.safe_dump(predict_config))
    assert main(["predict", "--config", str(tmp_path / "predict.yaml"), "--workdir", str(tmp_path)]) == 0
    predicted = StructureBatch.read(tmp_path / "predicted.jsonl.gz")
    assert len(predicted) == len(labelled_hosts)
    assert all(v is not None for v in predicted.column("predicted_band_gap_eV"))


def _trained_m3gnet(labelled_hosts, model_dir: Path):
    from battgen.predictors.matgl_models import M3GNetPredictor

    hp = {**M3GNetPredictor.default_hyperparameters(), **TINY_HYPERPARAMETERS["m3gnet"], "epochs": 1}
    M3GNetPredictor.fit(split_batch(labelled_hosts, (0.6, 0.2, 0.2), seed=0), [EF], model_dir, hp, seed=0)
    return M3GNetPredictor(model_dir)


def test_matgl_load_by_name_goes_through_the_hub_download(labelled_hosts, tmp_path, monkeypatch):
    """``from_pretrained(name)`` runs matgl's by-name path; the hub download is replaced at its network
    call (``huggingface_hub.hf_hub_download`` as imported by matgl.utils.io) by files our code trained."""
    import matgl.utils.io

    from battgen.predictors.matgl_models import M3GNetPredictor

    trained = _trained_m3gnet(labelled_hosts, tmp_path / "trained")
    requested = []

    def fake_hf_hub_download(repo_id, filename, **kwargs):
        requested.append((repo_id, filename))
        return str(tmp_path / "trained" / "matgl" / "0" / filename)

    monkeypatch.setattr(matgl.utils.io, "hf_hub_download", fake_hf_hub_download)
    loaded = M3GNetPredictor.from_pretrained("M3GNet-MP-2018.6.1-Eform", model_dir=tmp_path / "pretrained")
    assert {repo for repo, _ in requested} == {"materialyze/M3GNet-MP-2018.6.1-Eform"}
    assert sorted(name for _, name in requested) == ["model.json", "model.pt", "state.pt"]
    assert loaded.targets == [EF]
    assert read_manifest(tmp_path / "pretrained")["training"]["pretrained_source"] == "M3GNet-MP-2018.6.1-Eform"
    np.testing.assert_allclose(loaded.predict(labelled_hosts)[EF], trained.predict(labelled_hosts)[EF], atol=1e-6)


def test_matgl_load_by_name_offline_raises_a_clear_error(tmp_path, monkeypatch):
    import matgl.utils.io

    from battgen.predictors.matgl_models import MEGNetPredictor, PretrainedModelUnavailableError

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(matgl.utils.io, "hf_hub_download", offline)
    monkeypatch.setattr(matgl.utils.io, "get_available_pretrained_models", lambda: [])
    with pytest.raises(PretrainedModelUnavailableError, match="MEGNet-MP-2019.4.1-BandGap-mfi"):
        MEGNetPredictor.from_pretrained("MEGNet-MP-2019.4.1-BandGap-mfi", model_dir=tmp_path / "m")


def test_alignn_load_by_name_offline_raises_a_clear_error(tmp_path, monkeypatch):
    import requests
    from alignn import pretrained

    from battgen.predictors.alignn import ALIGNNPredictor, PretrainedModelUnavailableError

    def offline(*args, **kwargs):
        raise requests.ConnectionError("Network is unreachable")

    monkeypatch.setattr(pretrained, "_cache_dir", lambda: str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained.requests, "get", offline)
    with pytest.raises(PretrainedModelUnavailableError, match="figshare"):
        ALIGNNPredictor.from_pretrained("formation_energy_peratom_knn", model_dir=tmp_path / "m")
    with pytest.raises(KeyError, match="formation_energy_peratom_knn"):
        ALIGNNPredictor.from_pretrained("formation_energy_peratom_kn", model_dir=tmp_path / "m")


def test_alignn_local_directory_in_alignn_layout_converts_and_predicts(labelled_hosts, tmp_path):
    """A directory as alignn's downloads unpack (config.json + best_model.pt) loads, names its JARVIS target
    as such, and predicts what the network computes directly."""
    import torch

    from battgen.predictors.alignn import (
        ALIGNNPredictor, build_network, collate_graph_pairs, network_forward, structure_to_graph,
    )

    network_config = {"name": "alignn_atomwise_pure", "alignn_layers": 1, "gcn_layers": 1, "atom_input_features": 92,
                      "hidden_features": 16, "embedding_features": 8, "output_features": 1,
                      "calculate_gradient": False}
    torch.manual_seed(1)
    network = build_network(network_config)
    source = tmp_path / "alignn_layout"
    source.mkdir()
    torch.save(network.state_dict(), source / "best_model.pt")
    (source / "config.json").write_text(json.dumps(
        {"model": network_config, "target": "formation_energy_peratom", "cutoff": 8.0, "max_neighbors": 12}))
    predictor = ALIGNNPredictor.from_pretrained(source, model_dir=tmp_path / "converted")
    assert predictor.targets == ["formation_energy_per_atom_jarvis_eV"]
    structures = [s for _, s in labelled_hosts][:3]
    graphs = [structure_to_graph(s, {"cutoff": 8.0, "max_neighbors": 12}) for s in structures]
    with torch.no_grad():
        direct = network_forward(network.eval(), collate_graph_pairs(graphs), 3).numpy()[:, 0]
    batch = labelled_hosts.select([i < 3 for i in range(len(labelled_hosts))])
    np.testing.assert_allclose(predictor.predict(batch)["formation_energy_per_atom_jarvis_eV"], direct, atol=1e-5)


def test_ehull_from_predicted_formation_energy_on_a_known_hull():
    """Li-O hull: Li (-1.9 eV/atom), O (-4.9 eV/atom), Li2O with Ef = -2.0 eV/atom. At Li2O2 (x_O = 1/2) the
    hull lies at 3/4 of Li2O's formation energy: -1.5 eV/atom."""
    from pymatgen.entries.computed_entries import ComputedEntry

    from battgen.stability.predicted import ehull_from_predicted_formation_energy
    from battgen.stability.hull import ReferenceHull

    li, o = -1.9, -4.9
    entries = [ComputedEntry("Li", li, entry_id="Li"), ComputedEntry("O2", 2 * o, entry_id="O2"),
               ComputedEntry("Li2O", 2 * li + o + 3 * -2.0, entry_id="Li2O")]
    hull = ReferenceHull.from_entries(entries, "toy Li-O hull", compatibility=None)
    li2o = Structure(Lattice.cubic(4.6), ["O", "Li", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25], [0.75, 0.75, 0.75]])
    li2o2 = Structure(Lattice.cubic(4.0), ["Li", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nacl = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rows = [("li2o-above", li2o, -1.9), ("li2o2-above", li2o2, -1.0), ("li2o2-below", li2o2, -1.6),
            ("no-prediction", li2o, None), ("outside", nacl, -2.0)]
    batch = StructureBatch.from_structures(
        [r[1] for r in rows],
        [{"row_id": r[0], "predicted_formation_energy_per_atom_eV": r[2], "predicted_by": "alignn:abc"} for r in rows],
    )
    annotated = ehull_from_predicted_formation_energy(batch, hull)
    e_hull = annotated.column("predicted_e_above_hull_eV_per_atom")
    assert e_hull[0] == pytest.approx(0.1)
    assert e_hull[1] == pytest.approx(0.5)
    assert e_hull[2] == pytest.approx(-0.1)
    assert e_hull[3] is None and "no predicted_formation_energy_per_atom_eV" in annotated.column("e_above_hull_error")[3]
    assert e_hull[4] is None and "outside the hull" in annotated.column("e_above_hull_error")[4]
    assert annotated.column("e_above_hull_source")[0] == (
        "predicted_formation_energy_per_atom_eV (alignn:abc) on hull 'toy Li-O hull'"
    )


@pytest.mark.shared_data
@pytest.mark.slow
def test_megnet_trained_on_mp20_beats_training_mean_on_held_out_structures(shared_data, tmp_path):
    from battgen.predictors.matgl_models import MEGNetPredictor
    from battgen.sources.files import read_mp20_csv

    batch, _ = read_mp20_csv(shared_data / "mp20_mini_slices" / "raw_mp20_dataset_mini.csv", max_rows=400)
    splits = split_batch(batch, (0.75, 0.1, 0.15), seed=0)
    hp = {**MEGNetPredictor.default_hyperparameters(), "epochs": 6, "batch_size": 16, "learning_rate": 2e-3,
          "nblocks": 2, "dim_edge_embedding": 32}
    result = MEGNetPredictor.fit(splits, [EF], tmp_path / "model", hp, seed=0)
    metrics = result["metrics"]
    assert metrics[f"n_test_{EF}"] == len(splits.test) == 60
    assert metrics[f"test_mae_{EF}"] < 0.8 * metrics[f"baseline_mae_{EF}"]
