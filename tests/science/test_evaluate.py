"""Generation metrics (battgen.evaluate): CDVAE validity / coverage / distances, reconstruction, S.U.N.,
target agreement and the ``battgen evaluate`` command, on tiny hand-made sets with known answers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from pymatgen.core import Lattice, Structure
from scipy.stats import wasserstein_distance

from battgen.batch import StructureBatch
from battgen.cli import EXIT_INVALID_INPUT, EXIT_OK, SUMMARY_FILENAME, main
from battgen.evaluate import (
    EvaluationSettings,
    FeatureScaler,
    FingerprintCache,
    evaluate_generation,
    reconstruction_metrics,
    target_agreement,
)
from battgen.evaluate.fingerprints import coverage_cutoffs
from battgen.evaluate.targets import agreement_scalars


def rocksalt(cation: str, anion: str, a: float) -> Structure:
    """Primitive rocksalt (2 sites: cheap CrystalNN fingerprints)."""
    return Structure(Lattice.from_parameters(a / 2**0.5, a / 2**0.5, a / 2**0.5, 60, 60, 60),
                     [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def caesium_chloride(cation: str, anion: str, a: float) -> Structure:
    return Structure(Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def reference_batch() -> StructureBatch:
    structures = [rocksalt("Li", "F", 4.03), rocksalt("Na", "Cl", 5.64), rocksalt("Mg", "O", 4.21),
                  caesium_chloride("Cs", "Cl", 4.12), rocksalt("K", "Br", 6.60)]
    formation_energies = [-3.1, -2.1, -3.0, -2.2, -2.0]
    return StructureBatch.from_structures(
        structures, [{"row_id": f"ref-{i}", "formation_energy_per_atom_eV": e} for i, e in enumerate(formation_energies)]
    )


def as_generated(batch: StructureBatch, generator: str = "cdvae") -> StructureBatch:
    return StructureBatch.from_structures(
        batch.structures, [{**m, "row_id": f"{generator}-{i}", "generator": generator} for i, m in enumerate(batch.meta)]
    )


@pytest.fixture(scope="module")
def cache():
    """One fingerprint cache for the module: the same structures recur across tests."""
    return FingerprintCache()


# --- known values ---------------------------------------------------------------------------------------
def test_generated_identical_to_reference_is_fully_covered_and_not_novel(cache):
    reference = reference_batch()
    metrics = evaluate_generation(as_generated(reference), reference, training=reference,
                                  settings={"dataset": "perov_5"}, fingerprint_cache=cache)
    overall = metrics.overall
    assert overall["cov_recall_percent"] == 100.0 and overall["cov_precision_percent"] == 100.0
    assert overall["amsd_recall"] == 0.0 and overall["amcd_precision"] == 0.0
    assert overall["struct_valid_percent"] == overall["comp_valid_percent"] == overall["valid_percent"] == 100.0
    assert overall["unique_percent"] == 100.0 and overall["n_unique"] == 5
    assert overall["novel_percent"] == 0.0 and overall["screening_pass_percent"] == 0.0
    assert overall["wdist_density_g_per_cm3"] == 0.0
    assert overall["wdist_num_elements"] == 0.0
    assert overall["wdist_formation_energy_per_atom_eV"] == 0.0
    assert metrics.settings["structure_cutoff_used"] == 0.2 and metrics.settings["composition_cutoff_used"] == 4.0


def test_coverage_drops_when_compositions_move_away(cache):
    """Swapping in far-away chemistry keeps the structure fingerprint but breaks composition coverage."""
    reference = reference_batch()
    far = StructureBatch.from_structures([rocksalt("Ba", "Te", 7.0), rocksalt("Sr", "Se", 6.2)],
                                         [{"row_id": "g0"}, {"row_id": "g1"}])
    metrics = evaluate_generation(far, reference, settings={"dataset": "perov_5"}, fingerprint_cache=cache)
    assert metrics.overall["cov_precision_percent"] == 0.0
    assert metrics.overall["cov_recall_percent"] == 0.0
    assert metrics.overall["amsd_precision"] < 0.2 < metrics.overall["amcd_precision"]  # same motif, other chemistry


def test_one_overlapping_structure_in_n_gives_structure_validity_n_minus_1_over_n(cache):
    structures = reference_batch().structures[:4]
    overlapping = rocksalt("Na", "Cl", 5.64)
    overlapping.append("Na", [0.3, 0.0, 0.0], coords_are_cartesian=True)  # 0.3 Å from the Na at the origin
    batch = StructureBatch.from_structures([*structures, overlapping], prefix="gen")
    metrics = evaluate_generation(batch, fingerprint_cache=cache)
    assert metrics.overall["struct_valid_percent"] == pytest.approx(100 * 4 / 5)
    assert metrics.overall["n_valid"] == 4
    assert metrics.overall["cov_recall_percent"] is None  # no reference: no coverage


def test_shifted_density_gives_hand_computed_wasserstein_distance(cache):
    reference = reference_batch()
    expanded = []
    for structure in reference.structures:
        copy = structure.copy()
        copy.scale_lattice(structure.volume * 1.25)  # density / 1.25
        expanded.append(copy)
    generated = StructureBatch.from_structures(expanded, prefix="gen")
    metrics = evaluate_generation(generated, reference, settings={"dataset": "perov_5"}, fingerprint_cache=cache)
    densities = np.array([s.density for s in reference.structures])
    # Equal-size 1-D samples whose order is preserved: W1 = mean |x_i - y_i| = mean(d) * (1 - 1/1.25).
    by_hand = float(np.mean(densities) * (1 - 1 / 1.25))
    assert metrics.overall["wdist_density_g_per_cm3"] == pytest.approx(by_hand, rel=1e-9)
    assert by_hand == pytest.approx(wasserstein_distance(densities, densities / 1.25))
    assert metrics.overall["wdist_num_elements"] == 0.0
    assert metrics.overall["wdist_formation_energy_per_atom_eV"] is None  # generated rows carry no property


def test_property_from_predictor_and_sampling_of_max_samples(cache):
    reference = reference_batch()
    generated = as_generated(reference)

    n_predicted = []

    def constant_predictor(structures):
        n_predicted.append(len(structures))
        return [-1.0] * len(structures)

    metrics = evaluate_generation(generated, reference, settings={"dataset": "perov_5", "max_samples": 3},
                                  property_predictor=constant_predictor, fingerprint_cache=cache)
    assert metrics.overall["n_samples_evaluated"] == 3
    # Both sides predicted: every value -1, distance 0 (the metadata column, with its spread, is ignored).
    assert metrics.overall["wdist_formation_energy_per_atom_eV"] == 0.0
    assert metrics.settings["property_source"] == "predictor"
    assert sum(n_predicted) == 5 + 3  # the reference once, each sampled row once


def test_coverage_definition_on_hand_made_fingerprints():
    """CDVAE's compute_cov: independent structure / composition minima; COV-P over all generated rows."""
    from battgen.evaluate.fingerprints import Fingerprints, coverage

    reference = Fingerprints(np.array([[0.0], [1.0]]), np.array([True, True]), np.array([[0.0, 0.0], [10.0, 0.0]]))
    generated = Fingerprints(
        np.array([[0.1], [1.0], [np.nan]]),  # G0 near R0; G1 has R1's structure but R0's composition
        np.array([True, True, False]),  # G2: CrystalNN failed
        np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0]]),
    )
    result = coverage(generated, reference, FeatureScaler(np.zeros(2), np.ones(2)), 0.2, 4.0)
    assert result["cov_recall_percent"] == 50.0  # R1's closest composition is 10 away
    assert result["cov_precision_percent"] == pytest.approx(200 / 3)  # G0 and G1 (minima from R0 and R1)
    assert result["amsd_recall"] == pytest.approx(0.05) and result["amcd_recall"] == pytest.approx(5.0)
    assert result["n_coverage_generated"] == 2


