"""Predictors through AiiDA with the real CLI on localhost: PredictorTrainBaseWorkChain -> model node ->
PropertyScreenWorkChain (in-process and CalcJob prediction paths agree), the capacity calcfunction against
known values, ordered thresholds with their funnel."""

from __future__ import annotations

import math

import pytest
from aiida import orm
from aiida.engine import run_get_node
from pymatgen.core import Lattice, Structure

from aiida_battgen.calculations.functions.capacity import capacity
from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.workchains.property_screen import PropertyScreenWorkChain
from aiida_battgen.workchains.training import PredictorTrainBaseWorkChain
from battgen.batch import StructureBatch
from battgen.sources.builtin_hosts import builtin_hosts

pytestmark = pytest.mark.usefixtures("aiida_profile_clean")

TARGET = "formation_energy_per_atom_eV"
SMALL_CNN = {"conv_filters": 4, "dense_units": [8], "batch_size": 4, "max_epochs": 3, "checkpoint_every_epochs": 1}


@pytest.fixture(scope="module")
def labelled_hosts():
    """Built-in hosts with a stand-in label (mean electronegativity, eV/atom by convention): the plumbing
    is under test here, not the model's accuracy."""
    hosts = builtin_hosts()
    labels = [-float(s.composition.average_electroneg) for s in hosts.structures]
    return hosts.with_columns(**{TARGET: labels})


def train_magpie_cnn(code, batch):
    builder = PredictorTrainBaseWorkChain.get_builder()
    builder.train.code = code
    builder.train.training_structures = StructureBatchData(batch)
    builder.train.parameters = orm.Dict({"predictor": "magpie-cnn", "targets": [TARGET],
                                         "split": {"fractions": [0.6, 0.2, 0.2], "seed": 0},
                                         "hyperparameters": SMALL_CNN})
    return run_get_node(builder)


def test_capacity_calcfunction_matches_known_values():
    licoo2 = Structure.from_spacegroup("R-3m", Lattice.hexagonal(2.82, 14.05), ["Li", "Co", "O"],
                                       [[0, 0, 0], [0, 0, 0.5], [0, 0, 0.24]])
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    batch = StructureBatch.from_structures([licoo2, nacl], [{"row_id": "licoo2"}, {"row_id": "nacl"}])
    result = capacity(StructureBatchData(batch), orm.Dict({"working_ion": "Li"}))["structures"].get_batch()
    assert result.meta[0]["gravimetric_capacity_mAh_per_g"] == pytest.approx(273.8, abs=0.2)
    expected_volumetric = 273.8 * float(licoo2.density)  # mAh/g × g/cm³ = mAh/cm³ = Ah/L
    assert result.meta[0]["volumetric_capacity_Ah_per_L"] == pytest.approx(expected_volumetric, rel=2e-3)
    assert result.meta[1]["gravimetric_capacity_mAh_per_g"] is None and "no Li" in result.meta[1]["capacity_note"]
    _, node = run_get_node(capacity, structures=StructureBatchData(batch), parameters=orm.Dict({"working_ion": "Xx"}))
    assert node.exit_status == 321


def test_train_predictor_then_screen_in_process_and_by_calcjob(battgen_code, labelled_hosts):
    results, node = train_magpie_cnn(battgen_code, labelled_hosts)
    assert node.is_finished_ok, node.exit_message
    model = results["model"]
    assert (model.kind, model.architecture) == ("predictor", "magpie-cnn")
    metrics = results["output_parameters"]["metrics"]
    assert math.isfinite(metrics[f"test_mae_{TARGET}"])

    candidates = StructureBatchData(labelled_hosts)
    predicted = {}
    for path, max_rows in (("calcfunction", 10_000), ("calcjob", 0)):
        overrides = {"parameters": {"calcfunction_max_rows": max_rows, "predictions": [{"model": "formation_energy"}],
                                    "predicted_hull": None, "capacity": {"working_ion": "Li"},
                                    "thresholds": [{"column": f"predicted_{TARGET}", "max": -1.5},
                                                   {"column": "gravimetric_capacity_mAh_per_g", "min": 100.0}]}}
        builder = PropertyScreenWorkChain.get_builder_from_protocol(
            candidates, {"formation_energy": model}, overrides=overrides, code=battgen_code)
        outputs, screen = run_get_node(builder)
        assert screen.is_finished_ok, screen.exit_message
        rows = outputs["predicted_structures"].get_batch()
        predicted[path] = rows.column(f"predicted_{TARGET}")
        assert all(v is not None for v in predicted[path])
        # the funnel: each threshold keeps exactly the rows that satisfy it and every earlier one
        counts = outputs["funnel"]["counts"]
        expected_first = sum(v <= -1.5 for v in predicted[path])
        expected_both = sum(v <= -1.5 and (c or 0) >= 100.0 for v, c in
                            zip(predicted[path], rows.column("gravimetric_capacity_mAh_per_g")))
        assert list(counts.values()) == [len(rows), expected_first, expected_both]
        assert outputs["passed_structures"].n_rows + outputs["rejected_structures"].n_rows == len(rows)
        labels = {link.link_label for link in screen.base.links.get_outgoing().all()}
        assert (f"predict_formation_energy" in labels) and {"capacity", "threshold_00", "threshold_01"} <= labels
    assert predicted["calcfunction"] == pytest.approx(predicted["calcjob"], abs=1e-5)


