"""``battgen.predict``: run ``battgen predict`` with a trained predictor node on a structure batch; the rows
come back with ``predicted_<target>`` columns (units in the target names) and ``predicted_by``."""

from __future__ import annotations

from typing import Any

from aiida import orm

from aiida_battgen.calculations.base import BattgenCalcJob, settings_validator
from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.data.model import ModelData

from battgen.contracts.predict import (INPUT_FILENAME, MODEL_DIRNAME, PREDICTED_FILENAME,  # noqa: F401
                                      PREDICTOR_ARCHITECTURES, PredictSettings, predictor_for_architecture)

# What the job writes itself (the predictor defaults from the model's architecture in validate_predict_inputs).
_JOB_VALUES = {"model": MODEL_DIRNAME, "input": INPUT_FILENAME, "predictor": "from-the-model"}


validate_predict_parameters = settings_validator(PredictSettings, job_values=_JOB_VALUES)


def validate_predict_inputs(inputs, _=None) -> str | None:
    model = inputs.get("model")
    if model is None:
        return None
    if model.kind != "predictor":
        return f"model <{model.pk}> is a {model.kind!r} model, not a predictor"
    parameters = inputs["parameters"].get_dict() if "parameters" in inputs else {}
    name = parameters.get("predictor") or predictor_for_architecture(model.architecture)
    if name is None:
        return f"no predictor known for architecture {model.architecture!r}; set parameters.predictor"
    expected = PREDICTOR_ARCHITECTURES.get(name.removeprefix("battgen."))
    if expected and expected != model.architecture:
        return f"predictor {name!r} needs a {expected!r} model, got {model.architecture!r} <{model.pk}>"
    if inputs["structures"].n_rows == 0:
        return "the input batch `structures` is empty"
    return None


class PredictCalculation(BattgenCalcJob):
    """Predict properties for every row of a batch with a trained model (CPU or GPU, batched)."""

    COMMAND = "predict"
    OUTPUT_FILES = (PREDICTED_FILENAME,)

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.inputs["metadata"]["options"]["parser_name"].default = "battgen.predict"
        spec.input("structures", valid_type=StructureBatchData, help="The rows to predict for.")
        spec.input("model", valid_type=ModelData, help="A trained predictor (kind 'predictor').")
        spec.input("parameters", valid_type=orm.Dict, required=False, validator=validate_predict_parameters,
                   help="`battgen predict` settings: " + PredictSettings.help())
        spec.inputs.validator = validate_predict_inputs
        spec.output("predicted_structures", valid_type=StructureBatchData,
                    help="The input rows with predicted_<target> columns (units in the names) and predicted_by.")
        spec.output("output_parameters", valid_type=orm.Dict,
                    help="Model identity, targets, rows not predicted per target, wall time (s), throughput "
                         "(structures/s).")
        spec.default_output_node = "output_parameters"
        spec.exit_code(311, "ERROR_OUT_OF_MEMORY", message="Prediction ran out of memory: {error}")

    def build_config(self) -> dict[str, Any]:
        parameters = self.inputs.parameters.get_dict() if "parameters" in self.inputs else {}
        name = parameters.get("predictor") or predictor_for_architecture(self.inputs.model.architecture)
        config = {"predictor": name, "model": MODEL_DIRNAME, "input": INPUT_FILENAME, "output": PREDICTED_FILENAME,
                  "options": dict(parameters.get("options", {}))}
        if "device" in parameters:
            config["device"] = parameters["device"]
        return config

    def input_files(self) -> list[tuple[str, str, str]]:
        structures = self.inputs.structures
        return [(self.inputs.model.uuid, "", MODEL_DIRNAME), (structures.uuid, structures.FILENAME, INPUT_FILENAME)]
