"""Seed 001's descriptor baselines: Magpie / XRD features, the 1-D CNNs, the search and the comparison."""

from __future__ import annotations

import csv
import math
from importlib.metadata import EntryPoint

import numpy as np
import pytest
import yaml
from pymatgen.core import Composition, Lattice, Structure

from battgen.batch import StructureBatch
from battgen.generate.dataset import split_batch
from battgen.models import write_manifest
from battgen.predictors import base
from battgen.predictors.comparison import compare_predictors
from battgen.predictors.descriptor_cnn import FeatureScaler, MagpieCNNPredictor, XRDCNNPredictor
from battgen.predictors.descriptors import (
    MAGPIE_N_FEATURES,
    XRDGrid,
    magpie_feature_labels,
    magpie_features,
    xrd_pattern,
)
from battgen.predictors.search import hyperparameter_search

TARGET = "formation_energy_per_atom_eV"
CU_KA_WAVELENGTH_A = 1.54184  # pymatgen's "CuKa" (weighted Kα1/Kα2)
# Small networks so each fit takes about a second; the architecture is the seed's in every other respect.
SMALL = {"conv_filters": 8, "dense_units": [32], "dropout": 0.0, "batch_size": 8, "lr": 3e-3,
         "max_epochs": 40, "patience_epochs": 100, "checkpoint_every_epochs": 5}


FCC_SITES = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]


def rocksalt(cation: str, anion: str, a: float) -> Structure:
    """Conventional 8-atom rocksalt cell (written out: ``Structure.from_spacegroup`` is ~1 s a call)."""
    anion_sites = [[(x + 0.5) % 1, y, z] for x, y, z in FCC_SITES]
    return Structure(Lattice.cubic(a), [cation] * 4 + [anion] * 4, FCC_SITES + anion_sites)


@pytest.fixture(scope="module")
def toy_batch() -> StructureBatch:
    """42 rocksalts whose target is a smooth function of composition (learnable from Magpie) and of the
    lattice parameter (learnable from XRD peak positions)."""
    structures, meta = [], []
    for cation in ("Li", "Na", "K", "Rb", "Mg", "Ca", "Sr"):
        for anion in ("F", "Cl", "Br", "O", "S", "Se"):
            a = 4.0 + (0.25 * len(structures)) % 2.5  # 4.0 ... 6.25 Å
            structure = rocksalt(cation, anion, a)
            mean_z = np.mean([site.specie.Z for site in structure])
            meta.append({"row_id": f"{cation}{anion}", TARGET: -0.05 * mean_z + 0.3 * (a - 5.0)})
            structures.append(structure)
    return StructureBatch.from_structures(structures, meta)


@pytest.fixture(scope="module")
def toy_splits(toy_batch):
    return split_batch(toy_batch, (0.7, 0.15, 0.15), seed=0)


# --- descriptors ---------------------------------------------------------------------------------
def test_magpie_has_132_features_with_hand_computed_mean_atomic_number():
    labels = magpie_feature_labels()
    assert len(labels) == MAGPIE_N_FEATURES == 132
    licoo2 = magpie_features(Composition("LiCoO2"))
    nacl = magpie_features(rocksalt("Na", "Cl", 5.64))  # a structure is featurised by its composition
    assert licoo2.shape == nacl.shape == (132,)
    mean_z, max_z, range_z = (labels.index(f"MagpieData {s} Number") for s in ("mean", "maximum", "range"))
    assert licoo2[mean_z] == pytest.approx((3 + 27 + 2 * 8) / 4)  # 11.5
    assert nacl[mean_z] == pytest.approx((11 + 17) / 2)
    assert (nacl[max_z], nacl[range_z]) == (17, 6)
    # Only element fractions matter: a formula unit multiple gives the same vector.
    np.testing.assert_array_equal(magpie_features(Composition("Li2Co2O4")), licoo2)


