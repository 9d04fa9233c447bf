"""``battgen.evaluate_generation``: generation metrics (CDVAE's definitions) of a generated batch, per
generator and overall, with the table and the property-distribution figure stored next to them."""

from __future__ import annotations

import tempfile
from pathlib import Path

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from aiida_battgen.data.batch import StructureBatchData


@calcfunction
def evaluate_generation(
    generated: StructureBatchData,
    reference: StructureBatchData | None = None,
    training: StructureBatchData | None = None,
    parameters: orm.Dict | None = None,
):
    """Validity, uniqueness, novelty, COV-R / COV-P, property-distribution distances, S.U.N. rate and
    target agreement (:func:`battgen.evaluate.metrics.evaluate_generation`).

    :param generated: rows to score (their ``generator`` column groups them).
    :param reference: the test set (coverage and distances; none -> those metrics are None).
    :param training: the training set (novelty).
    :param parameters: ``battgen.evaluate.metrics.EvaluationSettings`` keys (dataset, max_samples, seed,
        property_column, e_hull_column, thresholds in eV/atom ...).
    Outputs ``metrics`` (Dict, percentages and distances with units in the keys), ``table`` (CSV) and
    ``figure`` (PNG of the property distributions, when there is anything to draw).
    """
    from battgen.evaluate.metrics import EvaluationSettings, evaluate_generation as evaluate, write_outputs

    try:
        settings = EvaluationSettings.from_dict(parameters.get_dict() if parameters is not None else {})
    except (TypeError, ValueError) as exc:
        return ExitCode(321, f"invalid evaluation parameters: {exc}")
    if generated.n_rows == 0:
        return ExitCode(320, "ERROR_EMPTY_BATCH: the input batch `generated` has no rows")
    metrics = evaluate(
        generated.get_batch(),
        reference.get_batch() if reference is not None else None,
        training.get_batch() if training is not None else None,
        settings,
    )
    outputs = {"metrics": orm.Dict(metrics.as_dict())}
    with tempfile.TemporaryDirectory() as scratch:
        files = write_outputs(metrics, Path(scratch))
        outputs["table"] = orm.SinglefileData(Path(scratch) / files["table"])
        if "figure" in files:
            outputs["figure"] = orm.SinglefileData(Path(scratch) / files["figure"])
    return outputs
