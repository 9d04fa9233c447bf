"""The generator CalcJobs and the model node without a trained network: ModelData storage and integrity,
GenerateCalculation driving the real ``battgen generate`` CLI (substitution generator) on localhost and
input validation. Trained-generator runs are in test_trained_generators.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from aiida import orm
from aiida.common.folders import SandboxFolder
from aiida.engine import run_get_node
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from aiida.plugins import CalculationFactory, WorkflowFactory

from aiida_battgen.calculations.generator import GenerateCalculation
from aiida_battgen.calculations.training import GeneratorTrainCalculation
from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.data.model import ModelData
from aiida_battgen.workchains.generator import GenerateBaseWorkChain
from battgen.models import ModelFormatError, write_manifest

pytestmark = pytest.mark.usefixtures("aiida_profile_clean")


@pytest.fixture
def model_dir(tmp_path):
    directory = tmp_path / "model"
    (directory / "checkpoints").mkdir(parents=True)
    (directory / "weights.pt").write_bytes(b"\x00\x01weights")
    (directory / "tokenizer").mkdir()
    (directory / "tokenizer" / "vocab.json").write_text('{"Li": 0}')
    (directory / "checkpoints" / "last.pt").write_bytes(b"optimizer state")
    write_manifest(directory, "generator", "cdvae", {"latent_dim": 8}, {"steps": 3}, {"val_loss": 1.5})
    return directory


def test_model_node_stores_the_model_without_checkpoints(model_dir, tmp_path):
    node = ModelData.from_directory(model_dir).store()
    assert (node.architecture, node.kind) == ("cdvae", "generator")
    assert node.base.attributes.get("hyperparameters") == {"latent_dim": 8}
    assert node.base.attributes.get("metrics") == {"val_loss": 1.5}
    names = node.base.repository.list_object_names()
    assert "checkpoints" not in names and {"weights.pt", "tokenizer", "battgen-model.yaml"} <= set(names)
    exported = node.export_to(tmp_path / "exported")
    assert (exported / "tokenizer" / "vocab.json").read_text() == '{"Li": 0}'
    assert node.verify()


def test_model_node_rejects_a_changed_directory(model_dir):
    (model_dir / "weights.pt").write_bytes(b"tampered")
    with pytest.raises(ModelFormatError, match="weights.pt"):
        ModelData.from_directory(model_dir)


def test_entry_points():
    assert CalculationFactory("battgen.generate") is GenerateCalculation
    assert CalculationFactory("battgen.generator.train") is GeneratorTrainCalculation
    assert WorkflowFactory("battgen.generate_base") is GenerateBaseWorkChain


def test_aiida_generator_layer_does_not_import_torch():
    code = ("import sys, aiida_battgen.calculations.generator, aiida_battgen.parsers.generator, "
            "aiida_battgen.workchains.generator, aiida_battgen.data.model; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(("parameters", "message"), [
    ({"generator": "cdvae"}, r"parameters.n is required"),
    ({"generator": "cdvae", "n": 0}, "at least 1"),
    ({"generator": "cdvae", "n": 5, "options": {"model": "x"}}, "`model` input"),
    ({"generator": "cdvae", "n": 5, "temperature": 1.0}, "unknown parameter"),
    ({"generator": "cdvae", "n": 5, "device": "gpu"}, "`device` must be one of"),
])
def test_generate_parameters_are_validated(battgen_code, parameters, message):
    builder = GenerateCalculation.get_builder()
    builder.code = battgen_code
    with pytest.raises(ValueError, match=message):
        builder.parameters = orm.Dict(parameters)


def test_generate_rejects_a_model_of_the_wrong_architecture(battgen_code, model_dir):
    builder = GenerateCalculation.get_builder()
    builder.code = battgen_code
    builder.model = ModelData.from_directory(model_dir)
    builder.parameters = orm.Dict({"generator": "llm", "n": 3})
    with pytest.raises(ValueError, match="crystal-llm"):
        run_get_node(builder)


def test_generate_copies_the_model_tree_and_writes_the_config(battgen_code, model_dir, small_batch):
    builder = GenerateCalculation.get_builder()
    builder.code = battgen_code
    builder.model = ModelData.from_directory(model_dir).store()
    builder.seed_structures = StructureBatchData(small_batch).store()
    builder.parameters = orm.Dict({"generator": "cdvae", "n": 7, "seed": 3, "conditions": {"batch_size": 4}})
    process = instantiate_process(get_manager().get_runner(), GenerateCalculation, **builder)
    with SandboxFolder() as folder:
        calcinfo = process.prepare_for_submission(folder)
        config = yaml.safe_load(folder.get_content_list() and open(folder.get_abs_path("config.yaml")).read())
    assert config == {"generator": "cdvae", "n": 7, "seed": 3, "conditions": {"batch_size": 4},
                      "output": "generated.jsonl.gz", "options": {"model": "model"}, "input": "seeds.jsonl.gz"}
    assert (builder.model.uuid, "", "model") in calcinfo.local_copy_list
    assert "generated.jsonl.gz" in calcinfo.retrieve_list


@pytest.mark.parametrize("calculation", [GenerateCalculation, GeneratorTrainCalculation])
def test_the_device_setting_reaches_the_config(battgen_code, model_dir, small_batch, calculation):
    builder = calculation.get_builder()
    builder.code = battgen_code
    if calculation is GenerateCalculation:
        builder.model = ModelData.from_directory(model_dir).store()
        builder.parameters = orm.Dict({"generator": "cdvae", "n": 2, "device": "cuda:1"})
    else:
        builder.training_structures = StructureBatchData(small_batch).store()
        builder.parameters = orm.Dict({"generator": "cdvae", "device": "cuda:1"})
    process = instantiate_process(get_manager().get_runner(), calculation, **builder)
    with SandboxFolder() as folder:
        process.prepare_for_submission(folder)
        config = yaml.safe_load(open(folder.get_abs_path("config.yaml")).read())
    assert config["device"] == "cuda:1"
    with pytest.raises(ValueError, match="`device` must be one of"):
        builder.parameters = orm.Dict({**builder.parameters.get_dict(), "device": "gpu0"})


def test_substitution_through_the_generate_calcjob_feeds_screening(battgen_code, small_batch):
    screen_validity = CalculationFactory("battgen.screen_validity")
    builder = GenerateCalculation.get_builder()
    builder.code = battgen_code
    builder.seed_structures = StructureBatchData(small_batch)
    builder.parameters = orm.Dict({"generator": "substitution", "n": 6, "seed": 1,
                                   "conditions": {"threshold": 0.001, "max_per_seed": 3}})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    generated = results["generated_structures"]
    assert 0 < generated.n_rows <= 6
    assert set(generated.get_batch().column("generator")) == {"substitution"}
    assert results["output_parameters"]["n_generated"] == generated.n_rows
    assert results["output_parameters"]["throughput_structures_per_s"] > 0
    screened = screen_validity(structures=generated)
    assert screened["passed"].n_rows + screened["rejected"].n_rows == generated.n_rows



def test_evaluate_generation_calcfunction(small_batch):
    """A generated set identical to the reference: 100 % coverage, zero distances, no novel rows; the
    table and figure are stored beside the metrics."""
    from aiida_battgen.calculations.functions.evaluate_generation import evaluate_generation

    generated = small_batch.with_columns(generator=["substitution"] * len(small_batch))
    node_batch = StructureBatchData(generated)
    outputs = evaluate_generation(node_batch, reference=StructureBatchData(small_batch),
                                  training=StructureBatchData(small_batch), parameters=orm.Dict({"dataset": "mp20"}))
    overall = outputs["metrics"]["overall"]
    assert overall["cov_recall_percent"] == pytest.approx(100.0) and overall["cov_precision_percent"] == pytest.approx(100.0)
    assert overall["novel_percent"] == pytest.approx(0.0)
    assert overall["wdist_density_g_per_cm3"] == pytest.approx(0.0, abs=1e-12)
    assert "substitution" in outputs["table"].get_content()
    assert outputs["figure"].filename.endswith(".png")
    _, node = run_get_node(evaluate_generation, generated=node_batch, parameters=orm.Dict({"no_such_key": 1}))
    assert node.exit_status == 321


@pytest.mark.parametrize(("process_type", "error", "expected"), [
    ("aiida.calculations:battgen.generate", "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB", 311),
    ("aiida.calculations:battgen.predict", "MemoryError: ", 311),
    ("aiida.calculations:battgen.generate", "ValueError: bad lattice", None),
    ("aiida.calculations:battgen.mlip.relax", "out of memory with one structure (mp-1, 96 atoms) in flight", 311),
    ("aiida.calculations:battgen.channels", "RuntimeError: CUDA out of memory", None),  # no OOM exit code
])
def test_out_of_memory_is_recognised_where_a_restart_can_use_it(process_type, error, expected):
    from aiida.plugins import ParserFactory

    node = orm.CalcJobNode()
    node.set_process_type(process_type)
    parser = ParserFactory(process_type.split(":")[1])(node)
    exit_code = parser.classify_failure({"error": error})
    assert (exit_code.status if exit_code else None) == expected