def test_feature_scaler_follows_cdvae_conventions(tmp_path):
    features = np.array([[1.0, 5.0, np.nan], [3.0, 5.0, np.nan]])
    scaler = FeatureScaler.fit(features)
    assert scaler.means.tolist() == [2.0, 5.0, 0.0] and scaler.stds.tolist() == [1.0, 1.0, 1.0]
    assert scaler.transform(features).tolist() == [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]  # NaN -> 0
    (tmp_path / "scaler.json").write_text(json.dumps({"means": [1.0] * 132, "stds": [0.0] + [2.0] * 131}))
    loaded = FeatureScaler.from_file(tmp_path / "scaler.json")
    assert loaded.stds[0] == 1.0 and loaded.transform(np.full((1, 132), 3.0))[0, 1] == 1.0
    (tmp_path / "short.json").write_text(json.dumps({"means": [1.0] * 3, "stds": [1.0] * 3}))
    with pytest.raises(ValueError, match="132 numbers"):
        FeatureScaler.from_file(tmp_path / "short.json")


def test_cov_by_default_uses_cdvae_composition_scaler_constants(cache):
    """The default is CDVAE's CompScaler (cdvae/common/constants.py); a reference fit only when asked."""
    from battgen.evaluate.fingerprints import CDVAE_COMP_SCALER_FILE

    constants = json.loads(CDVAE_COMP_SCALER_FILE.read_text(encoding="utf-8"))
    assert len(constants["means"]) == len(constants["stds"]) == 132
    assert (constants["means"][0], constants["stds"][0]) == (21.194441759304013, 16.35781741152948)  # CDVAE's first
    assert (constants["means"][-1], constants["stds"][-1]) == (136.4664572257129, 85.980205895116)
    reference = reference_batch()
    generated = StructureBatch.from_structures([rocksalt("K", "Br", 6.6), rocksalt("Mg", "O", 4.2)],
                                               [{"row_id": "g0"}, {"row_id": "g1"}])
    default = evaluate_generation(generated, reference, settings={"dataset": "perov_5"}, fingerprint_cache=cache)
    explicit = evaluate_generation(generated, reference, settings={"dataset": "perov_5"}, fingerprint_cache=cache,
                                   composition_scaler=FeatureScaler(np.array(constants["means"]),
                                                                    np.array(constants["stds"]), "given"))
    fitted = evaluate_generation(generated, reference, settings={"dataset": "perov_5"}, fingerprint_cache=cache,
                                 composition_scaler="reference")
    for key in ("cov_recall_percent", "cov_precision_percent", "amcd_recall", "amcd_precision"):
        assert default.overall[key] == explicit.overall[key], key
    assert fitted.overall["amcd_recall"] != pytest.approx(default.overall["amcd_recall"])
    assert default.settings["composition_scaler"] == "CDVAE CompScaler constants"
    assert fitted.settings["composition_scaler"] == f"fitted on the reference ({len(reference)} rows)"