def test_magpie_nan_is_kept_and_imputed_by_the_training_mean():
    helium = magpie_features(Composition("He"))  # matminer has no melting point etc. for He
    assert np.isnan(helium).any() and np.isfinite(helium).sum() > 100
    train = np.array([[1.0, 5.0, np.nan], [3.0, 5.0, 2.0]])
    scaler = FeatureScaler.fit(train)
    scaled = scaler.transform(np.array([[np.nan, 5.0, 4.0]]))
    # NaN -> training mean (0 after scaling); a constant feature -> 0, not a division by zero; the third
    # feature's statistics ignore the NaN training row (mean 2, one value so scale 1).
    np.testing.assert_allclose(scaled, [[0.0, 0.0, 2.0]])
    np.testing.assert_allclose(scaler.transform(np.array([[3.0, 5.0, 2.0]])), [[1.0, 0.0, 0.0]])
    # XRD: one mean / scale for all bins, so a peak in a bin empty in training stays a moderate value.
    patterns = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    pattern_scaler = FeatureScaler.fit(patterns, per_feature=False)
    np.testing.assert_allclose(pattern_scaler.mean, [1 / 3] * 3)
    np.testing.assert_allclose(pattern_scaler.transform(np.array([[0.0, 0.0, 1.0]])),
                               [[-1 / math.sqrt(2), -1 / math.sqrt(2), math.sqrt(2)]])


# Strongest reflection: (200) for NaCl; for LiCl the weak Li scatterer makes the 8-fold (111) win.
@pytest.mark.parametrize("cation, a, strongest_hkl", [("Na", 5.64, (2, 0, 0)), ("Li", 5.13, (1, 1, 1))])
def test_xrd_rocksalt_peaks_land_in_the_bins_of_braggs_angles(cation, a, strongest_hkl):
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    structure = rocksalt(cation, "Cl", a)
    grid = XRDGrid(5.0, 90.0, 0.5)
    pattern = xrd_pattern(structure, grid)
    assert pattern.shape == (170,) and pattern.max() == 1.0
    reference = XRDCalculator().get_pattern(structure, two_theta_range=(5, 90))
    for hkl in ((1, 1, 1), (2, 0, 0), (2, 2, 0)):
        d_spacing = a / math.sqrt(sum(i * i for i in hkl))
        bragg_deg = 2 * math.degrees(math.asin(CU_KA_WAVELENGTH_A / (2 * d_spacing)))
        pymatgen_deg, intensity = next((x, y) for x, y, hkls in zip(reference.x, reference.y, reference.hkls)
                                       if hkls[0]["hkl"] == hkl)
        assert pymatgen_deg == pytest.approx(bragg_deg, abs=0.01)
        # One reflection per 0.5° bin here, so the bin holds exactly pymatgen's intensity (scaled to max 1).
        assert pattern[grid.bin_of(pymatgen_deg)] == pytest.approx(intensity / 100)
    strongest_deg = next(x for x, hkls in zip(reference.x, reference.hkls) if hkls[0]["hkl"] == strongest_hkl)
    assert int(np.argmax(pattern)) == grid.bin_of(strongest_deg)
    # Forbidden (100) of the fcc lattice: nothing in its bin.
    assert pattern[grid.bin_of(2 * math.degrees(math.asin(CU_KA_WAVELENGTH_A / (2 * a))))] == 0


# --- the CNNs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [MagpieCNNPredictor, XRDCNNPredictor])
def test_cnn_learns_predicts_in_target_units_and_round_trips(cls, toy_batch, toy_splits, tmp_path):
    hyperparameters = {**cls.default_hyperparameters(), **SMALL}
    result = cls.fit(toy_splits, [TARGET], tmp_path, hyperparameters, seed=0)
    training = result["training"]
    assert training["last_train_loss_scaled"] < 0.5 * training["first_train_loss_scaled"]
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    write_manifest(tmp_path, "predictor", cls.architecture, hyperparameters, training, result["metrics"])
    predictor = cls(tmp_path)
    values = predictor.predict(toy_batch)
    assert list(values) == [TARGET] and values[TARGET].shape == (len(toy_batch),)
    true = np.array(toy_batch.column(TARGET))
    # In the target's unit (eV/atom), not standardised: within the spread of the training targets.
    assert true.min() - 0.5 < values[TARGET].mean() < true.max() + 0.5
    # The loaded model reproduces the in-memory model's test RMSE exactly (weights and scalers saved).
    test_true = np.array(toy_splits.test.column(TARGET))
    loaded_rmse = np.sqrt(np.mean((predictor.predict(toy_splits.test)[TARGET] - test_true) ** 2))
    assert loaded_rmse == pytest.approx(result["metrics"][f"test_rmse_{TARGET}"], rel=1e-6)
    annotated = predictor.annotate(toy_splits.test)
    assert annotated.column("predicted_by")[0].startswith(f"{cls.architecture}:")


