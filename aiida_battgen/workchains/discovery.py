"""``battgen.discovery``: source → generate → screen → relax → stability → shortlist, with provenance.

Thousands of candidates travel as one ``StructureBatchData`` per step; only the shortlist becomes
individual ``StructureData`` nodes (through ``extract_structure``), so every survivor's graph leads back
through the batches to the source.

Optional DFT stage (``dft`` input, protocol key ``dft``, off by default): the best ``dft.top_k`` shortlisted
candidates each go through ``battgen.dft.formation_energy`` (DFT relaxation with VASP or Quantum ESPRESSO,
elemental references with the same settings, Ef, E_hull on the DFT hull), so a candidate's graph runs from
the source snapshot to a DFT energy.
"""

from __future__ import annotations

import re

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, if_
from aiida.plugins import CalculationFactory, DataFactory, WorkflowFactory

from aiida_battgen.calculations.generator import GENERATOR_ARCHITECTURES
from aiida_battgen.workchains.protocols.utils import ProtocolMixin

StructureBatchData = DataFactory("battgen.structure_batch")
MlipRelaxBaseWorkChain = WorkflowFactory("battgen.mlip.relax_base")
GenerateBaseWorkChain = WorkflowFactory("battgen.generate_base")
PropertyScreenWorkChain = WorkflowFactory("battgen.property_screen")
DftFormationEnergyWorkChain = WorkflowFactory("battgen.dft.formation_energy")
ModelData = DataFactory("battgen.model")

batch_from_snapshot = CalculationFactory("battgen.batch_from_snapshot")
screen_validity = CalculationFactory("battgen.screen_validity")
screen_charge_neutrality = CalculationFactory("battgen.screen_charge_neutrality")
screen_uniqueness = CalculationFactory("battgen.screen_uniqueness")
screen_novelty = CalculationFactory("battgen.screen_novelty")
energy_above_hull = CalculationFactory("battgen.energy_above_hull")
elemental_references = CalculationFactory("battgen.elemental_references")
merge_batches = CalculationFactory("battgen.merge_batches")
shortlist = CalculationFactory("battgen.shortlist")
funnel_summary = CalculationFactory("battgen.funnel_summary")
extract_structure = CalculationFactory("battgen.extract_structure")

# Generators that run as cheap calcfunctions; trained generators (CDVAE, LLM) run as CalcJobs
# (GenerateBaseWorkChain) with a model node from `generator_models.<name>`.
GENERATOR_CALCFUNCTIONS = {"substitution": "battgen.generate_substitution"}
TRAINED_GENERATORS = GENERATOR_ARCHITECTURES  # name -> model architecture

# (call link label, calcfunction, funnel key) of the screening filters, in order.
SCREENING_STEPS = (
    ("screen_validity", screen_validity, "valid_structure"),
    ("screen_charge_neutrality", screen_charge_neutrality, "charge_neutral"),
    ("screen_uniqueness", screen_uniqueness, "unique"),
    ("screen_novelty", screen_novelty, "novel"),
)


def _output_label(row_id: str, rank: int) -> str:
    """A valid AiiDA link label for a shortlisted row."""
    return f"rank_{rank:03d}_" + re.sub(r"[^A-Za-z0-9_]", "_", row_id)


def generator_runs(generation: dict) -> list[dict]:
    """The generators of a run: the main one (``generator``, ``n``, ``conditions``) then
    ``additional_generators`` (a list of entries of the same form)."""
    main = {key: generation[key] for key in ("generator", "n", "conditions") if key in generation}
    return [main, *generation.get("additional_generators", [])]


def validate_generation(generation: dict, models: dict) -> str | None:
    runs = generator_runs(generation)
    names = [run.get("generator") for run in runs]
    if len(set(names)) != len(names):
        return f"each generator may appear once per run, got {names}"
    known = sorted([*GENERATOR_CALCFUNCTIONS, *TRAINED_GENERATORS])
    for run in runs:
        name = run.get("generator")
        if name not in known:
            return f"unknown generator {name!r}; available: {known}"
        n = run.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            return f"generator {name!r}: `n` must be a positive integer, got {n!r}"
        if name in TRAINED_GENERATORS:
            if name not in models:
                return f"generator {name!r} needs a trained model as `generator_models.{name}` (a battgen.model node)"
            if models[name].architecture != TRAINED_GENERATORS[name]:
                return (f"`generator_models.{name}` is a {models[name].architecture!r} model, "
                        f"expected {TRAINED_GENERATORS[name]!r}")
    return None


