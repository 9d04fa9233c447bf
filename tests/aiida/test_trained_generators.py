"""Trained generators through AiiDA with the real CLI on localhost and a tiny CDVAE: training work chain
-> model node -> sampling work chain -> screening; resuming from a killed run's checkpoints; the
out-of-memory restart; and DiscoveryWorkChain running substitution and CDVAE side by side."""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory

from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.data.model import ModelData
from aiida_battgen.workchains.generator import GenerateBaseWorkChain
from aiida_battgen.workchains.training import GeneratorTrainBaseWorkChain
from battgen.sources.builtin_hosts import builtin_hosts

pytestmark = pytest.mark.usefixtures("aiida_profile_clean")

TINY_STEPS = 12


@pytest.fixture(scope="module")
def training_batch():
    """Small real cells (built-in hosts of at most 8 atoms), enough for a tiny CDVAE to run."""
    hosts = builtin_hosts()
    return hosts.select(lambda meta, structure: len(structure) <= 8)


def tiny_cdvae_parameters(max_steps: int = TINY_STEPS) -> dict:
    from battgen.generate.cdvae.presets import preset_hyperparameters

    return {
        "generator": "cdvae",
        "filter": {"preset": "none"},
        "split": {"seed": 0},
        "seed": 0,
        "hyperparameters": preset_hyperparameters("tiny", max_steps=max_steps, checkpoint_every_steps=4),
    }


def train(code, batch, parameters, **extra):
    builder = GeneratorTrainBaseWorkChain.get_builder()
    builder.train.code = code
    builder.train.training_structures = StructureBatchData(batch)
    builder.train.parameters = orm.Dict(parameters)
    for key, value in extra.items():
        builder.train[key] = value
    return run_get_node(builder)


def test_train_then_generate_then_screen(battgen_code, training_batch):
    results, node = train(battgen_code, training_batch, tiny_cdvae_parameters())
    assert node.is_finished_ok, node.exit_message
    model = results["model"]
    assert isinstance(model, ModelData) and model.architecture == "cdvae" and model.verify()
    training = results["output_parameters"]["training"]
    assert training["steps"] == TINY_STEPS and training["split_seed"] == 0
    assert "checkpoints" not in model.base.repository.list_object_names()
    # provenance: the training batch is an input of the calculation that created the model
    creator = model.creator
    assert creator.inputs.training_structures.base.attributes.get("content_sha256") == \
        StructureBatchData(training_batch).base.attributes.get("content_sha256")

    builder = GenerateBaseWorkChain.get_builder()
    builder.generate.code = battgen_code
    builder.generate.model = model
    builder.generate.parameters = orm.Dict({"generator": "cdvae", "n": 5, "seed": 1})
    generated, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    batch = generated["generated_structures"].get_batch()
    assert len(batch) == 5
    assert set(batch.column("generator")) == {"cdvae"}
    assert set(batch.column("model_sha256")) == {model.content_sha256}
    screened = CalculationFactory("battgen.screen_validity")(structures=generated["generated_structures"])
    assert screened["passed"].n_rows + screened["rejected"].n_rows == 5


def test_interrupted_training_resumes_from_the_checkpoint(battgen_code, training_batch, monkeypatch):
    """The first run is reported as killed (SIGTERM after a checkpoint): the work chain resubmits with its
    remote folder, and the second run continues the step count from the copied checkpoint."""
    from aiida_battgen.parsers import training as parsers

    original = parsers.ModelTrainParser.parse_outputs
    seen = []

    def interrupted_once(self, summary):
        seen.append(summary["outputs"]["training"])
        exit_code = original(self, summary)
        if len(seen) == 1:
            return self.exit_codes.WARNING_TRAINING_INTERRUPTED.format(reason="sigterm (injected)")
        return exit_code

    monkeypatch.setattr(parsers.ModelTrainParser, "parse_outputs", interrupted_once)
    parameters = tiny_cdvae_parameters(max_steps=8)
    results, node = train(battgen_code, training_batch, parameters)
    assert node.is_finished_ok, node.exit_message
    calculations = sorted(node.called, key=lambda n: n.ctime)
    assert len(calculations) == 2
    assert "parent_folder" in calculations[1].inputs
    assert calculations[1].inputs.parent_folder.uuid == calculations[0].outputs.remote_folder.uuid
    # the resumed run starts at the first run's final checkpoint (step 8) and stops at max_steps at once
    assert seen[1]["resumed_from_step"] == 8