def test_property_screen_rejects_unknown_model_labels(battgen_code, labelled_hosts, tmp_path):
    from battgen.models import write_manifest
    from aiida_battgen.data.model import ModelData

    (tmp_path / "weights.bin").write_bytes(b"0")
    write_manifest(tmp_path, "generator", "cdvae", {})
    builder = PropertyScreenWorkChain.get_builder_from_protocol(
        StructureBatchData(labelled_hosts), {"band_gap": ModelData.from_directory(tmp_path)})
    with pytest.raises(ValueError, match="formation_energy"):
        run_get_node(builder)


def test_predicted_energy_above_hull_against_reference_entries():
    """Toy Li-O hull (Li −1.9, O −4.9 eV/atom, Li2O Ef −2.0 eV/atom): a Li2O2 row predicted at Ef = −1.0
    eV/atom sits 0.5 eV/atom above the hull (which is at −1.5 there)."""
    from pymatgen.entries.computed_entries import ComputedEntry

    from aiida_battgen.calculations.functions.predicted_energy_above_hull import predicted_energy_above_hull

    entries = [ComputedEntry("Li", -1.9), ComputedEntry("O2", -9.8), ComputedEntry("Li2O", 2 * -1.9 - 4.9 - 6.0)]
    li2o2 = Structure(Lattice.cubic(4.0), ["Li", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    batch = StructureBatch.from_structures([li2o2], [{"row_id": "li2o2", "predicted_formation_energy_per_atom_eV": -1.0}])
    outputs = predicted_energy_above_hull(StructureBatchData(batch), orm.List([e.as_dict() for e in entries]),
                                          orm.Dict({"compatibility": None, "label": "toy"}))
    row = outputs["structures"].get_batch().meta[0]
    assert row["predicted_e_above_hull_eV_per_atom"] == pytest.approx(0.5)
    assert "hull 'toy'" in row["e_above_hull_source"]
    _, node = run_get_node(predicted_energy_above_hull, structures=StructureBatchData(batch),
                           reference_entries=orm.List([]), parameters=orm.Dict({"compatibility": None}))
    assert node.exit_status == 332


def test_train_and_models_commands(battgen_code, labelled_hosts, tmp_path):
    """`aiida-battgen train predictor ...` trains through the work chain; `aiida-battgen models` lists it;
    a bad structures pk exits non-zero with a message."""
    import yaml
    from click.testing import CliRunner

    from aiida_battgen.cli import cmd_root

    structures = StructureBatchData(labelled_hosts).store()
    config = tmp_path / "hp.yaml"
    config.write_text(yaml.safe_dump({"hyperparameters": SMALL_CNN, "split": {"fractions": [0.6, 0.2, 0.2]}}))
    runner = CliRunner()
    code_label = f"{battgen_code.label}@{battgen_code.computer.label}"
    result = runner.invoke(cmd_root, ["train", "predictor", "magpie-cnn", "--structures", str(structures.pk),
                                      "--target", TARGET, "--config", str(config), "--code", code_label])
    assert result.exit_code == 0, result.output
    assert "trained magpie-cnn" in result.output
    listing = runner.invoke(cmd_root, ["models", "--kind", "predictor"])
    assert listing.exit_code == 0 and "magpie-cnn" in listing.output and "PredictorTrainCalculation" in listing.output
    bad = runner.invoke(cmd_root, ["train", "predictor", "magpie-cnn", "--structures", "999999", "--target", TARGET,
                                   "--code", code_label])
    assert bad.exit_code != 0 and "no StructureBatchData found with ID<999999>" in bad.output
