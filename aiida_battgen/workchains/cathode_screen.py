"""``battgen.mg_cathode_screen`` (MgCathodeScreeningWorkChain): seed 002 end to end, for any working ion.

candidates (MP query / file batch) ─► ``prefilter`` (E_hull below the protocol's bound)
  ─► ``property_screen`` (PropertyScreenWorkChain: working-ion-pooled CGCNN voltage, capacity, thresholds
     V > 3.0 V and > 800 Ah/L) ─► ``rank_for_md`` (top k by predicted voltage)
  ─► one ConductivityWorkChain per candidate (``md_<row>``: supercell ≥ N atoms, 1/5 of the ions removed,
     NPT then NVT at 1200 K by default, D and σ) ─► ``attach_conductivity`` ─► ``conductive`` (σ above the
     threshold, seed: 100 mS/cm) ─► ``funnel`` and ``figure`` (seed Fig. 6a).
"""

from __future__ import annotations

import math
import re

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, if_
from aiida.plugins import CalculationFactory, DataFactory, WorkflowFactory

from aiida_battgen.workchains.protocols.utils import ProtocolMixin

StructureBatchData = DataFactory("battgen.structure_batch")
ModelData = DataFactory("battgen.model")
PropertyScreenWorkChain = WorkflowFactory("battgen.property_screen")
ConductivityWorkChain = WorkflowFactory("battgen.conductivity")

_KEYS = {"working_ion", "max_e_above_hull_eV_per_atom", "min_voltage_V", "min_volumetric_capacity_Ah_per_L",
         "max_md_candidates", "temperatures_K", "min_conductivity_mS_per_cm", "md", "analysis",
         "calcfunction_max_rows"}


def validate_parameters(parameters: orm.Dict, _=None) -> str | None:
    values = parameters.get_dict()
    unknown = sorted(set(values) - _KEYS)
    if unknown:
        return f"unknown cathode-screen key(s) {unknown}; allowed: {sorted(_KEYS)}"
    if not isinstance(values.get("working_ion"), str):
        return "`working_ion` (an element symbol) is required"
    top_k = values.get("max_md_candidates")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        return f"`max_md_candidates` must be a non-negative integer, got {top_k!r}"
    # Cuts in their key's unit; a negative bound or a string would only fail (or pass everything) later.
    for key in ("max_e_above_hull_eV_per_atom", "min_volumetric_capacity_Ah_per_L", "min_conductivity_mS_per_cm"):
        value = values.get(key)
        if value is not None and (not _is_number(value) or value < 0):
            return f"`{key}` must be a non-negative number (or null), got {value!r}"
    if values.get("min_voltage_V") is not None and not _is_number(values["min_voltage_V"]):
        return f"`min_voltage_V` must be a number in V, got {values['min_voltage_V']!r}"
    temperatures = values.get("temperatures_K")
    if temperatures is not None and (not isinstance(temperatures, list) or not temperatures or not all(
            _is_number(t) and 0 < t <= 10_000 for t in temperatures)):
        return f"`temperatures_K` must be a non-empty list of temperatures in (0, 10000] K, got {temperatures!r}"
    return None


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate_inputs(inputs, _=None) -> str | None:
    model = inputs["voltage_model"]
    if model.architecture != "voltage-cgcnn":
        return f"`voltage_model` must be a voltage-cgcnn model, got {model.architecture!r} <{model.pk}>"
    return None