DFT_KEYS = {"enabled", "engine", "protocol", "overrides", "family", "top_k"}


def validate_dft(dft: dict, has_code: bool) -> str | None:
    """The optional DFT stage: known keys, a DFT code when enabled, a positive top_k."""
    unknown = sorted(set(dft) - DFT_KEYS)
    if unknown:
        return f"unknown `dft` key(s) {unknown}; allowed: {sorted(DFT_KEYS)}"
    if not dft.get("enabled"):
        return None
    if dft.get("engine") not in ("vasp", "quantumespresso"):
        return f"`dft.engine` must be vasp or quantumespresso, got {dft.get('engine')!r}"
    top_k = dft.get("top_k")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        return f"`dft.top_k` must be a positive integer, got {top_k!r}"
    if not has_code:
        return "the DFT stage is enabled: give `dft_code` (pw.x or VASP)"
    return None


def validate_inputs(inputs, _):
    if "dft" in inputs:
        error = validate_dft(inputs["dft"].get_dict(), "dft_code" in inputs)
        if error:
            return error
    if "seed_structures" not in inputs and "snapshot" not in inputs:
        return "give either `seed_structures` (a structure batch) or `snapshot` (a source snapshot)"
    generation = inputs["generation"].get_dict()
    error = validate_generation(generation, inputs.get("generator_models", {}))
    if error:
        return error
    sort_by = inputs["preselection"].get_dict().get("sort_by")
    if sort_by == "substitution_probability" and any(
        run["generator"] != "substitution" for run in generator_runs(generation)
    ):
        return ("`preselection.sort_by: substitution_probability` would drop every row of the other generators "
                "(they have no such column): set it to null or to a column all generators' rows carry "
                "(e.g. a predicted property from `property_screen`)")
    for port in ("preselection", "shortlist"):
        top_k = inputs[port].get_dict().get("top_k")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            return f"`{port}.top_k` must be a positive integer, got {top_k!r}"
    return None