def test_resumed_training_matches_uninterrupted_training(toy_splits, tmp_path):
    hyperparameters = {**MagpieCNNPredictor.default_hyperparameters(), **SMALL, "dropout": 0.3}
    straight = MagpieCNNPredictor.fit(toy_splits, [TARGET], tmp_path / "straight", {**hyperparameters, "max_epochs": 8})
    MagpieCNNPredictor.fit(toy_splits, [TARGET], tmp_path / "first", {**hyperparameters, "max_epochs": 5})
    resumed = MagpieCNNPredictor.fit(toy_splits, [TARGET], tmp_path / "second", {**hyperparameters, "max_epochs": 8},
                                     resume_from=tmp_path / "first")
    assert resumed["training"]["resumed_from_epoch"] == 5 and resumed["training"]["epochs"] == 8
    # Epoch 8's loss depends on the restored weights, optimiser moments, shuffling and dropout RNG.
    assert resumed["training"]["last_train_loss_scaled"] == pytest.approx(straight["training"]["last_train_loss_scaled"], rel=1e-6)
    assert resumed["training"]["best_val_rmse"] == pytest.approx(straight["training"]["best_val_rmse"], rel=1e-6)
    assert resumed["metrics"][f"test_rmse_{TARGET}"] == pytest.approx(straight["metrics"][f"test_rmse_{TARGET}"], rel=1e-6)


def test_cli_train_predictor_then_predict_with_magpie_cnn(toy_batch, tmp_path):
    from battgen.cli import SUMMARY_FILENAME, main

    toy_batch.write(tmp_path / "train.jsonl.gz")
    train_config = {
        "predictor": "magpie-cnn", "train": "train.jsonl.gz", "targets": [TARGET], "output": "model",
        "split": {"fractions": [0.7, 0.15, 0.15], "seed": 0}, "hyperparameters": {**SMALL, "max_epochs": 10},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train_config))
    assert main(["train-predictor", "--config", str(tmp_path / "train.yaml"), "--workdir", str(tmp_path)]) == 0
    summary = yaml.safe_load((tmp_path / SUMMARY_FILENAME).read_text())
    assert summary["outputs"]["architecture"] == "magpie-cnn"
    assert summary["outputs"]["metrics"][f"n_test_{TARGET}"] == 7  # 42 rows split 29 / 6 / 7

    predict_config = {"predictor": "magpie-cnn", "model": "model", "input": "train.jsonl.gz", "output": "predicted.jsonl.gz"}
    (tmp_path / "predict.yaml").write_text(yaml.safe_dump(predict_config))
    assert main(["predict", "--config", str(tmp_path / "predict.yaml"), "--workdir", str(tmp_path)]) == 0
    predicted = StructureBatch.read(tmp_path / "predicted.jsonl.gz")
    values = predicted.column(f"predicted_{TARGET}")
    assert len(values) == len(toy_batch) and all(isinstance(v, float) for v in values)
    assert predicted.column("predicted_by")[0] == f"magpie-cnn:{summary['outputs']['content_sha256'][:12]}"


