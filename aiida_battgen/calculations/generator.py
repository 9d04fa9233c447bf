"""CalcJobs of the trained generators (CDVAE, the crystal language model ...):

* ``battgen.generator.train`` runs ``battgen train-generator``: training batch + parameters (generator,
  training filter, split seed, hyper-parameters) in, a ``battgen.model`` node out. Resuming after a kill
  takes the killed run's ``remote_folder`` as ``parent_folder``: its checkpoints are copied (not stored)
  into the new working directory.
* ``battgen.generate`` runs ``battgen generate`` with a model node (and optional seed structures) and
  returns the samples as one structure batch.

Both run wherever the ``battgen`` code is installed (localhost, a GPU node through SLURM ...).
"""

from __future__ import annotations

from typing import Any

from aiida import orm

from aiida_battgen.calculations.base import BattgenCalcJob, validate_parameters_dict
from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.data.model import ModelData

# Mirrors battgen.generate (not imported here: the AiiDA layer stays free of torch).
TRAINING_FILENAME = "training.jsonl.gz"
MODEL_DIRNAME = "model"
RESUME_DIRNAME = "resume"
CHECKPOINT_DIRNAME = "checkpoints"
SEEDS_FILENAME = "seeds.jsonl.gz"
GENERATED_FILENAME = "generated.jsonl.gz"
# How a training run reports that it stopped early but checkpointed (SIGTERM from the scheduler ...).
INTERRUPTED_REASONS = ("sigterm", "interrupted")

TRAIN_PARAMETERS_SCHEMA: dict[str, tuple[type | tuple[type, ...], str]] = {
    "generator": (str, "trainable generator: cdvae or llm (battgen.generators entry point)"),
    "filter": (dict, "training filter: {preset: tmo|none, max_atoms, min_elements, max_elements, ...}"),
    "split": (dict, "{fractions: [train, val, test] (default 0.6/0.2/0.2), seed: int}"),
    "hyperparameters": (dict, "merged over the generator's defaults; unknown keys are rejected"),
    "seed": (int, "random seed of the training run"),
}
GENERATE_PARAMETERS_SCHEMA: dict[str, tuple[type | tuple[type, ...], str]] = {
    "generator": (str, "generator name: cdvae, llm, substitution ..."),
    "n": (int, "number of structures to sample"),
    "conditions": (dict, "generator-specific conditions (targets with units in their names, element constraints, "
                         "sampler settings such as batch_size)"),
    "seed": (int, "random seed of the sampling"),
    "options": (dict, "extra generator constructor options (device ...); the model comes from the `model` input"),
}


def validate_train_parameters(parameters: orm.Dict, _=None) -> str | None:
    values = parameters.get_dict()
    error = validate_parameters_dict(values, TRAIN_PARAMETERS_SCHEMA)
    if error:
        return error
    if "generator" not in values:
        return "parameters need `generator` (cdvae, llm ...)"
    return None


def validate_generate_parameters(parameters: orm.Dict, _=None) -> str | None:
    values = parameters.get_dict()
    error = validate_parameters_dict(values, GENERATE_PARAMETERS_SCHEMA)
    if error:
        return error
    for key in ("generator", "n"):
        if key not in values:
            return f"parameters need `{key}`"
    if values["n"] < 1:
        return f"`n` must be at least 1, got {values['n']}"
    if "model" in values.get("options", {}):
        return "give the model as the `model` input (a battgen.model node), not in `options`"
    return None


def validate_training_structures(structures: StructureBatchData, _=None) -> str | None:
    if structures.n_rows == 0:
        return "the training batch is empty"
    return None


def validate_generate_inputs(inputs, _=None) -> str | None:
    if "model" in inputs and "parameters" in inputs:
        generator = inputs["parameters"].get_dict().get("generator", "")
        architecture = inputs["model"].architecture
        expected = {"cdvae": "cdvae", "llm": "crystal-llm"}.get(generator.removeprefix("battgen."))
        if expected and architecture != expected:
            return f"generator {generator!r} needs a {expected!r} model, got a {architecture!r} model <{inputs['model'].pk}>"
    return None