def test_coverage_cutoffs_are_cdvae_values():
    assert coverage_cutoffs("mp20") == {"structure": 0.4, "composition": 10.0}
    assert coverage_cutoffs("perovskite") == coverage_cutoffs("perov_5") == {"structure": 0.2, "composition": 4.0}
    assert coverage_cutoffs("carbon") == {"structure": 0.2, "composition": 4.0}
    with pytest.raises(ValueError, match="no coverage cutoffs"):
        EvaluationSettings.from_dict({"dataset": "qm9"})


# --- reconstruction -------------------------------------------------------------------------------------
def test_reconstruction_match_rate_and_rmse():
    original = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    perturbed = original.copy()
    perturbed.perturb(0.05, min_distance=0.05)  # every site moved by exactly 0.05 Å
    other = caesium_chloride("Na", "Cl", 3.3)  # same composition, different structure
    itself = reconstruction_metrics([original], [original.copy()])
    assert itself["reconstruction_match_percent"] == 100.0 and itself["reconstruction_rms_dist_normalised"] == 0.0
    close = reconstruction_metrics([original], [perturbed])
    assert close["reconstruction_match_percent"] == 100.0
    assert 0.0 < close["reconstruction_rms_dist_normalised"] < 0.05 / (original.volume / len(original)) ** (1 / 3)
    different = reconstruction_metrics([original, original], [other, original])
    assert different["n_reconstruction_matched"] == 1 and different["reconstruction_match_percent"] == 50.0


