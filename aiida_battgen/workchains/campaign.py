"""``battgen.campaign``: one spec from a chemistry to ranked battery candidates, and the loop that learns.

Stages (each optional, from the validated spec, ``battgen.campaign.spec``):

1. source: the seed batch is given, or made from a snapshot by ``batch_from_snapshot``;
2. train: each generator with ``train:`` is trained by ``GeneratorTrainBaseWorkChain`` on the curated set,
   unless a finished training run on the same data (content sha256) with the same parameters exists: then
   its model is reused and no training CalcJob runs (``find_trained_model``);
3. rounds (``loop.iterations``): a ``DiscoveryWorkChain`` built by its own ``get_builder_from_protocol``
   (generation, screening, property screen, MLIP relaxation, hull, shortlist, DFT), then the shortlisted
   rows that match no earlier round's survivor (``screen_novelty`` against each earlier shortlist); when a
   round adds none the loop stops. Between rounds each trained generator is fine-tuned: its training set
   plus the new survivors (``campaign_finetune_set``, the survivors' batch an input) continues from the old
   run's checkpoint (``parent_folder`` = the old training's remote folder), so the new model's graph leads to
   the old one (extra ``battgen_parent_model_uuid`` too);
4. battery: capacity of every shortlist (``capacity``) and the insertion voltage of the best candidates
   (``InsertionPotentialWorkChain`` from its protocol);
5. summary: ``campaign_summary`` (funnel, rounds, per-candidate results); figures and tables come from
   ``aiida-battgen campaign report``.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_, while_
from aiida.plugins import CalculationFactory, DataFactory, WorkflowFactory

from aiida_battgen.workchains.seeds import SeedSourceMixin
from battgen.campaign.spec import TRAINABLE_GENERATORS, CampaignSpec, CampaignSpecError, parse_spec
from battgen.campaign.summary import output_label

StructureBatchData = DataFactory("battgen.structure_batch")
ModelData = DataFactory("battgen.model")
DiscoveryWorkChain = WorkflowFactory("battgen.discovery")
GeneratorTrainBaseWorkChain = WorkflowFactory("battgen.generator.train_base")
PropertyScreenWorkChain = WorkflowFactory("battgen.property_screen")
InsertionPotentialWorkChain = WorkflowFactory("battgen.insertion")

screen_novelty = CalculationFactory("battgen.screen_novelty")
capacity = CalculationFactory("battgen.capacity")
campaign_finetune_set = CalculationFactory("battgen.campaign_finetune_set")
campaign_summary = CalculationFactory("battgen.campaign_summary")

PARENT_MODEL_EXTRA = "battgen_parent_model_uuid"
CAMPAIGN_EXTRA = "battgen_campaign"
# Discovery exit codes after which the campaign goes on: nothing survived screening / an empty shortlist.
DISCOVERY_WARNINGS = (701, 702)


def find_trained_model(training_structures, parameters: dict[str, Any], parent_calc=None):
    """A model from a finished ``GeneratorTrainCalculation`` on a batch with the same content sha256 and the
    same parameters (and, for a fine-tuning, resumed from ``parent_calc``); ``None`` when there is none.

    This is the campaign's cache: a second campaign on the same data and settings trains nothing."""
    sha256 = training_structures.base.attributes.get("content_sha256")
    query = orm.QueryBuilder()
    query.append(StructureBatchData, filters={"attributes.content_sha256": sha256}, tag="batch")
    query.append(orm.CalcJobNode, with_incoming="batch", edge_filters={"label": "training_structures"},
                 filters={"attributes.process_label": "GeneratorTrainCalculation", "attributes.exit_status": 0},
                 tag="calc", project="*")
    query.append(ModelData, with_incoming="calc", edge_filters={"label": "model"}, project="*")
    query.order_by({"calc": {"ctime": "asc"}})
    for calc, model in query.iterall():
        if calc.inputs.parameters.get_dict() != parameters:
            continue
        parent = calc.inputs.parent_folder.creator if "parent_folder" in calc.inputs else None
        if (parent.uuid if parent is not None else None) != (parent_calc.uuid if parent_calc is not None else None):
            continue
        return model
    return None


def validate_spec_input(node, _):
    try:
        parse_spec(node.get_dict())
    except CampaignSpecError as exc:
        return str(exc)
    return None


