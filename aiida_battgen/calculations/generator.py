"""``battgen.generate``: run ``battgen generate`` with a model node (CDVAE, the crystal language model;
none for substitution) and optional seed structures; the samples come back as one structure batch.
Training is in :mod:`aiida_battgen.calculations.training`. Runs wherever the ``battgen`` code is
installed (localhost, a GPU node through SLURM ...).
"""

from __future__ import annotations

from typing import Any

from aiida import orm

from aiida_battgen.calculations.base import BattgenCalcJob
from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.data.model import ModelData
from battgen.contracts.generate import (GENERATED_FILENAME, GENERATOR_ARCHITECTURES, MODEL_DIRNAME,  # noqa: F401
                                       SEEDS_FILENAME, GenerateSettings)


def validate_generate_parameters(parameters: orm.Dict, _=None) -> str | None:
    """The settings model of ``battgen generate`` at submit time (a job samples at least one structure)."""
    values = parameters.get_dict()
    error = GenerateSettings.parameters_error(values)
    if error:
        return error
    if values["n"] < 1:
        return f"parameters.n must be at least 1, got {values['n']}"
    if "model" in values.get("options", {}):
        return "give the model as the `model` input (a battgen.model node), not in `options`"
    return None


def validate_generate_inputs(inputs, _=None) -> str | None:
    if "model" in inputs and "parameters" in inputs:
        generator = inputs["parameters"].get_dict().get("generator", "")
        architecture = inputs["model"].architecture
        expected = GENERATOR_ARCHITECTURES.get(generator.removeprefix("battgen."))
        if expected and architecture != expected:
            return f"generator {generator!r} needs a {expected!r} model, got a {architecture!r} model <{inputs['model'].pk}>"
    return None


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
                   help="`battgen generate` settings: " + GenerateSettings.help())
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
        if "device" in parameters:
            config["device"] = parameters["device"]
        return config

    def input_files(self) -> list[tuple[str, str, str]]:
        files = []
        if "model" in self.inputs:
            files.append((self.inputs.model.uuid, "", MODEL_DIRNAME))  # the whole repository tree
        if "seed_structures" in self.inputs:
            seeds = self.inputs.seed_structures
            files.append((seeds.uuid, seeds.FILENAME, SEEDS_FILENAME))
        return files
