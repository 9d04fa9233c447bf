"""``battgen.property_screen``: predict properties of a batch and cut it with thresholds (seed 000 §2.4:
Ef ≤ −1.5 eV/atom, Eg ≤ 0.5 eV, E_hull ≤ 0.08 eV/atom; seed 002: V > 3.0 V, > 800 Ah/L).

Steps, each a node in the graph:

1. ``predict_<label>`` for each entry of ``parameters.predictions`` (in order, so columns accumulate):
   a ``predict_properties`` calcfunction for batches up to ``calcfunction_max_rows`` rows, else a
   PredictBaseWorkChain (a CalcJob: any computer, GPU, batched, restarts on out-of-memory);
2. ``capacity`` (optional): gravimetric (mAh/g) and volumetric (Ah/L) capacity for a working ion;
3. ``predicted_hull`` (optional, with ``hull_reference_entries``): E_hull against the MP-referenced hull
   from the predicted formation energy — never a hull from another database;
4. one ``threshold_<i>`` selection per threshold, in order, so the funnel shows what each cut removed.

Outputs: ``predicted_structures`` (every row with every predicted column — the data for property
distributions), ``passed_structures``, ``rejected_structures`` and ``funnel``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, while_
from aiida.plugins import CalculationFactory, DataFactory, WorkflowFactory

from aiida_battgen.workchains.protocols.utils import ProtocolMixin

StructureBatchData = DataFactory("battgen.structure_batch")
ModelData = DataFactory("battgen.model")
PredictBaseWorkChain = WorkflowFactory("battgen.predict_base")

DEFAULT_CALCFUNCTION_MAX_ROWS = 200  # below this many rows, predicting in-process beats submitting a job
_PARAMETER_KEYS = {"predictions", "capacity", "predicted_hull", "thresholds", "calcfunction_max_rows"}


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def validate_parameters(parameters: dict[str, Any], models: dict[str, Any]) -> str | None:
    unknown = sorted(set(parameters) - _PARAMETER_KEYS)
    if unknown:
        return f"unknown property-screen key(s) {unknown}; allowed: {sorted(_PARAMETER_KEYS)}"
    for entry in parameters.get("predictions", []):
        if not isinstance(entry, dict) or "model" not in entry:
            return f"each prediction needs `model` (a label of the `models` namespace), got {entry!r}"
        if entry["model"] not in models:
            return f"prediction model {entry['model']!r} is not in the `models` namespace ({sorted(models)})"
        if models[entry["model"]].kind != "predictor":
            return f"model {entry['model']!r} is a {models[entry['model']].kind!r} model, not a predictor"
    for threshold in parameters.get("thresholds", []):
        if not isinstance(threshold, dict) or "column" not in threshold or not ({"max", "min"} & set(threshold)):
            return f"each threshold needs `column` and `max` and/or `min` (in the column's unit), got {threshold!r}"
        bounds = [threshold[k] for k in ("max", "min") if k in threshold]
        if not all(isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) for b in bounds):
            return f"threshold bounds must be finite numbers in the column's unit, got {threshold!r}"
    if parameters.get("predicted_hull") and "column" not in parameters["predicted_hull"]:
        return "`predicted_hull` needs `column` (the predicted formation-energy column, eV/atom)"
    return None


def validate_inputs(inputs, _):
    error = validate_parameters(inputs["parameters"].get_dict(), inputs.get("models", {}))
    if error:
        return error
    if inputs["parameters"].get_dict().get("predicted_hull") and "hull_reference_entries" not in inputs:
        return "`predicted_hull` needs the `hull_reference_entries` input (an MP snapshot or entries JSON)"
    return None


class PropertyScreenWorkChain(ProtocolMixin, WorkChain):
    """Predict with trained models, add capacities / E_hull, and filter by thresholds with a funnel."""

    _protocol_file = "property_screen.yaml"

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("structures", valid_type=StructureBatchData, help="The candidates to screen.")
        spec.input_namespace("models", valid_type=ModelData, dynamic=True,
                             help="Trained predictors by label (referred to by parameters.predictions[].model).")
        spec.input("parameters", valid_type=orm.Dict,
                   help="predictions: [{model, predictor?, options?}]; capacity: {working_ion, fraction}; "
                        "predicted_hull: {column}; thresholds: [{column, max?, min?}] in the column's unit; "
                        "calcfunction_max_rows.")
        spec.input("hull_reference_entries", valid_type=orm.SinglefileData, required=False,
                   help="Reference entries (MP-referenced, MP2020-corrected) for E_hull from predicted Ef.")
        spec.expose_inputs(PredictBaseWorkChain, namespace="predict",
                           exclude=("predict.structures", "predict.model", "predict.parameters"),
                           namespace_options={"required": False, "populate_defaults": False,
                                              "help": "Where large batches are predicted (code, options)."})
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.setup,
            while_(cls.has_more_predictions)(cls.predict_next, cls.collect_prediction),
            cls.add_derived_columns,
            cls.apply_thresholds,
            cls.results,
        )
        spec.output("predicted_structures", valid_type=StructureBatchData,
                    help="All rows with predicted_<target> columns (units in the names), capacities and E_hull.")
        spec.output("passed_structures", valid_type=StructureBatchData, help="Rows that passed every threshold.")
        spec.output("rejected_structures", valid_type=StructureBatchData,
                    help="Rows that failed a threshold, with reject_reason.")
        spec.output("funnel", valid_type=orm.Dict, help="Rows left after each threshold (number of structures).")
        spec.exit_code(520, "ERROR_PREDICTION_FAILED", message="Prediction with model `{model}` failed.")
        spec.exit_code(521, "ERROR_CAPACITY_FAILED", message="The capacity step failed.")
        spec.exit_code(522, "ERROR_HULL_FAILED", message="The predicted-E_hull step failed.")
        spec.exit_code(523, "ERROR_THRESHOLD_FAILED", message="Threshold step `{step}` failed.")

    @classmethod
    def get_builder_from_protocol(cls, structures, models: dict, protocol=None, overrides=None,
                                  hull_reference_entries=None, code=None, options=None):
        """A filled builder: ``models`` maps labels used by the protocol (formation_energy, band_gap,
        voltage ...) to trained ``battgen.model`` nodes."""
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        builder.structures = structures
        builder.models = models
        builder.parameters = orm.Dict(inputs["parameters"])
        if hull_reference_entries is not None:
            builder.hull_reference_entries = hull_reference_entries
        if code is not None:
            builder.predict.predict.code = code
        if options:
            builder.predict.predict.metadata.options = options
        return builder

    # ------------------------------------------------------------------------------------------------
    def setup(self):
        self.ctx.parameters = self.inputs.parameters.get_dict()
        self.ctx.pending = list(range(len(self.ctx.parameters.get("predictions", []))))
        self.ctx.current = self.inputs.structures

    def has_more_predictions(self):
        return bool(self.ctx.pending)

    def predict_next(self):
        index = self.ctx.pending[0]
        entry = self.ctx.parameters["predictions"][index]
        self.ctx.prediction_label = f"predict_{_label(entry['model'])}"
        settings = {key: entry[key] for key in ("predictor", "options") if key in entry}
        model = self.inputs.models[entry["model"]]
        max_rows = self.ctx.parameters.get("calcfunction_max_rows", DEFAULT_CALCFUNCTION_MAX_ROWS)
        if self.ctx.current.n_rows <= max_rows:
            function = CalculationFactory("battgen.predict_properties")
            kwargs = {"structures": self.ctx.current, "model": model}
            if settings:
                kwargs["parameters"] = orm.Dict(settings)
            outputs, node = function.run_get_node(**kwargs, metadata={"call_link_label": self.ctx.prediction_label})
            self.ctx.prediction = node
            return None
        inputs = AttributeDict(self.exposed_inputs(PredictBaseWorkChain, namespace="predict")
                               if "predict" in self.inputs else {})
        inputs.predict = AttributeDict(inputs.get("predict", {}))
        inputs.predict.structures = self.ctx.current
        inputs.predict.model = model
        if settings:
            inputs.predict.parameters = orm.Dict(settings)
        inputs.metadata = {"call_link_label": self.ctx.prediction_label}
        future = self.submit(PredictBaseWorkChain, **inputs)
        self.report(f"launched PredictBaseWorkChain<{future.pk}> for {self.ctx.current.n_rows} rows")
        return ToContext(prediction=future)

    def collect_prediction(self):
        node = self.ctx.prediction
        entry = self.ctx.parameters["predictions"][self.ctx.pending.pop(0)]
        if not node.is_finished_ok:
            self.report(f"{self.ctx.prediction_label}<{node.pk}> failed: {node.exit_message}")
            return self.exit_codes.ERROR_PREDICTION_FAILED.format(model=entry["model"])
        outputs = node.outputs
        self.ctx.current = outputs.structures if "structures" in outputs else outputs.predicted_structures

    def add_derived_columns(self):
        capacity = self.ctx.parameters.get("capacity")
        if capacity:
            function = CalculationFactory("battgen.capacity")
            outputs, node = function.run_get_node(structures=self.ctx.current, parameters=orm.Dict(capacity),
                                                  metadata={"call_link_label": "capacity"})
            if not node.is_finished_ok:
                self.report(f"capacity<{node.pk}> failed: {node.exit_message}")
                return self.exit_codes.ERROR_CAPACITY_FAILED
            self.ctx.current = outputs["structures"]
        hull = self.ctx.parameters.get("predicted_hull")
        if hull:
            function = CalculationFactory("battgen.predicted_energy_above_hull")
            outputs, node = function.run_get_node(structures=self.ctx.current, parameters=orm.Dict(hull),
                                                  reference_entries=self.inputs.hull_reference_entries,
                                                  metadata={"call_link_label": "predicted_hull"})
            if not node.is_finished_ok:
                self.report(f"predicted_hull<{node.pk}> failed: {node.exit_message}")
                return self.exit_codes.ERROR_HULL_FAILED
            self.ctx.current = outputs["structures"]
        self.out("predicted_structures", self.ctx.current)

    def apply_thresholds(self):
        shortlist = CalculationFactory("battgen.shortlist")
        merge_batches = CalculationFactory("battgen.merge_batches")
        stages = {"predicted": self.ctx.current}
        rejected = {}
        for index, threshold in enumerate(self.ctx.parameters.get("thresholds", [])):
            selection = {}
            if "max" in threshold:
                selection["max_values"] = {threshold["column"]: threshold["max"]}
            if "min" in threshold:
                selection["min_values"] = {threshold["column"]: threshold["min"]}
            label = f"threshold_{index:02d}"
            outputs, node = shortlist.run_get_node(structures=self.ctx.current, parameters=orm.Dict(selection),
                                                   metadata={"call_link_label": label})
            if not node.is_finished_ok:
                self.report(f"{label}<{node.pk}> failed: {node.exit_message}")
                return self.exit_codes.ERROR_THRESHOLD_FAILED.format(step=label)
            self.ctx.current = outputs["selected"]
            rejected[label] = outputs["rejected"]
            bound = " and ".join(f"{'<=' if k == 'max' else '>='} {threshold[k]}" for k in ("max", "min") if k in threshold)
            stages[f"{threshold['column']} {bound}"] = self.ctx.current
        self.ctx.funnel_stages = stages
        if rejected:
            merged, _ = merge_batches.run_get_node(**rejected, metadata={"call_link_label": "merge_rejected"})
            self.out("rejected_structures", merged["structures"])
        else:
            self.out("rejected_structures", self._empty_batch())
        self.out("passed_structures", self.ctx.current)

    def _empty_batch(self):
        """An empty rejected batch when there are no thresholds (made by a calcfunction for provenance)."""
        shortlist = CalculationFactory("battgen.shortlist")
        outputs, _ = shortlist.run_get_node(structures=self.ctx.current, parameters=orm.Dict({}),
                                            metadata={"call_link_label": "no_thresholds"})
        return outputs["rejected"]

    def results(self):
        count_rows = CalculationFactory("battgen.count_rows")
        names = list(self.ctx.funnel_stages)
        batches = {f"stage_{i:02d}": self.ctx.funnel_stages[name] for i, name in enumerate(names)}
        funnel, _ = count_rows.run_get_node(stage_names=orm.List(names), **batches,
                                            metadata={"call_link_label": "funnel"})
        self.out("funnel", funnel)
        self.report("property screen: " + ", ".join(f"{k}: {v}" for k, v in funnel["counts"].items()))