class MgCathodeScreeningWorkChain(ProtocolMixin, WorkChain):
    """Voltage/capacity screen of insertion cathodes, then MLMD ionic conductivity of the best."""

    _protocol_file = "cathode_screen.yaml"

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("candidates", valid_type=StructureBatchData,
                   help="Candidate structures (e.g. an MP query of compounds with the ion), with "
                        "e_above_hull_eV_per_atom where the prefilter should use it.")
        spec.input("voltage_model", valid_type=ModelData, help="A trained voltage-cgcnn predictor.")
        spec.input("parameters", valid_type=orm.Dict, validator=validate_parameters,
                   help="working_ion; max_e_above_hull_eV_per_atom; min_voltage_V; min_volumetric_capacity_Ah_per_L; "
                        "max_md_candidates; temperatures_K; min_conductivity_mS_per_cm; md (battgen md settings); "
                        "analysis (battgen diffusion settings).")
        spec.input("code", valid_type=orm.AbstractCode, help="The battgen code (predictions and MD).")
        spec.input("potential", valid_type=ModelData, required=False,
                   help="A trained interatomic potential for the MD (default: the `md.mlip` named in parameters).")
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.prefilter,
            cls.run_property_screen,
            cls.rank_for_md,
            if_(cls.has_md_candidates)(cls.run_md, cls.collect_md),
            cls.results,
        )
        spec.output("screened_structures", valid_type=StructureBatchData,
                    help="Rows that passed voltage and capacity, with predicted_average_voltage_V (V) and capacities.")
        spec.output("md_structures", valid_type=StructureBatchData, required=False,
                    help="The rows sent to MD with conductivity_mS_per_cm (mS/cm) and diffusivity_cm2_per_s.")
        spec.output("conductive_structures", valid_type=StructureBatchData, required=False,
                    help="Rows whose conductivity is above the threshold.")
        spec.output("funnel", valid_type=orm.Dict, help="Rows left after each step (number of structures).")
        spec.output("figure", valid_type=orm.SinglefileData, help="Voltage vs volumetric capacity, size by σ (PNG).")
        spec.exit_code(540, "ERROR_PREFILTER_FAILED", message="The E_hull prefilter failed: {message}")
        spec.exit_code(541, "ERROR_PROPERTY_SCREEN_FAILED", message="The voltage/capacity screen failed: {message}")
        spec.exit_code(542, "ERROR_MD_FAILED", message="The conductivity of {row} failed: {message}")

    @classmethod
    def compose_protocol_inputs(cls, protocol, inputs):
        """``parameters.md`` and ``parameters.analysis`` from md_base.yaml's protocol of the same name (under what
        cathode_screen.yaml states itself)."""
        from aiida_battgen.workchains.md import MdBaseWorkChain
        from aiida_battgen.workchains.protocols.utils import recursive_merge

        md = MdBaseWorkChain.get_protocol_inputs(cls.child_protocol(MdBaseWorkChain, protocol))["md"]
        inputs["parameters"] = recursive_merge(
            {"md": md["parameters"], "analysis": md["analysis"]}, inputs["parameters"], strict=False)
        return inputs

    @classmethod
    def get_builder_from_protocol(cls, code, candidates, voltage_model, protocol=None, overrides=None):
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        builder.code = code
        builder.candidates = candidates
        builder.voltage_model = voltage_model
        builder.parameters = orm.Dict(inputs["parameters"])
        return builder

    # ------------------------------------------------------------------------------------------------
    def _calcfunction(self, name, label, **kwargs):
        return CalculationFactory(name).run_get_node(**kwargs, metadata={"call_link_label": label})

    def prefilter(self):
        self.ctx.settings = self.inputs.parameters.get_dict()
        self.ctx.stages = {"candidates": self.inputs.candidates}
        bound = self.ctx.settings.get("max_e_above_hull_eV_per_atom")
        self.ctx.current = self.inputs.candidates
        if bound is None:
            return None
        outputs, node = self._calcfunction("battgen.shortlist", "prefilter", structures=self.inputs.candidates,
                                           parameters=orm.Dict({"max_values": {"e_above_hull_eV_per_atom": bound}}))
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_PREFILTER_FAILED.format(message=node.exit_message)
        self.ctx.current = outputs["selected"]
        self.ctx.stages[f"e_above_hull_eV_per_atom <= {bound}"] = self.ctx.current

    def run_property_screen(self):
        settings = self.ctx.settings
        ion = settings["working_ion"]
        parameters = {
            "calcfunction_max_rows": settings.get("calcfunction_max_rows", 200),
            "predictions": [{"model": "voltage", "options": {"working_ion": ion}}],
            "capacity": {"working_ion": ion, "fraction": 1.0},
            "thresholds": [{"column": "predicted_average_voltage_V", "min": settings["min_voltage_V"]},
                           {"column": "volumetric_capacity_Ah_per_L", "min": settings["min_volumetric_capacity_Ah_per_L"]}],
        }
        inputs = {"structures": self.ctx.current, "models": {"voltage": self.inputs.voltage_model},
                  "parameters": orm.Dict(parameters), "predict": {"predict": {"code": self.inputs.code}},
                  "metadata": {"call_link_label": "property_screen"}}
        return ToContext(property_screen=self.submit(PropertyScreenWorkChain, **inputs))

    def rank_for_md(self):
        node = self.ctx.property_screen
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_PROPERTY_SCREEN_FAILED.format(message=node.exit_message)
        self.ctx.screened = node.outputs.passed_structures
        self.out("screened_structures", self.ctx.screened)
        self.ctx.stages["voltage and capacity"] = self.ctx.screened
        outputs, _ = self._calcfunction(
            "battgen.shortlist", "rank_for_md", structures=self.ctx.screened,
            parameters=orm.Dict({"sort_by": "predicted_average_voltage_V", "ascending": False,
                                 "top_k": self.ctx.settings["max_md_candidates"]}))
        self.ctx.for_md = outputs["selected"]
        self.ctx.stages["sent to MD"] = self.ctx.for_md

    def has_md_candidates(self):
        return self.ctx.for_md.n_rows > 0

    def run_md(self):
        settings = self.ctx.settings
        md_settings = {**settings.get("md", {}), "working_ion": settings["working_ion"]}
        futures, self.ctx.md_rows = {}, []
        for meta in self.ctx.for_md.get_batch().meta:
            row_id = meta["row_id"]
            label = re.sub(r"[^A-Za-z0-9_]", "_", row_id)
            extracted, _ = self._calcfunction("battgen.extract_structure", f"extract_{label}",
                                              structures=self.ctx.for_md, row_id=orm.Str(row_id))
            md_inputs = {"code": self.inputs.code, "structure": extracted["structure"],
                         "analysis": orm.Dict(settings.get("analysis", {}))}
            if "potential" in self.inputs:
                md_inputs["model"] = self.inputs.potential
            inputs = AttributeDict({
                "md": {"md": md_inputs},
                "parameters": orm.Dict(md_settings),
                "temperatures_K": orm.List(settings.get("temperatures_K", [1200.0])),
                "metadata": {"call_link_label": f"md_{label}"},
            })
            key = f"md_{len(self.ctx.md_rows):04d}"
            futures[key] = self.submit(ConductivityWorkChain, **inputs)
            self.ctx.md_rows.append(row_id)
        return ToContext(**futures)

    def collect_md(self):
        runs = {}
        for index, row_id in enumerate(self.ctx.md_rows):
            node = self.ctx[f"md_{index:04d}"]
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_MD_FAILED.format(row=row_id, message=node.exit_message)
            # the highest temperature's run (the seed screens at 1200 K)
            label = max(node.outputs.runs, key=lambda k: int(k.split("_")[1]))
            runs[f"run_{index:04d}"] = node.outputs.runs[label]
        outputs, _ = self._calcfunction("battgen.attach_conductivity", "attach_conductivity",
                                        structures=self.ctx.for_md, row_ids=orm.List(self.ctx.md_rows), **runs)
        self.ctx.md_structures = outputs["structures"]
        self.out("md_structures", self.ctx.md_structures)
        threshold = self.ctx.settings["min_conductivity_mS_per_cm"]
        selected, _ = self._calcfunction(
            "battgen.shortlist", "conductive", structures=self.ctx.md_structures,
            parameters=orm.Dict({"min_values": {"conductivity_mS_per_cm": threshold},
                                 "sort_by": "conductivity_mS_per_cm", "ascending": False}))
        self.out("conductive_structures", selected["selected"])
        self.ctx.stages[f"conductivity_mS_per_cm >= {threshold}"] = selected["selected"]

    def results(self):
        names = list(self.ctx.stages)
        batches = {f"stage_{i:02d}": self.ctx.stages[name] for i, name in enumerate(names)}
        funnel, _ = self._calcfunction("battgen.count_rows", "funnel", stage_names=orm.List(names), **batches)
        self.out("funnel", funnel)
        figure_rows = self.ctx.md_structures if "md_structures" in self.ctx else self.ctx.screened
        figure_settings = {k: self.ctx.settings.get(k) for k in
                           ("min_voltage_V", "min_volumetric_capacity_Ah_per_L", "working_ion")}
        figure, _ = self._calcfunction("battgen.cathode_screen_figure", "figure", screened=figure_rows,
                                       parameters=orm.Dict(figure_settings))
        self.out("figure", figure)
        self.report("cathode screen: " + ", ".join(f"{k}: {v}" for k, v in funnel["counts"].items()))