class GeneratorTrainCalculation(BattgenCalcJob):
    """Train a generator on a structure batch (``battgen train-generator``)."""

    COMMAND = "train-generator"
    OUTPUT_FILES = ()

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.inputs["metadata"]["options"]["parser_name"].default = "battgen.generator.train"
        spec.input("training_structures", valid_type=StructureBatchData, validator=validate_training_structures,
                   help="The structures to train on (filtered and split 60/20/20 by the run).")
        spec.input("parameters", valid_type=orm.Dict, validator=validate_train_parameters,
                   help="; ".join(f"{k}: {d}" for k, (_, d) in TRAIN_PARAMETERS_SCHEMA.items()))
        spec.input("parent_folder", valid_type=orm.RemoteData, required=False,
                   help="Working directory of an interrupted training run: continue from its last checkpoint.")
        spec.output("model", valid_type=ModelData, help="The trained model (weights, manifest, split.json).")
        spec.output("output_parameters", valid_type=orm.Dict,
                    help="Training record (steps, epochs, stop reason, split sizes, data sha256) and validation "
                         "metrics (losses, dimensionless); wall time in s.")
        spec.default_output_node = "output_parameters"
        spec.exit_code(310, "ERROR_MODEL_INVALID", message="The trained model directory is missing or corrupt: {error}")
        spec.exit_code(410, "WARNING_TRAINING_INTERRUPTED",
                       message="Training stopped early ({reason}) after writing a checkpoint; a restart resumes it.")

    def build_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"train": TRAINING_FILENAME, "output": MODEL_DIRNAME}
        config.update(self.inputs.parameters.get_dict())
        if "parent_folder" in self.inputs:
            config["resume_from"] = RESUME_DIRNAME
        return config

    def input_files(self) -> list[tuple[str, str, str]]:
        structures = self.inputs.training_structures
        return [(structures.uuid, structures.FILENAME, TRAINING_FILENAME)]

    def prepare_for_submission(self, folder):
        calcinfo = super().prepare_for_submission(folder)
        # Weights can be large: they pass through a temporary retrieval into the model node only.
        calcinfo.retrieve_temporary_list = [MODEL_DIRNAME]
        if "parent_folder" in self.inputs:
            parent = self.inputs.parent_folder
            folder.get_subfolder(RESUME_DIRNAME, create=True)
            calcinfo.remote_copy_list = [(
                parent.computer.uuid, f"{parent.get_remote_path()}/{MODEL_DIRNAME}/{CHECKPOINT_DIRNAME}",
                f"{RESUME_DIRNAME}/{CHECKPOINT_DIRNAME}",
            )]
        return calcinfo


class GenerateCalculation(BattgenCalcJob):
    """Sample structures from a trained generator (``battgen generate``)."""

    COMMAND = "generate"
    OUTPUT_FILES = (GENERATED_FILENAME,)

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.inputs["metadata"]["options"]["parser_name"].default = "battgen.generate"
        spec.input("model", valid_type=ModelData, required=False,
                   help="The trained generator (needed by cdvae and llm; substitution needs none).")
        spec.input("seed_structures", valid_type=StructureBatchData, required=False,
                   help="Seed structures (substitution hosts, infilling templates).")
        spec.input("parameters", valid_type=orm.Dict, validator=validate_generate_parameters,
                   help="; ".join(f"{k}: {d}" for k, (_, d) in GENERATE_PARAMETERS_SCHEMA.items()))
        spec.inputs.validator = validate_generate_inputs
        spec.output("generated_structures", valid_type=StructureBatchData,
                    help="The samples; each row's `generator` and `model_sha256` say what made it.")
        spec.output("output_parameters", valid_type=orm.Dict,
                    help="Counts (requested, generated, failures by reason), sampling wall time (s) and "
                         "throughput (structures/s).")
        spec.default_output_node = "output_parameters"
        spec.exit_code(311, "ERROR_OUT_OF_MEMORY", message="Sampling ran out of memory: {error}")
        spec.exit_code(312, "ERROR_NOTHING_GENERATED", message="The generator returned no structure.")

    def build_config(self) -> dict[str, Any]:
        parameters = self.inputs.parameters.get_dict()
        config: dict[str, Any] = {
            "generator": parameters["generator"], "n": parameters["n"], "seed": parameters.get("seed", 0),
            "conditions": parameters.get("conditions", {}), "output": GENERATED_FILENAME,
            "options": dict(parameters.get("options", {})),
        }
        if "model" in self.inputs:
            config["options"]["model"] = MODEL_DIRNAME
        if "seed_structures" in self.inputs:
            config["input"] = SEEDS_FILENAME
        return config

    def input_files(self) -> list[tuple[str, str, str]]:
        files = []
        if "model" in self.inputs:
            files.append((self.inputs.model.uuid, "", MODEL_DIRNAME))  # the whole repository tree
        if "seed_structures" in self.inputs:
            seeds = self.inputs.seed_structures
            files.append((seeds.uuid, seeds.FILENAME, SEEDS_FILENAME))
        return files