# --- S.U.N. ---------------------------------------------------------------------------------------------
def test_sun_counts_on_a_hand_made_set(cache):
    strained = rocksalt("Na", "Cl", 5.64)
    strained.apply_strain(0.01)
    rows = [
        (rocksalt("Na", "Cl", 5.64), 0.0),  # stable, unique, novel: S.U.N.
        (strained, 0.0),  # duplicate of the first: not unique
        (rocksalt("K", "Cl", 6.29), 0.05),  # metastable only, unique, novel: M.S.U.N.
        (rocksalt("Li", "Cl", 5.13), -0.01),  # stable but in the training set: not novel
        (rocksalt("Mg", "O", 4.21), None),  # no E_hull: not stable
        (caesium_chloride("Cs", "Cl", 4.12), 0.2),  # above both thresholds
    ]
    generated = StructureBatch.from_structures(
        [s for s, _ in rows], [{"row_id": f"g{i}", "e_above_hull_eV_per_atom": e} for i, (_, e) in enumerate(rows)]
    )
    training = StructureBatch.from_structures([rocksalt("Li", "Cl", 5.13)], [{"row_id": "mp-22905"}])
    overall = evaluate_generation(generated, training=training, fingerprint_cache=cache).overall
    # strict (E_hull <= 0) and MatterGen's (<= 0.1 eV/atom), each named by its threshold
    assert (overall["n_stable_ehull_le_0meV"], overall["n_sun_ehull_le_0meV"]) == (3, 1)
    assert (overall["n_stable_ehull_le_100meV"], overall["n_sun_ehull_le_100meV"]) == (4, 2)
    assert overall["sun_ehull_le_0meV_percent"] == pytest.approx(100 / 6)
    assert overall["sun_ehull_le_100meV_percent"] == pytest.approx(200 / 6)
    assert not any(key in overall for key in ("sun_percent", "msun_percent"))
    assert overall["n_unique"] == 5 and overall["n_unique_novel"] == 4 and overall["n_with_e_hull"] == 5
    strict = evaluate_generation(generated, training=training, fingerprint_cache=cache,
                                 settings={"stable_threshold_eV_per_atom": -0.005}).overall
    # only LiCl (-0.01) is below -0.005
    assert strict["n_stable_ehull_le_minus5meV"] == 1 and strict["n_sun_ehull_le_minus5meV"] == 0


# --- target agreement -----------------------------------------------------------------------------------
def licoo2() -> Structure:
    return Structure.from_spacegroup("R-3m", Lattice.hexagonal(2.82, 14.05), ["Li", "Co", "O"],
                                     [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.2604]])


def test_target_agreement_on_known_capacities():
    limn2o4 = Structure(Lattice.cubic(8.0), ["Li", "Mn", "Mn", "O", "O", "O", "O"],
                        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0.25, 0.25, 0.25], [0.75, 0.75, 0.25],
                         [0.25, 0.75, 0.75], [0.75, 0.25, 0.75]])
    batch = StructureBatch.from_structures(
        [licoo2(), limn2o4, licoo2()],
        [{"row_id": "a", "target_gravimetric_capacity_mAh_per_g": 273.8},
         {"row_id": "b", "conditions": {"gravimetric_capacity_mAh_per_g": 273.8}},
         {"row_id": "c"}],  # unconditional row: not counted
    )
    agreement = target_agreement(batch)
    stats = agreement["gravimetric_capacity_mAh_per_g"]
    assert stats["n_targeted"] == 2
    assert stats["achieved"][0] == pytest.approx(273.8, abs=0.1)  # LiCoO2: F / 3.6 / 97.87 g/mol
    assert stats["achieved"][1] == pytest.approx(148.2, abs=0.1)  # LiMn2O4: F / 3.6 / 180.8 g/mol
    assert stats["mean_abs_error"] == pytest.approx((0.04 + 125.6) / 2, abs=0.1)
    assert stats["within_tolerance_percent"] == 50.0  # tolerance 50 mAh/g
    assert list(agreement) == ["gravimetric_capacity_mAh_per_g"]
    # Fig. 5B as numbers: one requested value, two achieved (273.8 and 148.2), one within 50 mAh/g
    (row,) = stats["per_target"]
    assert row["target"] == 273.8 and row["n_achieved_known"] == 2
    assert row["median_achieved"] == pytest.approx((273.8 + 148.2) / 2, abs=0.1)
    assert row["q25_achieved"] < row["median_achieved"] < row["q75_achieved"]
    assert row["within_tolerance_percent"] == 50.0
    assert "target_gravimetric_capacity_mAh_per_g_per_target" not in agreement_scalars(agreement)