# --- search and comparison -----------------------------------------------------------------------
def test_two_trial_search_returns_the_better_trial(toy_splits, tmp_path):
    # lr 0 leaves the network untrained, so the trial that learns must win on validation RMSE.
    result = hyperparameter_search("magpie-cnn", toy_splits, TARGET, tmp_path, space={"lr": [0.0, 3e-3]},
                                   n_trials=2, strategy="grid", base_hyperparameters={**SMALL, "max_epochs": 25})
    assert [t["lr"] for t in result.trials] == [0.0, 3e-3]
    assert result.best_val_rmse == min(t["val_rmse"] for t in result.trials)
    assert result.best_trial == 1 and result.best_hyperparameters["lr"] == 3e-3
    assert result.best_hyperparameters["conv_filters"] == SMALL["conv_filters"]  # base kept, searched key replaced
    assert "val_rmse" in result.table().splitlines()[0]


def test_comparison_writes_table_and_figure_and_skips_unavailable_predictors(toy_splits, tmp_path, monkeypatch):
    registered = base.registered_predictors()
    broken = EntryPoint(name="battgen.broken-import", value="battgen.predictors.no_such_module:Nothing",
                        group=base.ENTRY_POINT_GROUP)
    monkeypatch.setattr(base, "registered_predictors", lambda: {**registered, broken.name: broken})
    report = compare_predictors(
        toy_splits, [("magpie-cnn", {**SMALL, "max_epochs": 10}), "broken-import", "not-registered"],
        TARGET, tmp_path,
    )
    with open(report.csv_path, newline="") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"training-mean", "magpie-cnn", "broken-import", "not-registered"}
    assert rows["magpie-cnn"]["status"] == "ok" and float(rows["magpie-cnn"]["test_rmse_eV_per_atom"]) > 0
    assert float(rows["magpie-cnn"]["inference_structures_per_s"]) > 0
    assert float(rows["magpie-cnn"]["reference_test_rmse_eV_per_atom"]) == 0.25  # seed 001's Magpie CNN
    assert rows["broken-import"]["status"] == "skipped" and "no_such_module" in rows["broken-import"]["reason"]
    assert rows["not-registered"]["status"] == "skipped" and "no predictor" in rows["not-registered"]["reason"]
    baseline_true = np.array(toy_splits.test.column(TARGET))
    baseline_mean = np.mean(toy_splits.train.column(TARGET))
    assert float(rows["training-mean"]["test_rmse_eV_per_atom"]) == pytest.approx(
        np.sqrt(np.mean((baseline_true - baseline_mean) ** 2)), rel=1e-6)
    assert "skipped" in report.text and "magpie-cnn" in report.text
    assert report.figure_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report.figure_path.stat().st_size > 10_000


# --- real data -----------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_magpie_cnn_beats_the_training_mean_on_mp20_formation_energies(shared_data, tmp_path):
    import pandas as pd

    table = pd.read_csv(shared_data / "mp20_mini_slices" / "raw_mp20_dataset_mini.csv").sample(500, random_state=0)
    structures = [Structure.from_str(cif, fmt="cif") for cif in table["cif"]]
    meta = [{"row_id": mid, TARGET: float(ef)} for mid, ef in zip(table["material_id"], table["formation_energy_per_atom"])]
    splits = split_batch(StructureBatch.from_structures(structures, meta), (0.8, 0.1, 0.1), seed=0)
    # A fixed epoch count, not a time limit: the result must not depend on how busy the machine is.
    hyperparameters = {**MagpieCNNPredictor.default_hyperparameters(), "max_epochs": 12}
    metrics = MagpieCNNPredictor.fit(splits, [TARGET], tmp_path, hyperparameters, seed=0)["metrics"]
    baseline_rmse = np.sqrt(np.mean((np.array(splits.test.column(TARGET)) - np.mean(splits.train.column(TARGET))) ** 2))
    assert metrics[f"n_test_{TARGET}"] == 50
    assert metrics[f"test_rmse_{TARGET}"] < 0.6 * baseline_rmse
    assert metrics[f"test_mae_{TARGET}"] < 0.6 * metrics[f"baseline_mae_{TARGET}"]
