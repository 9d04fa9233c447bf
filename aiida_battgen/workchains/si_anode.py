"""``battgen.si_anode`` (SiAnodeWorkChain): which Si-alloy anodes keep their Li channels across delithiation
(seed 004 §2-3).

source (``snapshot`` → ``batch_from_snapshot`` keeping Li–Si compounds, or a ``structures`` batch)
  ─► ``capacity`` (gravimetric capacity of removing every Li, host basis by default)
  ─► ``capacity_filter`` (``shortlist``: capacity ≥ min_capacity_mAh_per_g, seed 1500 mAh/g; best first)
  ─► ``si_anode`` (SiAnodeBaseWorkChain → SiAnodeCalculation: 30 seeded delithiations per compound, MLIP
     relaxation, capacity and channel radius per configuration)
  ─► ``channel_radius_slope`` (calcfunction: slope of channel radius vs state of charge ± standard error,
     ranking by |slope|, figure) → outputs.

SiAnodeBaseWorkChain (restart wrapper, no entry point of its own):

* 410 wall-time budget or SIGTERM, 120 scheduler walltime, 300/302 outputs or summary missing (a kill
  without SIGTERM) → continue from the checkpoint in the previous remote folder (finished configurations
  are not relaxed again; every call makes progress, ``max_iterations`` bounds the number of calls);
* 140 node failure → continue from the checkpoint (``max_iterations`` bounds the calls);
* 301 an output unreadable → continue from the checkpoint once, then fail (501);
* 303/304 the CLI rejected its input or crashed → deterministic, fail at once (502).
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ProcessHandlerReport, ToContext, WorkChain, if_, process_handler
from aiida.plugins import CalculationFactory, DataFactory

from aiida_battgen.calculations.si_anode import SiAnodeCalculation, validate_si_anode_parameters
from aiida_battgen.workchains.protocols.utils import ProtocolMixin, recursive_merge, relax_settings
from aiida_battgen.workchains.restart import BattgenRestartWorkChain

StructureBatchData = DataFactory("battgen.structure_batch")
SourceSnapshotData = DataFactory("battgen.snapshot")


class SiAnodeBaseWorkChain(BattgenRestartWorkChain):
    """Run SiAnodeCalculation to completion across wall-time stops, resuming from its checkpoint."""

    _process_class = SiAnodeCalculation
    _namespace = "si_anode"

    defaults = AttributeDict({
        **BattgenRestartWorkChain.defaults,
        "walltime_factor": 1.0,  # every call resumes from the checkpoint: no need for a longer walltime
        "outputs_lost_retries": None,  # each continuation makes progress; max_iterations bounds them
    })

    @process_handler(priority=620, exit_codes=[SiAnodeCalculation.exit_codes.WARNING_INCOMPLETE])
    def handle_incomplete(self, node):
        """Stopped cleanly at the wall-time budget: continue from the checkpoint."""
        self.resume_from_checkpoint(node)
        self.report_error_handled(node, "continuing from the checkpoint of the finished configurations")
        return ProcessHandlerReport(True)

    # 120 walltime, 140 node failure, 300/302 outputs lost (continue from the checkpoint), 301 (once, then 501),
    # 303/304 CLI rejected (502): BattgenRestartWorkChain


def validate_inputs(inputs, _=None) -> str | None:
    if ("snapshot" in inputs) == ("structures" in inputs):
        return "give exactly one source: `snapshot` (MP query / file) or `structures` (a batch)"
    return None


class SiAnodeWorkChain(ProtocolMixin, WorkChain):
    """Capacity filter → delithiated configurations relaxed by an MLIP → channel radius vs SOC slope → ranking."""

    _protocol_file = "si_anode.yaml"

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("snapshot", valid_type=SourceSnapshotData, required=False,
                   help="Source of compounds: an MP snapshot (battgen query-mp) or a structure file; Li–Si "
                        "compounds are read from it.")
        spec.input("structures", valid_type=StructureBatchData, required=False,
                   help="Source of compounds as a batch (fully lithiated structures).")
        spec.input("parameters", valid_type=orm.Dict, validator=validate_si_anode_parameters,
                   help="`battgen si-anode` settings (see the protocol si_anode.yaml; units in the names: "
                        "min_capacity_mAh_per_g in mAh/g, fmax in eV/Å, max_wall_time_s in s).")
        spec.input("code", valid_type=orm.AbstractCode, help="The battgen code.")
        spec.input("options", valid_type=orm.Dict, required=False,
                   help="metadata.options of the SiAnodeCalculation (resources, max_wallclock_seconds in s ...).")
        spec.input("max_iterations", valid_type=orm.Int, default=lambda: orm.Int(5),
                   help="Most SiAnodeCalculation submissions (each resumes from the checkpoint of the last).")
        spec.inputs.validator = validate_inputs
        spec.outline(
            if_(cls.has_snapshot)(cls.read_snapshot),
            cls.filter_capacity,
            if_(cls.no_candidates)(cls.report_no_candidates),
            cls.run_si_anode,
            cls.inspect_si_anode,
            cls.fit_slopes,
        )
        spec.output("candidates", valid_type=StructureBatchData,
                    help="Compounds above the capacity threshold, with gravimetric_capacity_mAh_per_g (mAh/g).")
        spec.output("relaxed_structures", valid_type=StructureBatchData,
                    help="Every relaxed configuration (state_of_charge, removed_site_indices, channel_radius_A in Å, "
                         "gravimetric_capacity_mAh_per_g in mAh/g, energy_per_atom_eV in eV/atom).")
        spec.output("configurations", valid_type=orm.ArrayData,
                    help="Per-configuration table: state_of_charge (0-1), channel_radius_A (Å), capacity (mAh/g) ...")
        spec.output("slopes", valid_type=orm.Dict,
                    help="Per compound: slope_A_per_unit_soc ± slope_err_A_per_unit_soc (Å per unit SOC = Å/100 % "
                         "SOC), intercept_A (Å), Pearson r, Spearman ρ, n_points.")
        spec.output("ranking", valid_type=orm.Dict, help="Compounds by the absolute slope, ascending (most stable channel first).")
        spec.output("figure", valid_type=orm.SinglefileData,
                    help="Channel radius (Å) vs SOC per compound with fits (PNG).")
        spec.exit_code(350, "ERROR_SOURCE_UNREADABLE", message="The source could not be read: {message}")
        spec.exit_code(351, "ERROR_NO_CANDIDATES",
                       message="No compound contains Li and the host element with a capacity of at least "
                               "{bound} mAh/g.")
        spec.exit_code(352, "ERROR_CAPACITY_FAILED", message="The capacity step failed: {message}")
        spec.exit_code(550, "ERROR_SI_ANODE_FAILED", message="The Si-anode calculation failed: {message}")
        spec.exit_code(551, "ERROR_FIT_FAILED", message="The slope fit failed: {message}")

    @classmethod
    def compose_protocol_inputs(cls, protocol, inputs):
        """``parameters.mlip`` and ``parameters.fmax`` from the relax base protocol (``si_anode_seed004`` →
        ``balanced``); what si_anode.yaml states itself wins."""
        return recursive_merge({"parameters": relax_settings(protocol)}, inputs, strict=False)

    @classmethod
    def get_builder_from_protocol(cls, code, structures=None, snapshot=None, protocol=None, overrides=None,
                                  options=None):
        """Builder with the protocol's parameters (``overrides`` deep-merged, unknown keys rejected); ``options``
        update the protocol's metadata.options."""
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        builder.code = code
        if structures is not None:
            builder.structures = structures
        if snapshot is not None:
            builder.snapshot = snapshot
        builder.parameters = orm.Dict(inputs["parameters"])
        builder.options = orm.Dict({**inputs.get("options", {}), **(options or {})})
        return builder

    # ------------------------------------------------------------------------------------------------
    def _calcfunction(self, name, label, **kwargs):
        return CalculationFactory(name).run_get_node(**kwargs, metadata={"call_link_label": label})

    def has_snapshot(self):
        return "snapshot" in self.inputs

    def read_snapshot(self):
        settings = self.inputs.parameters.get_dict()
        filters = {"elements": [settings.get("working_ion", "Li"), settings.get("host_element", "Si")]}
        if settings.get("max_sites"):
            filters["max_sites"] = settings["max_sites"]
        outputs, node = self._calcfunction("battgen.batch_from_snapshot", "read_source", snapshot=self.inputs.snapshot,
                                           parameters=orm.Dict(filters))
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_SOURCE_UNREADABLE.format(message=node.exit_message)
        self.ctx.source = outputs["structures"]

    def filter_capacity(self):
        settings = self.inputs.parameters.get_dict()
        source = self.ctx.source if "source" in self.ctx else self.inputs.structures
        outputs, node = self._calcfunction(
            "battgen.capacity", "capacity", structures=source,
            parameters=orm.Dict({"working_ion": settings.get("working_ion", "Li"), "fraction": 1.0,
                                 "basis": settings.get("capacity_basis", "host")}))
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_CAPACITY_FAILED.format(message=node.exit_message)
        self.ctx.bound = float(settings.get("min_capacity_mAh_per_g", 1500.0))
        selection = {"min_values": {"gravimetric_capacity_mAh_per_g": self.ctx.bound},
                     "sort_by": "gravimetric_capacity_mAh_per_g", "ascending": False}
        if settings.get("max_compounds"):
            selection["top_k"] = settings["max_compounds"]
        selected, node = self._calcfunction("battgen.shortlist", "capacity_filter", structures=outputs["structures"],
                                            parameters=orm.Dict(selection))
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_CAPACITY_FAILED.format(message=node.exit_message)
        self.ctx.candidates = selected["selected"]
        self.out("candidates", self.ctx.candidates)
        self.report(f"{self.ctx.candidates.n_rows} of {source.n_rows} compounds have a capacity of at least "
                    f"{self.ctx.bound:g} mAh/g")

    def no_candidates(self):
        return self.ctx.candidates.n_rows == 0

    def report_no_candidates(self):
        return self.exit_codes.ERROR_NO_CANDIDATES.format(bound=self.ctx.bound)

    def run_si_anode(self):
        inputs = {
            "si_anode": {"code": self.inputs.code, "structures": self.ctx.candidates,
                         "parameters": self.inputs.parameters},
            "max_iterations": self.inputs.max_iterations,
            "metadata": {"call_link_label": "si_anode"},
        }
        if "options" in self.inputs:
            inputs["si_anode"]["metadata"] = {"options": self.inputs.options.get_dict()}
        node = self.submit(SiAnodeBaseWorkChain, **inputs)
        self.report(f"launched SiAnodeBaseWorkChain<{node.pk}> for {self.ctx.candidates.n_rows} compound(s)")
        return ToContext(si_anode=node)

    def inspect_si_anode(self):
        node = self.ctx.si_anode
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_SI_ANODE_FAILED.format(message=node.exit_message)
        self.out("relaxed_structures", node.outputs.relaxed_structures)
        self.out("configurations", node.outputs.configurations)

    def fit_slopes(self):
        outputs, node = self._calcfunction("battgen.channel_radius_slope", "channel_radius_slope",
                                           configurations=self.ctx.si_anode.outputs.configurations)
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_FIT_FAILED.format(message=node.exit_message)
        self.out("slopes", outputs["slopes"])
        self.out("ranking", outputs["ranking"])
        self.out("figure", outputs["figure"])
        best = next((e for e in outputs["ranking"]["ranking"] if e["rank"]), None)
        if best:
            self.report(f"most stable channel: {best['compound']} slope {best['slope_A_per_unit_soc']:.3f} ± "
                        f"{best['slope_err_A_per_unit_soc']:.3f} Å per unit SOC")
