"""``battgen.predict_properties``: the in-process path of ``battgen.predict`` for small batches.

Runs the predictor inside the AiiDA process (no CalcJob, no scheduler) — worth it for tens of rows, where
submitting a job costs more than predicting. The predictor (and torch) is imported only when the function
runs, so importing the AiiDA layer stays torch-free. Large batches go through PredictCalculation.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from aiida_battgen.calculations.predict import PREDICTOR_ARCHITECTURES, predictor_for_architecture
from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.data.model import ModelData

EXIT_EMPTY_BATCH = 320
EXIT_INVALID_PARAMETERS = 321
EXIT_PREDICTION_FAILED = 330


@calcfunction
def predict_properties(structures: StructureBatchData, model: ModelData, parameters: orm.Dict | None = None):
    """Add ``predicted_<target>`` columns (units in the target names) and ``predicted_by`` to every row.

    :param structures: the rows to predict for.
    :param model: a trained predictor (``battgen.model`` of kind ``predictor``).
    :param parameters: optional ``{predictor: name, options: {device, batch_size}}``.
    """
    from battgen.models import ModelFormatError
    from battgen.predictors.base import UnknownPredictorError, load_predictor

    settings = parameters.get_dict() if parameters is not None else {}
    unknown = sorted(set(settings) - {"predictor", "options"})
    if unknown:
        return ExitCode(EXIT_INVALID_PARAMETERS, f"unknown parameter(s) {unknown}; allowed: predictor, options")
    if structures.n_rows == 0:
        return ExitCode(EXIT_EMPTY_BATCH, "ERROR_EMPTY_BATCH: the input batch `structures` has no rows")
    if model.kind != "predictor":
        return ExitCode(EXIT_INVALID_PARAMETERS, f"model <{model.pk}> is a {model.kind!r} model, not a predictor")
    name = settings.get("predictor") or predictor_for_architecture(model.architecture)
    if name is None or PREDICTOR_ARCHITECTURES.get(name.removeprefix("battgen.")) not in (None, model.architecture):
        return ExitCode(EXIT_INVALID_PARAMETERS, f"predictor {name!r} cannot load a {model.architecture!r} model")
    with tempfile.TemporaryDirectory() as scratch:
        try:
            model_dir = model.export_to(Path(scratch) / "model")
            predictor = load_predictor(name, model_dir, **settings.get("options", {}))
            annotated = predictor.annotate(structures.get_batch())
        except (ModelFormatError, UnknownPredictorError, ValueError) as exc:
            return ExitCode(EXIT_PREDICTION_FAILED, f"prediction failed: {exc}")
    return {"structures": StructureBatchData(annotated)}