class DiscoveryWorkChain(ProtocolMixin, WorkChain):
    """Generate candidates from seed structures, screen them, relax with an MLIP, rank by E_hull."""

    _protocol_file = "discovery.yaml"

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("seed_structures", valid_type=StructureBatchData, required=False,
                   help="Seed structures for the generators (e.g. known hosts).")
        spec.input("snapshot", valid_type=orm.SinglefileData, required=False,
                   help="A source snapshot (MP query or file) turned into the seed batch by `batch_from_snapshot`.")
        spec.input("reference_structures", valid_type=StructureBatchData, required=False,
                   help="Known structures for the novelty filter; default: the seed structures.")
        spec.input("seed", valid_type=orm.Int, help="Random seed of every stochastic step.")
        spec.input("generation", valid_type=orm.Dict,
                   help="Generator name, number of candidates `n`, generator `conditions`; more generators in "
                        "`additional_generators` (a list of {generator, n, conditions}).")
        spec.input_namespace("generator_models", valid_type=ModelData, dynamic=True, required=False,
                             help="Trained models by generator name (cdvae, llm), e.g. from "
                                  "GeneratorTrainBaseWorkChain.")
        spec.expose_inputs(GenerateBaseWorkChain, namespace="generate",
                           exclude=("generate.model", "generate.seed_structures", "generate.parameters"),
                           namespace_options={"required": False, "populate_defaults": False,
                                              "help": "Where trained generators sample (code, options); the "
                                                      "relaxation code when no code is given."})
        spec.input("screening", valid_type=orm.Dict,
                   help="Per-filter parameters: validity (distances in Å), charge_neutrality, uniqueness, novelty.")
        spec.expose_inputs(PropertyScreenWorkChain, namespace="property_screen", exclude=("structures",),
                           namespace_options={"required": False, "populate_defaults": False,
                                              "help": "ML property screen between screening and relaxation "
                                                      "(models, thresholds); skipped when not given."})
        spec.input("preselection", valid_type=orm.Dict,
                   help="Cut before relaxation: sort_by, ascending, top_k (number of structures).")
        spec.input("hull", valid_type=orm.Dict,
                   help="Reference hull settings: compatibility (auto, null or MP2020; auto = MP2020 for reference "
                        "entries, none for an MLIP hull), label.")
        spec.input("hull_reference_entries", valid_type=orm.SinglefileData, required=False,
                   help="Reference entries for the hull (an MP snapshot or entries JSON, MP2020-corrected by "
                        "default). Without it the hull is built from the same MLIP's energies of elemental "
                        "references and the seed structures.")
        spec.input("shortlist", valid_type=orm.Dict,
                   help="Final ranking: sort_by, top_k, max_values (e.g. e_above_hull_eV_per_atom in eV/atom).")
        spec.input("shortlist_group_label", valid_type=orm.Str, required=False,
                   help="Group that receives the shortlisted StructureData nodes.")
        spec.expose_inputs(MlipRelaxBaseWorkChain, namespace="relax", exclude=("relax.structures",),
                           namespace_options={"help": "Inputs of the MLIP relaxations (code, parameters, options)."})
        spec.input("dft", valid_type=orm.Dict, required=False,
                   help="Optional DFT stage for the shortlist: enabled, engine (vasp | quantumespresso), protocol "
                        "and overrides of battgen.dft.relax, family (POTCAR / pseudopotential family label), top_k "
                        "(number of best shortlisted candidates sent to DFT).")
        spec.input("dft_code", valid_type=orm.AbstractCode, required=False,
                   help="The DFT code (pw.x or VASP) of the DFT stage.")
        spec.input("dft_options", valid_type=orm.Dict, required=False,
                   help="metadata.options of the DFT calculations (resources, wall time in s).")
        spec.inputs.validator = validate_inputs

        spec.outline(
            cls.prepare_seeds,
            cls.generate,
            cls.collect_generated,
            cls.screen,
            if_(cls.has_property_screen)(
                cls.run_property_screen,
                cls.inspect_property_screen,
            ),
            cls.preselect,
            if_(cls.has_candidates)(
                cls.run_relaxations,
                cls.inspect_relaxations,
                cls.compute_stability,
                cls.make_shortlist,
                cls.extract_candidates,
                if_(cls.has_dft_stage)(
                    cls.run_dft,
                    cls.inspect_dft,
                ),
            ),
            cls.results,
        )

        spec.output("funnel", valid_type=orm.Dict, help="Row counts after each step (number of structures).")
        spec.output("generated_structures", valid_type=StructureBatchData,
                    help="Everything the generators made; each row's `generator` says which one.")
        spec.output("screened_structures", valid_type=StructureBatchData, help="Rows that passed every filter.")
        spec.output("relaxed_structures", valid_type=StructureBatchData, required=False,
                    help="Relaxed candidates with energies (eV) and E_hull (eV/atom).")
        spec.output("hull", valid_type=orm.Dict, required=False, help="Which reference hull was used.")
        spec.output("shortlist", valid_type=StructureBatchData, required=False, help="Ranked shortlist batch.")
        spec.output_namespace("candidates", valid_type=orm.StructureData, dynamic=True,
                              help="Shortlisted candidates as StructureData, labelled by rank and row id.")
        spec.output_namespace("dft_formation_energy", valid_type=orm.Float, dynamic=True, required=False,
                              help="DFT stage: formation energy per candidate label (eV/atom).")
        spec.output_namespace("dft_e_above_hull", valid_type=orm.Float, dynamic=True, required=False,
                              help="DFT stage: E_hull on the DFT hull per candidate label (eV/atom).")
        spec.output_namespace("dft_relaxed_structures", valid_type=orm.StructureData, dynamic=True, required=False,
                              help="DFT stage: DFT-relaxed candidates by label (Å).")

        spec.exit_code(501, "ERROR_SOURCE_FAILED", message="Turning the snapshot into seed structures failed.")
        spec.exit_code(502, "ERROR_GENERATION_FAILED", message="The generator failed.")
        spec.exit_code(503, "ERROR_SCREENING_FAILED", message="Screening step `{step}` failed.")
        spec.exit_code(504, "ERROR_RELAXATION_FAILED", message="The MLIP relaxation of `{which}` failed.")
        spec.exit_code(505, "ERROR_STABILITY_FAILED", message="The energy-above-hull step failed.")
        spec.exit_code(506, "ERROR_SHORTLIST_FAILED", message="Ranking / extracting the shortlist failed.")
        spec.exit_code(507, "ERROR_PROPERTY_SCREEN_FAILED", message="The ML property screen failed: {message}")
        spec.exit_code(508, "ERROR_DFT_FAILED", message="The DFT stage failed for {labels}.")
        spec.exit_code(701, "WARNING_NO_CANDIDATES",
                       message="No candidate survived screening; the funnel is attached, nothing was relaxed.")

    @classmethod
    def get_builder_from_protocol(cls, code, seed_structures=None, protocol=None, overrides=None, options=None,
                                  snapshot=None, reference_structures=None, dft_code=None, dft_options=None):
        """A filled builder; ``overrides`` are deep-merged into the protocol and unknown keys rejected.

        With ``dft.enabled`` in the protocol/overrides the DFT stage is set up and ``dft_code`` is required.
        """
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        if seed_structures is not None:
            builder.seed_structures = seed_structures
        if snapshot is not None:
            builder.snapshot = snapshot
        if reference_structures is not None:
            builder.reference_structures = reference_structures
        builder.seed = orm.Int(inputs["seed"])
        for port in ("generation", "screening", "preselection", "hull", "shortlist"):
            builder[port] = orm.Dict(inputs[port])
        builder.relax.relax.code = code
        builder.relax.relax.parameters = orm.Dict(inputs["relax"])
        if options:
            builder.relax.relax.metadata.options = options
        if inputs["dft"]["enabled"]:
            if dft_code is None:
                raise ValueError("the DFT stage is enabled: pass dft_code (pw.x or VASP)")
            builder.dft = orm.Dict(inputs["dft"])
            builder.dft_code = dft_code
            if dft_options:
                builder.dft_options = orm.Dict(dft_options)
        return builder

    # ------------------------------------------------------------------------------------------------
    def _run_calcfunction(self, function, label, **kwargs):
        """Run a calcfunction with a call link label; returns (outputs, node)."""
        return function.run_get_node(**kwargs, metadata={"call_link_label": label})

    def prepare_seeds(self):
        self.ctx.funnel = {}  # stage -> batch node; counted by the funnel_summary calcfunction
        if "seed_structures" in self.inputs:
            self.ctx.seeds = self.inputs.seed_structures
        else:
            outputs, node = self._run_calcfunction(batch_from_snapshot, "batch_from_snapshot",
                                                   snapshot=self.inputs.snapshot)
            if not node.is_finished_ok:
                self.report(f"batch_from_snapshot<{node.pk}> failed: {node.exit_message}")
                return self.exit_codes.ERROR_SOURCE_FAILED
            self.ctx.seeds = outputs["structures"]
        self.ctx.reference = self.inputs.get("reference_structures", self.ctx.seeds)
        self.ctx.funnel["seed_structures"] = self.ctx.seeds

    def generate(self):
        """Cheap generators run here as calcfunctions; trained ones are submitted as GenerateBaseWorkChains."""
        self.ctx.generated_pieces = {}
        futures = {}
        for index, run in enumerate(generator_runs(self.inputs.generation.get_dict())):
            name = run["generator"]
            label = f"generate_{name}"
            parameters = orm.Dict({"generator": name, "n": run["n"], "conditions": run.get("conditions", {}),
                                   **({"seed": self.inputs.seed.value} if name in TRAINED_GENERATORS else {})})
            if name in GENERATOR_CALCFUNCTIONS:
                outputs, node = self._run_calcfunction(CalculationFactory(GENERATOR_CALCFUNCTIONS[name]), label,
                                                       seeds=self.ctx.seeds, parameters=parameters,
                                                       seed=self.inputs.seed)
                if not node.is_finished_ok:
                    self.report(f"generator {name} <{node.pk}> failed: {node.exit_message}")
                    return self.exit_codes.ERROR_GENERATION_FAILED
                self.ctx.generated_pieces[f"g{index:02d}_{name}"] = outputs["structures"]
                continue
            inputs = AttributeDict(self.exposed_inputs(GenerateBaseWorkChain, namespace="generate")
                                   if "generate" in self.inputs else {})
            inputs.generate = AttributeDict(inputs.get("generate", {}))
            inputs.generate.setdefault("code", self.inputs.relax.relax.code)
            inputs.generate.model = self.inputs.generator_models[name]
            inputs.generate.parameters = parameters
            inputs.metadata = {"call_link_label": label}
            futures[f"g{index:02d}_{name}"] = self.submit(GenerateBaseWorkChain, **inputs)
            self.report(f"launched GenerateBaseWorkChain<{futures[f'g{index:02d}_{name}'].pk}> for {run['n']} {name} samples")
        self.ctx.submitted_generators = sorted(futures)
        return ToContext(**futures)

    def collect_generated(self):
        """One batch of everything generated (merged in generator order when there are several)."""
        for key in self.ctx.submitted_generators:
            node = self.ctx[key]
            if not node.is_finished_ok:
                self.report(f"generator {key[4:]} <{node.pk}> failed: {node.exit_message}")
                return self.exit_codes.ERROR_GENERATION_FAILED
            self.ctx.generated_pieces[key] = node.outputs.generated_structures
        pieces = self.ctx.generated_pieces
        if len(pieces) == 1:
            self.ctx.current = next(iter(pieces.values()))
        else:
            outputs, node = self._run_calcfunction(merge_batches, "merge_generated", **pieces)
            if not node.is_finished_ok:
                self.report(f"merge_generated<{node.pk}> failed: {node.exit_message}")
                return self.exit_codes.ERROR_GENERATION_FAILED
            self.ctx.current = outputs["structures"]
        self.out("generated_structures", self.ctx.current)
        self.ctx.funnel["generated"] = self.ctx.current

    def screen(self):
        screening = self.inputs.screening.get_dict()
        for label, function, funnel_key in SCREENING_STEPS:
            settings = screening.get(label.removeprefix("screen_"), {})
            kwargs = {"structures": self.ctx.current}
            if settings:
                kwargs["parameters"] = orm.Dict(settings)
            if function is screen_novelty:
                kwargs["reference"] = self.ctx.reference
            if self.ctx.current.n_rows == 0:
                break
            outputs, node = self._run_calcfunction(function, label, **kwargs)
            if not node.is_finished_ok:
                self.report(f"{label}<{node.pk}> failed: {node.exit_message}")
                return self.exit_codes.ERROR_SCREENING_FAILED.format(step=label)
            self.ctx.current = outputs["passed"]
            self.ctx.funnel[funnel_key] = self.ctx.current
        self.out("screened_structures", self.ctx.current)

    def has_property_screen(self):
        return "property_screen" in self.inputs and "parameters" in self.inputs.property_screen \
            and self.ctx.current.n_rows > 0

    def run_property_screen(self):
        inputs = AttributeDict(self.exposed_inputs(PropertyScreenWorkChain, namespace="property_screen"))
        inputs.structures = self.ctx.current
        # Large batches are predicted by a CalcJob: on the relaxation code's computer unless told otherwise.
        inputs.predict = AttributeDict(inputs.get("predict", {}))
        inputs.predict.predict = AttributeDict(inputs.predict.get("predict", {}))
        inputs.predict.predict.setdefault("code", self.inputs.relax.relax.code)
        inputs.metadata = {"call_link_label": "property_screen"}
        future = self.submit(PropertyScreenWorkChain, **inputs)
        self.report(f"launched PropertyScreenWorkChain<{future.pk}> for {self.ctx.current.n_rows} rows")
        return ToContext(property_screen=future)

    def inspect_property_screen(self):
        node = self.ctx.property_screen
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_PROPERTY_SCREEN_FAILED.format(message=node.exit_message)
        self.ctx.current = node.outputs.passed_structures
        self.ctx.funnel["property_screened"] = self.ctx.current

    def preselect(self):
        if self.ctx.current.n_rows == 0:
            return
        outputs, node = self._run_calcfunction(shortlist, "preselect", structures=self.ctx.current,
                                               parameters=self.inputs.preselection)
        if not node.is_finished_ok:
            self.report(f"preselect<{node.pk}> failed: {node.exit_message}")
            return self.exit_codes.ERROR_SHORTLIST_FAILED
        self.ctx.current = outputs["selected"]
        self.ctx.funnel["preselected"] = self.ctx.current

    def has_candidates(self):
        return self.ctx.current.n_rows > 0

    def run_relaxations(self):
        """Relax the candidates and, for an MLIP-referenced hull, the references (elements + seeds)."""
        references = None
        if "hull_reference_entries" not in self.inputs:
            elementals, node = self._run_calcfunction(elemental_references, "elemental_references",
                                                      candidates=self.ctx.current, seeds=self.ctx.seeds)
            if not node.is_finished_ok:
                self.report(f"elemental_references<{node.pk}> failed: {node.exit_message}")
                return self.exit_codes.ERROR_STABILITY_FAILED
            references, _ = self._run_calcfunction(merge_batches, "merge_references",
                                                   elements=elementals["structures"], seeds=self.ctx.seeds)
        futures = {}
        to_relax = [("candidates", self.ctx.current)]
        if "hull_reference_entries" not in self.inputs:
            to_relax.append(("references", references["structures"]))
        for key, batch in to_relax:
            inputs = AttributeDict(self.exposed_inputs(MlipRelaxBaseWorkChain, namespace="relax"))
            inputs.relax = AttributeDict(inputs.relax)
            inputs.relax.structures = batch
            inputs.metadata = {"call_link_label": f"relax_{key}"}
            futures[f"relax_{key}"] = self.submit(MlipRelaxBaseWorkChain, **inputs)
            self.report(f"launched MlipRelaxBaseWorkChain<{futures[f'relax_{key}'].pk}> for {batch.n_rows} {key}")
        return ToContext(**futures)

    def inspect_relaxations(self):
        for key in ("candidates", "references"):
            if f"relax_{key}" not in self.ctx:
                continue
            node = self.ctx[f"relax_{key}"]
            if "relaxed_structures" not in node.outputs:
                self.report(f"relaxation of {key} <{node.pk}> produced no structures: {node.exit_message}")
                return self.exit_codes.ERROR_RELAXATION_FAILED.format(which=key)
            if not node.is_finished_ok:
                self.report(f"relaxation of {key} <{node.pk}> finished with a warning: {node.exit_message}")
        self.ctx.relaxed = self.ctx.relax_candidates.outputs.relaxed_structures
        self.ctx.funnel["relaxed"] = self.ctx.relaxed

    def compute_stability(self):
        if "hull_reference_entries" in self.inputs:
            reference = {"reference_entries": self.inputs.hull_reference_entries}
        else:
            reference = {"reference": self.ctx.relax_references.outputs.relaxed_structures}
        outputs, node = self._run_calcfunction(energy_above_hull, "energy_above_hull", structures=self.ctx.relaxed,
                                               parameters=self._hull_parameters(), **reference)
        if not node.is_finished_ok:
            self.report(f"energy_above_hull<{node.pk}> failed: {node.exit_message}")
            return self.exit_codes.ERROR_STABILITY_FAILED
        self.ctx.annotated = outputs["structures"]
        self.out("relaxed_structures", self.ctx.annotated)
        self.out("hull", outputs["hull"])

    def _hull_parameters(self) -> orm.Dict:
        """The hull settings plus a label naming the model that produced every energy on it."""
        settings = self.inputs.hull.get_dict()
        entries_route = "hull_reference_entries" in self.inputs
        if settings.get("compatibility", "auto") == "auto":  # MP entries need MP2020; MLIP energies none
            settings["compatibility"] = "MP2020" if entries_route else None
        if entries_route:
            settings.setdefault("label", f"entries SinglefileData<{self.inputs.hull_reference_entries.pk}>")
        elif not settings.get("label"):
            model = self.ctx.relax_references.outputs.output_parameters.get_dict()
            name = model.get("mlip") or model.get("model_name") or "mlip"
            version = model.get("package_version") or model.get("version") or ""
            settings["label"] = f"mlip:{name}-{version} (elemental + seed references relaxed with the same model)"
        return orm.Dict(settings)

    def make_shortlist(self):
        outputs, node = self._run_calcfunction(shortlist, "shortlist", structures=self.ctx.annotated,
                                               parameters=self.inputs.shortlist)
        if not node.is_finished_ok:
            self.report(f"shortlist<{node.pk}> failed: {node.exit_message}")
            return self.exit_codes.ERROR_SHORTLIST_FAILED
        self.ctx.shortlist = outputs["selected"]
        self.out("shortlist", self.ctx.shortlist)
        self.ctx.funnel["shortlisted"] = self.ctx.shortlist

    def extract_candidates(self):
        group = None
        if "shortlist_group_label" in self.inputs:
            group, _ = orm.Group.collection.get_or_create(self.inputs.shortlist_group_label.value)
        candidates = {}
        for meta in self.ctx.shortlist.get_batch().meta:
            label = _output_label(meta["row_id"], meta["rank"])
            outputs, node = self._run_calcfunction(extract_structure, f"extract_{label}",
                                                   structures=self.ctx.shortlist, row_id=orm.Str(meta["row_id"]))
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_SHORTLIST_FAILED
            candidates[label] = outputs["structure"]
        self.ctx.candidates = candidates  # in rank order
        self.out("candidates", candidates)
        if group is not None and candidates:
            group.add_nodes(list(candidates.values()))

    def has_dft_stage(self):
        return "dft" in self.inputs and bool(self.inputs.dft.get("enabled")) and bool(self.ctx.get("candidates"))

    def run_dft(self):
        """One battgen.dft.formation_energy per best shortlisted candidate (MP entries only for comparison)."""
        settings = self.inputs.dft.get_dict()
        futures = {}
        for label in list(self.ctx.candidates)[: settings["top_k"]]:
            inputs = AttributeDict({
                "structure": self.ctx.candidates[label],
                "code": self.inputs.dft_code,
                "engine": orm.Str(settings["engine"]),
                "protocol": orm.Str(settings.get("protocol") or "balanced"),
                "metadata": {"call_link_label": f"dft_{label}"},
            })
            if settings.get("overrides"):
                inputs.overrides = orm.Dict(settings["overrides"])
            if settings.get("family"):
                inputs.family = orm.Str(settings["family"])
            if "dft_options" in self.inputs:
                inputs.options = self.inputs.dft_options
            if "hull_reference_entries" in self.inputs:
                inputs.mp_entries = self.inputs.hull_reference_entries
            futures[f"dft_{label}"] = self.submit(DftFormationEnergyWorkChain, **inputs)
            self.report(f"launched DftFormationEnergyWorkChain<{futures[f'dft_{label}'].pk}> for {label}")
        return ToContext(**futures)

    def inspect_dft(self):
        failed = []
        energies, hulls, structures = {}, {}, {}
        for label in list(self.ctx.candidates)[: self.inputs.dft["top_k"]]:
            node = self.ctx[f"dft_{label}"]
            if not node.is_finished_ok:
                self.report(f"DFT stage of {label} <{node.pk}> failed: {node.exit_message}")
                failed.append(label)
                continue
            energies[label] = node.outputs.formation_energy_per_atom
            hulls[label] = node.outputs.e_above_hull
            structures[label] = node.outputs.relaxed_structure
        self.out("dft_formation_energy", energies)
        self.out("dft_e_above_hull", hulls)
        self.out("dft_relaxed_structures", structures)
        if failed:
            return self.exit_codes.ERROR_DFT_FAILED.format(labels=", ".join(failed))
        return None

    def results(self):
        funnel, _ = self._run_calcfunction(funnel_summary, "funnel_summary", **self.ctx.funnel)
        self.out("funnel", funnel)  # a calcfunction returning one node gives the node itself
        counts = funnel["counts"]
        self.report("funnel: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        if self.ctx.current.n_rows == 0:
            return self.exit_codes.WARNING_NO_CANDIDATES