@pytest.fixture(scope="module")
def tiny_cdvae_model_dir(training_batch, tmp_path_factory):
    """A tiny CDVAE trained in-process (no CalcJob) for tests that only need some model."""
    from battgen.generate.training import run_train_generator_command

    workdir = tmp_path_factory.mktemp("tiny_cdvae")
    training_batch.write(workdir / "train.jsonl.gz")
    run_train_generator_command({**tiny_cdvae_parameters(max_steps=4), "train": "train.jsonl.gz"}, workdir)
    return workdir / "model"


def test_generate_halves_the_batch_after_out_of_memory(battgen_code, tiny_cdvae_model_dir, monkeypatch):
    from aiida_battgen.parsers import generator as parsers

    model = ModelData.from_directory(tiny_cdvae_model_dir)
    calls = []
    original = parsers.GenerateParser.parse_outputs

    def out_of_memory_once(self, summary):
        calls.append(self.node.inputs.parameters.get_dict()["conditions"].get("batch_size"))
        if len(calls) == 1:
            return self.exit_codes.ERROR_OUT_OF_MEMORY.format(error="CUDA out of memory (injected)")
        return original(self, summary)

    monkeypatch.setattr(parsers.GenerateParser, "parse_outputs", out_of_memory_once)
    builder = GenerateBaseWorkChain.get_builder()
    builder.generate.code = battgen_code
    builder.generate.model = model
    builder.generate.parameters = orm.Dict({"generator": "cdvae", "n": 3, "conditions": {"batch_size": 8}})
    _, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    assert calls == [8, 4]


@pytest.mark.slow
def test_discovery_runs_substitution_and_cdvae_side_by_side(aiida_profile, battgen_code, tiny_cdvae_model_dir):
    from aiida_battgen.tools.demo import build_demo_inputs
    from aiida_battgen.tools.lineage import candidate_lineage

    overrides = {
        "generation": {"n": 8, "conditions": {"max_per_seed": 4},
                       "additional_generators": [{"generator": "cdvae", "n": 6, "conditions": {}}]},
        "preselection": {"sort_by": None, "top_k": 3},
        "relax": {"relax": {"parameters": {"max_steps": 20, "fmax": 0.3}}},
        "shortlist": {"top_k": 3, "max_values": {"e_above_hull_eV_per_atom": 50.0}},
    }
    builder = build_demo_inputs(battgen_code, "fast", overrides=overrides, host_names=["LiCoO2", "Li2O"])
    builder.generator_models = {"cdvae": ModelData.from_directory(tiny_cdvae_model_dir)}
    _, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    by_generator = node.outputs.funnel["by_generator"]["generated"]
    assert by_generator.get("cdvae") == 6 and by_generator.get("substitution", 0) >= 1
    generated = node.outputs.generated_structures.get_batch()
    assert set(generated.column("generator")) == {"substitution", "cdvae"}
    labels = {link.link_label for link in node.base.links.get_outgoing().all()}
    assert {"generate_substitution", "generate_cdvae", "merge_generated"} <= labels
    for structure in node.outputs.candidates.values():
        lineage = candidate_lineage(structure)
        assert lineage.missing_steps() == [], lineage.as_text()
        assert {"merge_generated"} & {step.call_link_label for step in lineage.steps}, lineage.as_text()


def test_discovery_rejects_a_trained_generator_without_its_model(battgen_code):
    from aiida_battgen.tools.demo import build_demo_inputs

    overrides = {"generation": {"additional_generators": [{"generator": "cdvae", "n": 6}]},
                 "preselection": {"sort_by": None}}
    with pytest.raises(ValueError, match="generator_models.cdvae"):
        run_get_node(build_demo_inputs(battgen_code, "fast", overrides=overrides, host_names=["Li2O"]))


def test_discovery_rejects_substitution_ranking_with_other_generators(battgen_code, tiny_cdvae_model_dir):
    from aiida_battgen.tools.demo import build_demo_inputs

    overrides = {"generation": {"additional_generators": [{"generator": "cdvae", "n": 6}]}}
    builder = build_demo_inputs(battgen_code, "fast", overrides=overrides, host_names=["Li2O"])
    builder.generator_models = {"cdvae": ModelData.from_directory(tiny_cdvae_model_dir)}
    with pytest.raises(ValueError, match="substitution_probability"):
        run_get_node(builder)