def validate_inputs(inputs, _):
    try:
        spec = parse_spec(inputs["spec"].get_dict())
    except CampaignSpecError as exc:
        return str(exc)
    if "seed_structures" not in inputs and "snapshot" not in inputs:
        return "give either `seed_structures` (a structure batch) or `snapshot` (a source snapshot)"
    codes = inputs.get("codes", {})
    if "default" not in codes:
        return "give `codes.default` (the battgen code of every stage without its own)"
    models = inputs.get("generator_models", {})
    for name, generator in spec.generators.items():
        if name in TRAINABLE_GENERATORS and generator.train is None and name not in models:
            return f"generator {name!r} uses an existing model: give it as `generator_models.{name}`"
    if spec.dft.enabled and "dft" not in codes:
        return "the DFT stage is enabled: give `codes.dft` (pw.x or VASP)"
    if spec.hull.reference == "entries" and "hull_reference_entries" not in inputs:
        return "`hull.reference: entries` needs the `hull_reference_entries` input"
    return None


class CampaignWorkChain(SeedSourceMixin, WorkChain):
    """Source → (train) → rounds of discovery with fine-tuning on the survivors → battery → summary."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("spec", valid_type=orm.Dict, validator=validate_spec_input,
                   help="The campaign spec (battgen.campaign.spec.CampaignSpec as a mapping, units in the keys).")
        spec.input("seed_structures", valid_type=StructureBatchData, required=False,
                   help="Seed structures (built-in hosts, a file's structures).")
        spec.input("snapshot", valid_type=orm.SinglefileData, required=False,
                   help="A source snapshot (MP query or file) made into the seed batch by `batch_from_snapshot`.")
        spec.input("training_structures", valid_type=StructureBatchData, required=False,
                   help="Training set of the generators trained here (default: the seed batch); curated and "
                        "split by the training run (`dataset.filter`, `dataset.split`).")
        spec.input("known_materials", valid_type=orm.SinglefileData, required=False,
                   help="Known-materials reference (novelty, E_hull) for `hull.reference: known_materials`.")
        spec.input("hull_reference_entries", valid_type=orm.SinglefileData, required=False,
                   help="MP snapshot / entries for `hull.reference: entries`.")
        spec.input_namespace("codes", valid_type=orm.AbstractCode, dynamic=True,
                             help="Codes by stage: default (required), train, generate, predict, relax, battery "
                                  "(battgen CLI) and dft (pw.x or VASP).")
        spec.input_namespace("generator_models", valid_type=ModelData, dynamic=True, required=False,
                             help="Existing generator models by name (spec `model:` / `model_dir:`).")
        spec.input_namespace("predictor_models", valid_type=ModelData, dynamic=True, required=False,
                             help="Property-screen models by the protocol's labels (formation_energy, ...).")
        spec.input("shortlist_group_label", valid_type=orm.Str, required=False,
                   help="Group of the shortlisted StructureData (default battgen/campaign/<name>/shortlist).")
        spec.inputs.validator = validate_inputs

        spec.outline(
            cls.setup,
            cls.train_generators,
            cls.inspect_training,
            while_(cls.next_round)(
                cls.run_discovery,
                cls.inspect_discovery,
                if_(cls.should_finetune)(
                    cls.finetune_generators,
                    cls.inspect_training,
                ),
            ),
            if_(cls.has_battery_stage)(
                cls.run_battery,
                cls.inspect_battery,
            ),
            cls.results,
        )
        spec.output("summary", valid_type=orm.Dict,
                    help="Funnel per round, loop statistics (samples, survivors, hit rate per 1,000 samples, "
                         "novelty vs earlier rounds), per-candidate results (E_hull eV/atom, capacity mAh/g, "
                         "insertion voltage V, DFT Ef eV/atom).")
        spec.output("funnel", valid_type=orm.Dict, help="The last round's discovery funnel (structures per step).")
        spec.output_namespace("models", valid_type=ModelData, dynamic=True, required=False,
                              help="Generator models used, `<name>_r<NN>` (round NN's model).")
        spec.output_namespace("candidates", valid_type=orm.StructureData, dynamic=True, required=False,
                              help="Shortlisted candidates of every round, `r<NN>_rank_<rank>_<row id>`.")
        spec.output_namespace("candidate_properties", valid_type=orm.Dict, dynamic=True, required=False,
                              help="Each candidate's properties (units in the keys), same port names.")
        spec.output_namespace("shortlists", valid_type=StructureBatchData, dynamic=True, required=False,
                              help="Each round's shortlist batch, `r<NN>`.")
        spec.exit_code(501, "ERROR_SOURCE_FAILED", message="Turning the snapshot into seed structures failed.")
        spec.exit_code(502, "ERROR_TRAINING_FAILED", message="Training generator `{name}` failed: {message}")
        spec.exit_code(503, "ERROR_DISCOVERY_FAILED", message="Round {round} of the discovery failed: {message}")
        spec.exit_code(504, "ERROR_BATTERY_FAILED", message="The battery stage failed: {message}")
        spec.exit_code(505, "ERROR_LOOP_FAILED", message="Preparing the next round failed: {message}")

    # --------------------------------------------------------------------------------------------------
    @property
    def campaign_spec(self) -> CampaignSpec:
        return parse_spec(self.inputs.spec.get_dict())

    def _code(self, stage: str) -> orm.AbstractCode:
        return self.inputs.codes.get(stage, self.inputs.codes["default"])

    def setup(self):
        spec = self.campaign_spec
        self.ctx.round = 0
        self.ctx.stop = False
        self.ctx.rounds = []  # per round: {"discovery": uuid, "shortlist": uuid|None, "new": uuid|None}
        self.ctx.models = dict(self.inputs.get("generator_models", {}))  # name -> current ModelData
        self.ctx.model_history = {}  # "<name>_r<NN>" -> model
        self.ctx.training_sets = {}  # name -> the batch the current model was trained on
        self.ctx.pending_training = []
        self.ctx.group_label = (self.inputs.shortlist_group_label.value if "shortlist_group_label" in self.inputs
                                else f"battgen/campaign/{spec.name}/shortlist")
        failed = self.seeds_from_inputs()
        if failed is not None:
            return failed
        self.ctx.training = self.inputs.get("training_structures", self.ctx.seeds)
        self.report(f"campaign {spec.name!r}: stages {', '.join(spec.stages())}; {spec.loop.iterations} round(s) "
                    f"at most; seeds {self.ctx.seeds.n_rows} structures")
        return None

    # ----------------------------------------------------------------------------------------- training
    def _submit_training(self, name: str, training_structures, parameters: dict, parent_calc=None,
                         label: str = ""):
        """Reuse a model trained on the same data with the same settings, else submit the training."""
        existing = find_trained_model(training_structures, parameters, parent_calc)
        if existing is not None:
            self.report(f"generator {name}: reusing battgen.model<{existing.pk}> (same training data sha256 "
                        f"{training_structures.base.attributes.get('content_sha256')[:12]} and parameters)")
            return existing, None
        builder = GeneratorTrainBaseWorkChain.get_builder()
        builder.train.code = self._code("train")
        builder.train.training_structures = training_structures
        builder.train.parameters = orm.Dict(parameters)
        if parent_calc is not None:
            builder.train.parent_folder = parent_calc.outputs.remote_folder
        builder.metadata.call_link_label = label or f"train_{name}"
        future = self.submit(builder)
        self.report(f"launched GeneratorTrainBaseWorkChain<{future.pk}> for {name} on "
                    f"{training_structures.n_rows} structures")
        return None, future

    def _use_model(self, name: str, model, training_structures, parent=None) -> None:
        self.ctx.models[name] = model
        self.ctx.training_sets[name] = training_structures
        self.ctx.model_history[f"{name}_r{self.ctx.round + 1:02d}"] = model
        if parent is not None and model.base.extras.get(PARENT_MODEL_EXTRA, None) is None:
            model.base.extras.set(PARENT_MODEL_EXTRA, parent.uuid)

    def train_generators(self):
        spec = self.campaign_spec
        for name, model in self.ctx.models.items():  # given models are round 1's
            self.ctx.model_history[f"{name}_r01"] = model
        futures = {}
        for name in spec.trained_here():
            model, future = self._submit_training(name, self.ctx.training, spec.training_parameters(name))
            if model is not None:
                self._use_model(name, model, self.ctx.training)
            else:
                futures[f"train_{name}"] = future
        self.ctx.pending_training = [(key.removeprefix("train_"), key) for key in futures]
        self.ctx.pending_parents = {}
        self.ctx.pending_sets = {key.removeprefix("train_"): self.ctx.training for key in futures}
        return ToContext(**futures)

    def inspect_training(self):
        for name, key in self.ctx.pending_training:
            node = self.ctx[key]
            if not node.is_finished_ok or "model" not in node.outputs:
                return self.exit_codes.ERROR_TRAINING_FAILED.format(name=name, message=node.exit_message)
            parent = self.ctx.pending_parents.get(name)
            self._use_model(name, node.outputs.model, self.ctx.pending_sets[name],
                            orm.load_node(parent) if parent else None)
            self.report(f"generator {name}: trained battgen.model<{node.outputs.model.pk}>")
        self.ctx.pending_training = []
        return None

    # ------------------------------------------------------------------------------------------- rounds
    def next_round(self):
        return not self.ctx.stop and self.ctx.round < self.campaign_spec.loop.iterations

    def _round_generators(self) -> list[str]:
        """Round 1 runs every generator; later rounds only those that learn (substitution would repeat)."""
        spec = self.campaign_spec
        if self.ctx.round == 1:
            return list(spec.generators)
        return [name for name in spec.generators if name in TRAINABLE_GENERATORS]

    def run_discovery(self):
        spec = self.campaign_spec
        self.ctx.round += 1
        names = self._round_generators()
        overrides = spec.discovery_overrides(names)
        overrides["seed"] = spec.seed + self.ctx.round - 1
        overrides["known_materials"] = None  # the node is this chain's input (nothing stored here)
        builder = DiscoveryWorkChain.get_builder_from_protocol(
            self._code("relax"), seed_structures=self.ctx.seeds, protocol="fast", overrides=overrides,
            dft_code=self.inputs.codes.get("dft"))
        if spec.relax.device != "cpu":
            builder.relax.relax.parameters = orm.Dict({**builder.relax.relax.parameters.get_dict(),
                                                       "device": spec.relax.device})
        if spec.hull.reference == "known_materials" and "known_materials" in self.inputs:
            builder.known_materials = self.inputs.known_materials
        if spec.hull.reference == "entries":
            builder.hull_reference_entries = self.inputs.hull_reference_entries
        models = {name: self.ctx.models[name] for name in names if name in TRAINABLE_GENERATORS}
        if models:
            builder.generator_models = models
            builder.generate.generate.code = self._code("generate")
        if spec.property_screen is not None and spec.property_screen.enabled:
            inputs = PropertyScreenWorkChain.get_protocol_inputs(spec.property_screen.protocol,
                                                                 spec.property_screen.overrides)
            builder.property_screen.parameters = orm.Dict(inputs["parameters"])
            builder.property_screen.models = dict(self.inputs.get("predictor_models", {}))
            builder.property_screen.predict.predict.code = self._code("predict")
        builder.shortlist_group_label = orm.Str(self.ctx.group_label)
        builder.metadata.label = f"{spec.name} round {self.ctx.round}"
        builder.metadata.call_link_label = f"round_{self.ctx.round:02d}"
        future = self.submit(builder)
        self.report(f"round {self.ctx.round}: launched DiscoveryWorkChain<{future.pk}> with {', '.join(names)}")
        return ToContext(**{f"discovery_{self.ctx.round:02d}": future})

    def inspect_discovery(self):
        index = self.ctx.round
        node = self.ctx[f"discovery_{index:02d}"]
        if not node.is_finished_ok and node.exit_status not in DISCOVERY_WARNINGS:
            return self.exit_codes.ERROR_DISCOVERY_FAILED.format(round=index, message=node.exit_message)
        record = {"discovery": node.uuid, "shortlist": None, "new": None}
        shortlist = node.outputs.shortlist if "shortlist" in node.outputs else None
        new = shortlist
        if shortlist is not None and shortlist.n_rows:
            for earlier in self.ctx.rounds:  # rows matching an earlier round's survivor are not new
                if earlier["shortlist"] is None or new.n_rows == 0:
                    continue
                outputs, calc = self._run_calcfunction(
                    screen_novelty, f"novelty_r{index:02d}_vs_r{earlier['round']:02d}", structures=new,
                    reference=orm.load_node(earlier["shortlist"]), parameters=orm.Dict(self.campaign_spec.screening.novelty))
                if not calc.is_finished_ok:
                    return self.exit_codes.ERROR_LOOP_FAILED.format(message=calc.exit_message)
                new = outputs["passed"]
            record["shortlist"] = shortlist.uuid
            record["new"] = new.uuid
        record["round"] = index
        self.ctx.rounds.append(record)
        n_new = new.n_rows if new is not None else 0
        samples = node.outputs.generated_structures.n_rows if "generated_structures" in node.outputs else 0
        self.report(f"round {index}: {samples} samples, {shortlist.n_rows if shortlist is not None else 0} "
                    f"survivors, {n_new} new")
        if n_new == 0 and self.campaign_spec.loop.stop_when_no_new_survivor and index < self.campaign_spec.loop.iterations:
            self.report(f"round {index} added no new survivor: the loop stops")
            self.ctx.stop = True
        return None

    def _finetunable(self) -> list[str]:
        """Generators whose current model came from a training run here (its checkpoint can be continued)."""
        names = []
        for name, model in self.ctx.models.items():
            creator = model.creator
            if creator is not None and creator.process_label == "GeneratorTrainCalculation" \
                    and name in self.ctx.training_sets:
                names.append(name)
        return names

    def should_finetune(self):
        if self.ctx.stop or self.ctx.round >= self.campaign_spec.loop.iterations:
            return False
        if not self._finetunable():
            self.report("no generator trained in this campaign to fine-tune: the loop stops")
            self.ctx.stop = True
            return False
        return True

    def finetune_generators(self):
        spec = self.campaign_spec
        index = self.ctx.round
        survivors = orm.load_node(self.ctx.rounds[-1]["new"])
        futures, self.ctx.pending_parents, self.ctx.pending_sets = {}, {}, {}
        for name in self._finetunable():
            old_model = self.ctx.models[name]
            old_calc = old_model.creator
            outputs, calc = self._run_calcfunction(
                campaign_finetune_set, f"finetune_set_{name}_r{index + 1:02d}",
                previous=self.ctx.training_sets[name], survivors=survivors, round_index=orm.Int(index))
            if not calc.is_finished_ok:
                return self.exit_codes.ERROR_LOOP_FAILED.format(message=calc.exit_message)
            training = outputs["structures"]
            parameters = old_calc.inputs.parameters.get_dict()
            hyper = dict(parameters.get("hyperparameters") or {})
            done = hyper.get("max_steps") or (old_model.base.attributes.get("training") or {}).get("steps") or 0
            hyper["max_steps"] = int(done) + spec.generators[name].train.finetune_steps \
                if spec.generators[name].train is not None else int(done) + 20
            parameters["hyperparameters"] = hyper
            model, future = self._submit_training(name, training, parameters, parent_calc=old_calc,
                                                  label=f"finetune_{name}_r{index + 1:02d}")
            if model is not None:
                self.ctx.models[name] = model
                self.ctx.training_sets[name] = training
                self.ctx.model_history[f"{name}_r{index + 1:02d}"] = model
                continue
            key = f"finetune_{name}"
            futures[key] = future
            self.ctx.pending_parents[name] = old_model.uuid
            self.ctx.pending_sets[name] = training
        self.ctx.pending_training = [(key.removeprefix("finetune_"), key) for key in futures]
        return ToContext(**futures)

    # ------------------------------------------------------------------------------------------ battery
    def has_battery_stage(self):
        return self.campaign_spec.battery.enabled and any(r["shortlist"] for r in self.ctx.rounds)

    def _all_candidates(self) -> dict[str, tuple[orm.StructureData, orm.Dict]]:
        """Every round's candidates by campaign port name, best E_hull first."""
        found = []
        for record in self.ctx.rounds:
            node = orm.load_node(record["discovery"])
            if "candidates" not in node.outputs:
                continue
            for label, structure in node.outputs.candidates.items():
                properties = node.outputs.candidate_properties[label]
                rank = int(properties.get("rank", 0))
                name = output_label(properties["row_id"], rank, record["round"])
                found.append((properties.get("e_above_hull_eV_per_atom") or 0.0, name, structure, properties))
        found.sort(key=lambda item: (item[0], item[1]))
        return {name: (structure, properties) for _, name, structure, properties in found}

    def run_battery(self):
        battery = self.campaign_spec.battery
        self.ctx.capacities = {}
        for record in self.ctx.rounds:
            if not record["shortlist"]:
                continue
            outputs, node = self._run_calcfunction(
                capacity, f"capacity_r{record['round']:02d}", structures=orm.load_node(record["shortlist"]),
                parameters=orm.Dict({"working_ion": battery.working_ion}))
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_BATTERY_FAILED.format(message=node.exit_message)
            self.ctx.capacities[record["round"]] = outputs["structures"].uuid
        futures = {}
        if "mlip" in battery.voltage_from:
            for name, (structure, _) in list(self._all_candidates().items())[: battery.insertion_top_k]:
                builder = InsertionPotentialWorkChain.get_builder_from_protocol(
                    self._code("battery"), structure, protocol=battery.insertion_protocol,
                    overrides={"insertion": {"parameters": {"ions": battery.insertion_ions or [battery.working_ion],
                                                            "mlip": self.campaign_spec.relax.mlip}}})
                builder.metadata.call_link_label = f"insertion_{name}"
                futures[f"insertion_{name}"] = self.submit(builder)
        self.ctx.insertions = sorted(futures)
        return ToContext(**futures)

    def inspect_battery(self):
        for key in self.ctx.insertions:
            node = self.ctx[key]
            if not node.is_finished_ok:
                self.report(f"insertion voltage of {key.removeprefix('insertion_')} <{node.pk}> failed: "
                            f"{node.exit_message}")
        return None

    # ------------------------------------------------------------------------------------------ results
    def results(self):
        spec = self.campaign_spec
        nodes: dict[str, orm.Data] = {}
        candidates, properties, shortlists = {}, {}, {}
        funnel = None
        for record in self.ctx.rounds:
            index = record["round"]
            node = orm.load_node(record["discovery"])
            prefix = f"r{index:02d}"
            if "generated_structures" in node.outputs:
                nodes[f"{prefix}_generated"] = node.outputs.generated_structures
            if "funnel" in node.outputs:
                nodes[f"{prefix}_funnel"] = funnel = node.outputs.funnel
            if record["shortlist"]:
                nodes[f"{prefix}_shortlist"] = shortlists[prefix] = orm.load_node(record["shortlist"])
                nodes[f"{prefix}_new"] = orm.load_node(record["new"])
            if "candidates" in node.outputs:
                for label, structure in node.outputs.candidates.items():
                    candidates[f"{prefix}_{label}"] = structure
                    properties[f"{prefix}_{label}"] = node.outputs.candidate_properties[label]
                    structure.base.extras.set(CAMPAIGN_EXTRA, spec.name)
            for label, energy in (node.outputs.dft_formation_energy.items()
                                  if "dft_formation_energy" in node.outputs else []):
                nodes[f"dft_ef_{prefix}_{label}"] = energy
        for index, uuid in self.ctx.get("capacities", {}).items():
            nodes[f"capacity_r{int(index):02d}"] = orm.load_node(uuid)
        for key in self.ctx.get("insertions", []):
            node = self.ctx[key]
            if node.is_finished_ok and "output_parameters" in node.outputs:
                nodes[f"voltage_{key.removeprefix('insertion_')}"] = node.outputs.output_parameters
        models = {key: model for key, model in self.ctx.model_history.items()}
        parameters = orm.Dict({
            "name": spec.name, "shortlist_group": self.ctx.group_label, "stages": spec.stages(),
            "models": {key: {"uuid": model.uuid, "pk": model.pk, "architecture": model.architecture,
                             "content_sha256": model.content_sha256,
                             "parent_model_uuid": model.base.extras.get(PARENT_MODEL_EXTRA, None)}
                       for key, model in models.items()},
        })
        summary, _ = self._run_calcfunction(campaign_summary, "campaign_summary", parameters=parameters, **nodes)
        self.out("summary", summary)
        if funnel is not None:
            self.out("funnel", funnel)
        if models:
            self.out("models", models)
        if candidates:
            self.out("candidates", candidates)
            self.out("candidate_properties", properties)
        if shortlists:
            self.out("shortlists", shortlists)
        rounds = summary["rounds"]
        self.report("rounds: " + "; ".join(f"r{r['round']} samples={r['samples']} survivors={r['survivors']} "
                                           f"new={r['new_survivors']} hit_rate_per_1000={r['hit_rate_per_1000']}"
                                           for r in rounds))
        return None
