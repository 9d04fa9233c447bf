"""``battgen.discovery``: source → generate → screen → relax → stability → shortlist, with provenance.

Thousands of candidates travel as one ``StructureBatchData`` per step; only the shortlist becomes
individual ``StructureData`` nodes (through ``extract_structure``), so every survivor's graph leads back
through the batches to the source.

Optional DFT stage (the ``dft`` namespace: the exposed inputs of ``battgen.dft.formation_energy``, built by
its ``get_builder_from_protocol`` from the protocol's ``dft`` section when a ``dft_code`` is given; off
otherwise): the best ``dft_top_k`` shortlisted candidates each go through ``battgen.dft.formation_energy`` (DFT relaxation with VASP or Quantum ESPRESSO,
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
from aiida_battgen.workchains.dft_formation import DftFormationEnergyWorkChain
from aiida_battgen.workchains.protocols.utils import ProtocolMixin, set_builder_inputs
from aiida_battgen.workchains.relax_base import MlipRelaxBaseWorkChain
from aiida_battgen.workchains.seeds import SeedSourceMixin
from battgen.columns import (
    KNOWN_MATERIALS_HULL_COLUMNS,
    PROPERTY_SCREEN_COLUMNS,
    PROPERTY_SCREEN_PREFIXES,
    RELAX_COLUMNS,
    SELECTION_COLUMNS,
    AvailableColumns,
    columns,
    generated_columns,
    unknown_selection_columns,
)
from battgen.stability.hull import ANNOTATION_COLUMNS

StructureBatchData = DataFactory("battgen.structure_batch")
GenerateBaseWorkChain = WorkflowFactory("battgen.generate_base")
PropertyScreenWorkChain = WorkflowFactory("battgen.property_screen")
ModelData = DataFactory("battgen.model")

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
merge_known_materials = CalculationFactory("battgen.merge_known_materials")

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


# Copied from each candidate's properties onto its StructureData as extras (units in the names).
CANDIDATE_EXTRAS = ("e_above_hull_eV_per_atom", "formation_energy_per_atom_eV", "energy_per_atom_eV",
                    "elements", "generator", "model_sha256", "rank", "row_id", "parent_row_id")


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


DFT_EXTRA_MISSING = ("the DFT stage needs the `dft` extra (aiida-vasp, aiida-quantumespresso, aiida-pseudo): "
                     "pip install -c constraints.txt -e \".[dft]\" ({error})")


def load_dft_formation_chain():
    """battgen.dft.formation_energy once its DFT engines load (battgen.dft.relax imports aiida-vasp and
    aiida-quantumespresso): checked only where the DFT stage runs, the discovery itself does not need them."""
    from aiida.common.exceptions import EntryPointError

    try:
        WorkflowFactory("battgen.dft.relax")
    except (EntryPointError, ImportError) as exc:
        raise ImportError(DFT_EXTRA_MISSING.format(error=exc)) from exc
    return DftFormationEnergyWorkChain


def validate_dft(dft, top_k: int | None = None) -> str | None:
    """The optional DFT stage (the ``dft`` namespace, the inputs of battgen.dft.formation_energy): off when
    empty; when given, a positive ``dft_top_k`` and the DFT engines installed."""
    if not dft:
        return None
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        return f"`dft_top_k` must be a positive integer, got {top_k!r}"
    try:
        load_dft_formation_chain()
    except ImportError as exc:
        return str(exc)
    return None


def selection_columns(generation: dict, has_property_screen: bool) -> dict[str, AvailableColumns]:
    """The columns ``preselection`` and ``shortlist`` can name: what the rows carry at that point."""
    before_relaxation = generated_columns(run["generator"] for run in generator_runs(generation))
    if has_property_screen:
        before_relaxation = before_relaxation | columns(PROPERTY_SCREEN_COLUMNS, PROPERTY_SCREEN_PREFIXES)
    after_hull = before_relaxation | columns(
        (*SELECTION_COLUMNS, *RELAX_COLUMNS, *ANNOTATION_COLUMNS, *KNOWN_MATERIALS_HULL_COLUMNS))
    return {"preselection": before_relaxation, "shortlist": after_hull}


def validate_selection_columns(inputs, generation: dict) -> str | None:
    """A selection naming a column no upstream step writes would silently select nothing."""
    has_property_screen = "property_screen" in inputs and "parameters" in inputs["property_screen"]
    available = selection_columns(generation, has_property_screen)
    for port in ("preselection", "shortlist"):
        problems = unknown_selection_columns(inputs[port].get_dict(), available[port])
        if problems:
            named = ", ".join(f"`{port}.{p.key}`" for p in problems)
            return (f"{named}: no step before `{port}` writes such a column. Columns available there: "
                    f"{available[port].describe()}")
    return None


def validate_inputs(inputs, _):
    top_k = inputs["dft_top_k"].value if "dft_top_k" in inputs else None
    error = validate_dft(inputs.get("dft"), top_k)
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
    return validate_selection_columns(inputs, generation)


class DiscoveryWorkChain(SeedSourceMixin, ProtocolMixin, WorkChain):
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
                   help="Known structures for the novelty filter, besides `known_materials`; default: the seed "
                        "structures.")
        spec.input("known_materials", valid_type=orm.SinglefileData, required=False,
                   help="Known-materials reference (battgen.known_materials; protocol default: the embedded "
                        "MP-derived file): novelty against its structures and, without `hull_reference_entries`, "
                        "E_hull (eV/atom) against its MP2020 hull of each candidate's chemical system.")
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
        spec.input("materials_project", valid_type=orm.Str, required=False,
                   help="`auto`: with an MP API key (MP_API_KEY or pymatgen's PMG_MAPI_KEY, never stored) fetch the "
                        "relaxed candidates' chemical spaces from Materials Project, once per chemical system and "
                        "database version (cached as snapshot nodes), for E_hull (eV/atom) and post-relaxation "
                        "novelty; without a key, or `off`: the `known_materials` reference.")
        spec.input("hull", valid_type=orm.Dict,
                   help="Reference hull settings: compatibility (auto, null or MP2020; auto = MP2020 for reference "
                        "entries, none for an MLIP hull), label, rank_hull_incomplete (known-materials hull: "
                        "whether candidates whose chemical space holds no known compound may be shortlisted).")
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
        spec.expose_inputs(DftFormationEnergyWorkChain, namespace="dft", exclude=("structure", "mp_entries"),
                           namespace_options={"required": False, "populate_defaults": False,
                                              "help": "Optional DFT stage: the inputs of battgen.dft.formation_energy "
                                                      "(code, engine, protocol and overrides of battgen.dft.relax, "
                                                      "family, options) for each of the `dft_top_k` best shortlisted "
                                                      "candidates; skipped when not given. Needs the `dft` extra."})
        spec.input("dft_top_k", valid_type=orm.Int, default=lambda: orm.Int(3),
                   help="Number of best shortlisted candidates sent to the DFT stage.")
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
                cls.fetch_materials_project,
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
                              help="Shortlisted candidates as StructureData (Å), port names rank_<rank>_<row id>; "
                                   "node label `<formula> (rank <n>)`; extras " + ", ".join(CANDIDATE_EXTRAS)
                                   + ", formula, campaign, discovery_uuid for QueryBuilder filters.")
        spec.output_namespace("candidate_properties", valid_type=orm.Dict, dynamic=True, required=False,
                              help="Each candidate's properties by the same port name as `candidates`: the row's "
                                   "scalars with units in the keys (e_above_hull_eV_per_atom, energy_per_atom_eV, "
                                   "formation_energy_per_atom_eV, ...), reduced_formula, elements, nsites.")
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
        spec.exit_code(509, "ERROR_MATERIALS_PROJECT_FAILED",
                       message="Fetching the chemical systems from Materials Project failed; nothing was stored: {message}")
        spec.exit_code(701, "WARNING_NO_CANDIDATES",
                       message="No candidate survived screening; the funnel is attached, nothing was relaxed.")
        spec.exit_code(702, "WARNING_EMPTY_SHORTLIST",
                       message="No relaxed candidate passed the shortlist criteria ({criteria}); the relaxed "
                               "structures and the funnel are attached.")

    @classmethod
    def compose_protocol_inputs(cls, protocol, inputs):
        """``relax`` from the relax base protocol of the same name (relax_base.yaml: the MLIP, fmax, steps), with
        discovery.yaml's ``relax`` section as its overrides."""
        child = cls.child_protocol(MlipRelaxBaseWorkChain, protocol)
        inputs["relax"] = MlipRelaxBaseWorkChain.get_protocol_inputs(child, inputs.get("relax") or None)
        return inputs

    @classmethod
    def get_builder_from_protocol(cls, code, seed_structures=None, protocol=None, overrides=None, options=None,
                                  snapshot=None, reference_structures=None, dft_code=None, dft_options=None):
        """A filled builder; ``overrides`` mirror the port tree (e.g. ``{"relax": {"relax": {"parameters":
        {"fmax": 0.1}}}}``), are deep-merged into the protocol and unknown keys rejected.

        The relaxations are built by MlipRelaxBaseWorkChain's own ``get_builder_from_protocol`` (``options`` go to
        its calculations); with ``dft_code`` (pw.x or VASP) the DFT stage is set up by
        DftFormationEnergyWorkChain's, from the protocol's ``dft`` section (``dft_options``: its calculations'
        metadata.options).
        """
        protocol = protocol or cls.get_default_protocol()
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        if seed_structures is not None:
            builder.seed_structures = seed_structures
        if snapshot is not None:
            builder.snapshot = snapshot
        if reference_structures is not None:
            builder.reference_structures = reference_structures
        builder.materials_project = orm.Str(inputs["materials_project"])
        if inputs["known_materials"]:  # "embedded" or a path to another reference file
            from aiida_battgen.data.known_materials import known_materials_node

            builder.known_materials = known_materials_node(
                None if inputs["known_materials"] == "embedded" else inputs["known_materials"])
        builder.seed = orm.Int(inputs["seed"])
        for port in ("generation", "screening", "preselection", "hull", "shortlist"):
            builder[port] = orm.Dict(inputs[port])
        relax = MlipRelaxBaseWorkChain.get_builder_from_protocol(
            code, protocol=cls.child_protocol(MlipRelaxBaseWorkChain, protocol), overrides=inputs["relax"],
            options=options)
        set_builder_inputs(builder.relax, relax._inputs(prune=True))
        builder.dft_top_k = orm.Int(inputs["dft_top_k"])
        if dft_code is not None:
            dft = DftFormationEnergyWorkChain.get_builder_from_protocol(dft_code, options=dft_options, **inputs["dft"])
            set_builder_inputs(builder.dft, dft._inputs(prune=True))
        return builder

    # ------------------------------------------------------------------------------------------------
    def prepare_seeds(self):
        self.ctx.funnel = {}  # stage -> batch node; counted by the funnel_summary calcfunction
        failed = self.seeds_from_inputs()
        if failed is not None:
            return failed
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
                if "known_materials" in self.inputs:
                    kwargs["known_materials"] = self.inputs.known_materials
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

    def _hull_route(self) -> str:
        """``entries`` (given MP entries), ``known_materials`` (the known-materials or fetched-MP hull) or ``mlip``."""
        if "hull_reference_entries" in self.inputs:
            return "entries"
        return "known_materials" if "known_materials" in self.inputs or self.ctx.get("online_reference") else "mlip"

    def fetch_materials_project(self):
        """With an MP key: the relaxed candidates' chemical spaces from MP, cached per system and version."""
        from aiida_battgen.data.known_materials import find_mp_snapshot, store_mp_snapshot
        from battgen.known_materials import online
        from battgen.sources.materials_project import MaterialsProjectError, resolve_api_key

        mode = self.inputs.materials_project.value if "materials_project" in self.inputs else "off"
        if mode == "off" or "hull_reference_entries" in self.inputs:
            return None
        try:
            key = resolve_api_key()
        except MaterialsProjectError:
            self.report("no Materials Project API key: novelty and E_hull against the embedded known-materials "
                        "reference" if "known_materials" in self.inputs else "no Materials Project API key")
            return None
        systems = online.systems_to_fetch(online.candidate_systems(self.ctx.relaxed.get_batch().structures))
        try:
            version = online.database_version(key)
            cached = {system: find_mp_snapshot(system, version) for system in systems}
            missing = [system for system, node in cached.items() if node is None]
            fetched = online.fetch_systems(missing, key) if missing else {}
        except online.MaterialsProjectFetchError as exc:  # nothing fetched is kept
            self.report(str(exc))
            return self.exit_codes.ERROR_MATERIALS_PROJECT_FAILED.format(message=str(exc))
        for system in missing:  # stored only once every system has arrived
            cached[system] = store_mp_snapshot(system, version, online.snapshot_bytes(system, version, fetched[system]))
        self.report(f"Materials Project {version}: {len(systems)} chemical systems, {len(missing)} fetched, "
                    f"{len(systems) - len(missing)} from stored snapshots")
        snapshots = {f"s{index:03d}_" + system.replace("-", "_"): cached[system] for index, system in enumerate(systems)}
        outputs, node = self._run_calcfunction(merge_known_materials, "merge_known_materials", **snapshots)
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_MATERIALS_PROJECT_FAILED.format(message=node.exit_message)
        self.ctx.online_reference = outputs["result"] if isinstance(outputs, dict) else outputs
        return None

    def run_relaxations(self):
        """Relax the candidates and, for an MLIP-referenced hull, the references (elements + seeds)."""
        references = None
        if self._hull_route() == "mlip":
            elementals, node = self._run_calcfunction(elemental_references, "elemental_references",
                                                      candidates=self.ctx.current, seeds=self.ctx.seeds)
            if not node.is_finished_ok:
                self.report(f"elemental_references<{node.pk}> failed: {node.exit_message}")
                return self.exit_codes.ERROR_STABILITY_FAILED
            references, _ = self._run_calcfunction(merge_batches, "merge_references",
                                                   elements=elementals["structures"], seeds=self.ctx.seeds)
        futures = {}
        to_relax = [("candidates", self.ctx.current)]
        if self._hull_route() == "mlip":
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
        if self._hull_route() == "entries":
            reference = {"reference_entries": self.inputs.hull_reference_entries}
        elif self._hull_route() == "known_materials":
            reference = {"known_materials": self.ctx.get("online_reference") or self.inputs.known_materials}
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
        settings.pop("rank_hull_incomplete", None)  # a shortlist setting, see make_shortlist
        # MP-compatible references (known materials, MP entries): the MLIP's energies get what its training
        # target needs (battgen.known_materials.MLIP_CANDIDATE_COMPATIBILITY: none for CHGNet, MP2020 for M3GNet).
        from battgen.known_materials import candidate_compatibility_for

        mlip_candidate = candidate_compatibility_for(self.inputs.relax.relax.parameters.get("mlip", "chgnet"))
        if self._hull_route() == "known_materials":
            candidate = settings.get("candidate_compatibility", mlip_candidate)
            return orm.Dict({"candidate_compatibility": candidate,
                             **({"label": settings["label"]} if settings.get("label") else {})})
        entries_route = "hull_reference_entries" in self.inputs
        if settings.get("compatibility", "auto") == "auto":  # MP entries need MP2020; MLIP energies none
            settings["compatibility"] = "MP2020" if entries_route else None
        if entries_route:
            settings.setdefault("label", f"entries SinglefileData<{self.inputs.hull_reference_entries.pk}>")
            settings.setdefault("candidate_compatibility", mlip_candidate)
        elif not settings.get("label"):
            model = self.ctx.relax_references.outputs.output_parameters.get_dict()
            name = model.get("mlip") or model.get("model_name") or "mlip"
            version = model.get("package_version") or model.get("version") or ""
            settings["label"] = f"mlip:{name}-{version} (elemental + seed references relaxed with the same model)"
        return orm.Dict(settings)

    def make_shortlist(self):
        parameters = self.inputs.shortlist
        if self._hull_route() == "known_materials":
            settings = parameters.get_dict()
            equals = dict(settings.get("equals", {}))
            equals.setdefault("relaxed_matches_known", None)  # relaxed into a known structure: not new
            if not self.inputs.hull.get("rank_hull_incomplete", False):
                equals.setdefault("hull_incomplete", False)  # E_hull there is only a formation energy
            parameters = orm.Dict({**settings, "equals": equals})
        outputs, node = self._run_calcfunction(shortlist, "shortlist", structures=self.ctx.annotated,
                                               parameters=parameters)
        if not node.is_finished_ok:
            self.report(f"shortlist<{node.pk}> failed: {node.exit_message}")
            return self.exit_codes.ERROR_SHORTLIST_FAILED
        self.ctx.shortlist = outputs["selected"]
        self.out("shortlist", self.ctx.shortlist)
        self.ctx.funnel["shortlisted"] = self.ctx.shortlist

    def extract_candidates(self):
        """Each shortlisted row as a labelled StructureData (extras for one-line queries) and its properties."""
        group = None
        if "shortlist_group_label" in self.inputs:
            group, _ = orm.Group.collection.get_or_create(self.inputs.shortlist_group_label.value)
        campaign = self.campaign()
        candidates, properties = {}, {}
        for meta in self.ctx.shortlist.get_batch().meta:
            label = _output_label(meta["row_id"], meta["rank"])
            outputs, node = self._run_calcfunction(extract_structure, f"extract_{label}",
                                                   structures=self.ctx.shortlist, row_id=orm.Str(meta["row_id"]))
            if not node.is_finished_ok:
                self.report(f"extract_{label}<{node.pk}> failed for row {meta['row_id']!r}: {node.exit_message}")
                return self.exit_codes.ERROR_SHORTLIST_FAILED
            values = outputs["properties"].get_dict()
            outputs["structure"].base.extras.set_many({
                **{key: values.get(key) for key in CANDIDATE_EXTRAS},
                "formula": values["reduced_formula"],
                "campaign": campaign,
                "discovery_uuid": self.node.uuid,
            })
            candidates[label] = outputs["structure"]
            properties[label] = outputs["properties"]
        self.ctx.candidates = candidates  # in rank order
        self.out("candidates", candidates)
        self.out("candidate_properties", properties)
        if group is not None and candidates:
            group.add_nodes(list(candidates.values()))

    def campaign(self) -> str:
        """What groups this run's candidates: the run's label, else the shortlist group, else the run itself."""
        if self.node.label:
            return self.node.label
        if "shortlist_group_label" in self.inputs:
            return self.inputs.shortlist_group_label.value
        return f"{self.node.process_label}<{self.node.pk}>"

    def has_dft_stage(self):
        return bool(self.inputs.get("dft")) and bool(self.ctx.get("candidates"))

    def run_dft(self):
        """One battgen.dft.formation_energy per best shortlisted candidate (MP entries only for comparison)."""
        futures = {}
        for label in list(self.ctx.candidates)[: self.inputs.dft_top_k.value]:
            inputs = AttributeDict(self.exposed_inputs(DftFormationEnergyWorkChain, namespace="dft"))
            inputs.structure = self.ctx.candidates[label]
            inputs.metadata = {"call_link_label": f"dft_{label}"}
            if "hull_reference_entries" in self.inputs:
                inputs.mp_entries = self.inputs.hull_reference_entries
            futures[f"dft_{label}"] = self.submit(load_dft_formation_chain(), **inputs)
            self.report(f"launched DftFormationEnergyWorkChain<{futures[f'dft_{label}'].pk}> for {label}")
        return ToContext(**futures)

    def inspect_dft(self):
        failed = []
        energies, hulls, structures = {}, {}, {}
        for label in list(self.ctx.candidates)[: self.inputs.dft_top_k.value]:
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
        if self.ctx.shortlist.n_rows == 0:
            criteria = self.inputs.shortlist.get_dict()
            self.report(f"the shortlist is empty: none of the {self.ctx.annotated.n_rows} relaxed rows passed "
                        f"{criteria}; {self._closest_to_shortlist(criteria)}")
            return self.exit_codes.WARNING_EMPTY_SHORTLIST.format(criteria=criteria)
        return None

    def _closest_to_shortlist(self, criteria: dict) -> str:
        """The best value of each thresholded column among the relaxed rows (how far the cut was)."""
        batch = self.ctx.annotated.get_batch()
        parts = []
        for key, best in (("max_values", min), ("min_values", max)):
            for column in criteria.get(key) or {}:
                values = [v for v in batch.column(column) if isinstance(v, int | float) and not isinstance(v, bool)]
                parts.append(f"best {column} = {best(values):.4g}" if values else f"no row has a value for {column}")
        return "; ".join(parts) or "no thresholds were set"