# --- battgen evaluate ------------------------------------------------------------------------------------
def test_evaluate_command_writes_metrics_table_and_figures(tmp_path):
    reference = reference_batch()
    generated = StructureBatch.concatenate([
        as_generated(reference.select([True, True, True, False, False]), "cdvae"),
        as_generated(reference.select([False, False, False, True, True]), "llm"),
    ])
    conditional = StructureBatch.from_structures(
        [licoo2()], [{"row_id": "llm-target", "generator": "llm", "target_gravimetric_capacity_mAh_per_g": 250.0}])
    StructureBatch.concatenate([generated, conditional]).write(tmp_path / "generated.jsonl.gz")
    reference.write(tmp_path / "test.jsonl.gz")
    reference.write(tmp_path / "train.jsonl.gz")
    config = {"generated": "generated.jsonl.gz", "reference": "test.jsonl.gz", "training": "train.jsonl.gz",
              "dataset": "perov_5", "reconstruction": {"original": "test.jsonl.gz", "reconstructed": "test.jsonl.gz"},
              "output_prefix": "run1", "fingerprint_cache": "fingerprints.npz", "composition_scaler": "train.jsonl.gz"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["evaluate", "--config", str(tmp_path / "config.yaml"), "--workdir", str(tmp_path)]) == EXIT_OK

    metrics = yaml.safe_load((tmp_path / "run1_metrics.yaml").read_text())
    assert set(metrics["per_generator"]) == {"cdvae", "llm"}
    assert metrics["per_generator"]["cdvae"]["n_generated"] == 3 and metrics["overall"]["n_generated"] == 6
    assert metrics["overall"]["cov_recall_percent"] == 100.0  # all five reference rows were generated
    assert metrics["per_generator"]["cdvae"]["cov_recall_percent"] == pytest.approx(60.0)
    assert metrics["reconstruction"]["reconstruction_match_percent"] == 100.0
    assert metrics["settings"]["composition_scaler"] == "train.jsonl.gz (5 rows)"
    assert metrics["target_agreement"]["gravimetric_capacity_mAh_per_g"]["n_targeted"] == 1
    with open(tmp_path / "run1_metrics.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["generator"] for row in table] == ["cdvae", "llm", "all"]
    for name in ("run1_property_distributions.png", "run1_target_agreement.png", "fingerprints.npz"):
        assert (tmp_path / name).stat().st_size > 1000, name
    summary = yaml.safe_load((tmp_path / SUMMARY_FILENAME).read_text())
    assert summary["outputs"]["metrics"] == "run1_metrics.yaml"
    assert len(FingerprintCache(tmp_path / "fingerprints.npz")) == 6  # 5 reference + LiCoO2, reusable


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"generated": "g.jsonl.gz", "dataset": "perov_5", "max_samples": 10, "colour": "red"}, "unknown config key"),
        ({"generated": "g.jsonl.gz", "reference": "g.jsonl.gz"}, "needs 'dataset'"),
        ({"generated": "g.jsonl.gz", "dataset": "perov_5", "max_samples": 0}, "max_samples"),
        ({"generated": "missing.jsonl.gz"}, "does not exist"),
        ({"reference": "g.jsonl.gz", "dataset": "mp20"}, "needs 'generated'"),
    ],
)
def test_evaluate_command_rejects_bad_config(tmp_path, config, message):
    reference_batch().write(tmp_path / "g.jsonl.gz")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["evaluate", "--config", str(tmp_path / "config.yaml"), "--workdir", str(tmp_path)]) == EXIT_INVALID_INPUT
    summary = yaml.safe_load((tmp_path / SUMMARY_FILENAME).read_text())
    assert message in summary["error"]
    assert not (tmp_path / "metrics.yaml").exists()


# --- real data --------------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_perov5_test_rows_against_themselves(shared_data):
    """25 real perov-5 test rows as both sets: CDVAE-like validity, full coverage, no novelty."""
    from battgen.sources.files import read_mp20_csv

    rows, _ = read_mp20_csv(shared_data / "cdvae_perov_5" / "test.csv", max_rows=25)
    overall = evaluate_generation(as_generated(rows), rows, training=rows, settings={"dataset": "perov_5"}).overall
    assert overall["struct_valid_percent"] == 100.0
    assert overall["comp_valid_percent"] == 96.0  # 24 of 25 (CDVAE: 98.59 % of its perov-5 samples)
    assert overall["cov_recall_percent"] == 100.0 and overall["cov_precision_percent"] == 100.0
    assert overall["novel_percent"] == 0.0
    assert overall["wdist_formation_energy_per_atom_eV"] is not None
