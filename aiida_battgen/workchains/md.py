"""MLIP molecular dynamics work chains.

``battgen.mlip.md_base`` (MdBaseWorkChain), the restart wrapper of MdCalculation:

* 410 wall-time budget reached, 120 scheduler walltime, 140 node failure, 300/302 outputs lost -> continue
  from the last complete chunk (``parent_folder`` = the previous remote folder), bounded by ``max_iterations``;
* 301 an output unreadable -> continue from the last complete chunk once, then fail (501);
* 411 unstable (temperature runaway, NaN energies/forces) -> continue from the last complete chunk with half
  the timestep, down to ``defaults.min_timestep_fs``; below it fail with 510 ERROR_TIMESTEP_TOO_SMALL;
* 412 the diffusion analysis failed -> 511 ERROR_ANALYSIS_FAILED (the same trajectory would fail again);
* 303/304 -> the CLI rejected the input or crashed: deterministic, fail at once (502).

The 1xx/3xx handlers are :class:`~aiida_battgen.workchains.restart.BattgenRestartWorkChain`'s. Protocol:
``protocols/md_base.yaml``.

``battgen.conductivity`` (ConductivityWorkChain): one MdBaseWorkChain per temperature, in parallel, then the
``arrhenius_fit`` calcfunction (Ea, σ(300 K)) when there are two or more temperatures.
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ProcessHandlerReport, ToContext, WorkChain, if_, process_handler

from aiida_battgen.calculations.functions.arrhenius_fit import arrhenius_fit
from aiida_battgen.calculations.md import MdCalculation
from aiida_battgen.workchains.protocols.utils import ProtocolMixin
from aiida_battgen.workchains.restart import BattgenRestartWorkChain

from battgen.contracts.md import DEFAULT_TIMESTEP_FS  # battgen md's default (1 fs with H)

MIN_TIMESTEP_FS = 0.25


class MdBaseWorkChain(ProtocolMixin, BattgenRestartWorkChain):
    """Run MD to completion across walltime kills; smaller timesteps after instabilities."""

    _process_class = MdCalculation
    _namespace = "md"
    _protocol_file = "md_base.yaml"

    defaults = AttributeDict({
        **BattgenRestartWorkChain.defaults,
        "walltime_factor": 1.0,  # every call continues from the last chunk: no need for a longer walltime
        "outputs_lost_retries": None,  # each continuation makes progress; max_iterations bounds them
        "min_timestep_fs": MIN_TIMESTEP_FS,
        "timestep_factor": 0.5,  # timestep multiplier after an instability
    })

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.exit_code(510, "ERROR_TIMESTEP_TOO_SMALL",
                       message="The MD is unstable (exit {status}) at timestep {timestep_fs} fs; a smaller one would "
                               "be below the minimum {min_timestep_fs} fs.")
        spec.exit_code(511, "ERROR_ANALYSIS_FAILED",
                       message="The diffusion analysis failed (exit {status}); the same trajectory would fail again.")

    @classmethod
    def get_builder_from_protocol(cls, code, structure=None, protocol=None, overrides=None, options=None):
        """Builder with the protocol's ``md.parameters`` and ``md.analysis`` (``overrides`` mirror the ports,
        unknown keys rejected); ``options`` go to ``md.metadata.options``. The caller adds temperature_K and
        working_ion."""
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        builder.md.code = code
        if structure is not None:
            builder.md.structure = structure
        builder.md.parameters = orm.Dict(inputs["md"]["parameters"])
        builder.md.analysis = orm.Dict(inputs["md"]["analysis"])
        builder.max_iterations = orm.Int(inputs["max_iterations"])
        if options:
            for key, value in options.items():  # keep the CalcJob's defaults (resources ...)
                builder.md.metadata.options[key] = value
        return builder

    def _continue_from(self, node, **parameter_updates) -> None:
        self.resume_from_checkpoint(node)
        if parameter_updates:
            self.ctx.inputs.parameters = orm.Dict({**self.ctx.inputs.parameters.get_dict(), **parameter_updates})

    @process_handler(priority=620, exit_codes=[MdCalculation.exit_codes.WARNING_MD_INCOMPLETE])
    def handle_incomplete(self, node):
        """The wall-time budget stopped the run cleanly: continue from the last complete chunk."""
        self._continue_from(node)
        self.report_error_handled(node, "continuing from the last complete trajectory chunk")
        return ProcessHandlerReport(True)

    @process_handler(priority=580, exit_codes=[MdCalculation.exit_codes.ERROR_MD_UNSTABLE])
    def handle_unstable(self, node):
        """Temperature runaway or NaN: continue from the last complete chunk with a smaller timestep."""
        timestep = self.ctx.inputs.parameters.get_dict().get("timestep_fs") or node.outputs.output_parameters[
            "md"].get("timestep_fs") or DEFAULT_TIMESTEP_FS
        smaller = timestep * self.defaults.timestep_factor
        if smaller < self.defaults.min_timestep_fs:
            self.report_error_handled(node, f"timestep already {timestep} fs: aborting")
            return ProcessHandlerReport(True, self.exit_codes.ERROR_TIMESTEP_TOO_SMALL.format(
                status=node.exit_status, timestep_fs=timestep, min_timestep_fs=self.defaults.min_timestep_fs))
        self._continue_from(node, timestep_fs=smaller)
        self.report_error_handled(node, f"continuing from the last complete chunk with timestep {smaller} fs")
        return ProcessHandlerReport(True)

    @process_handler(priority=570, exit_codes=[MdCalculation.exit_codes.ERROR_ANALYSIS_FAILED])
    def handle_analysis_failed(self, node):
        """The diffusion analysis of a finished trajectory failed: deterministic."""
        self.report_error_handled(node, "aborting: the analysis of the same trajectory would fail again")
        return ProcessHandlerReport(True, self.exit_codes.ERROR_ANALYSIS_FAILED.format(status=node.exit_status))


def validate_temperatures(value: orm.List, _=None) -> str | None:
    temps = value.get_list()
    if not temps or any(isinstance(t, bool) or not isinstance(t, int | float) or t <= 0 for t in temps):
        return f"`temperatures_K` must be a non-empty list of positive numbers (K), got {temps!r}"
    if len(set(temps)) != len(temps):
        return "`temperatures_K` has duplicates"
    return None


class ConductivityWorkChain(WorkChain):
    """σ(T) and D(T) of a working ion from MLIP MD at several temperatures; Ea and σ(300 K) by Arrhenius."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(MdBaseWorkChain, namespace="md", exclude=("md.parameters",),
                           namespace_options={"help": "MD inputs (structure, code, model, analysis, options)."})
        spec.input("parameters", valid_type=orm.Dict,
                   help="`battgen md` settings shared by every temperature (working_ion is required).")
        spec.input("temperatures_K", valid_type=orm.List, validator=validate_temperatures,
                   help="Temperatures of the MD runs (K), run in parallel.")
        spec.input("extrapolate_to_K", valid_type=orm.Float, default=lambda: orm.Float(300.0),
                   help="Temperature (K) the Arrhenius fit extrapolates σ to.")
        spec.outline(cls.run_temperatures, cls.inspect_temperatures, if_(cls.several_temperatures)(cls.fit), cls.results)
        spec.output_namespace("runs", valid_type=orm.Dict, dynamic=True,
                              help="Per temperature (T_<K>): D (cm²/s), σ (mS/cm), hops and flags.")
        spec.output("arrhenius", valid_type=orm.Dict, required=False,
                    help="Ea (eV) ± err, D and σ extrapolated to extrapolate_to_K (cm²/s, mS/cm) ± err.")
        spec.output("arrhenius_figure", valid_type=orm.SinglefileData, required=False, help="ln D vs 1000/T (PNG).")
        spec.exit_code(530, "ERROR_MD_FAILED", message="The MD at {temperature} K failed: {message}")
        spec.exit_code(531, "ERROR_FIT_FAILED", message="The Arrhenius fit failed: {message}")

    def run_temperatures(self):
        futures = {}
        for temperature in self.inputs.temperatures_K.get_list():
            inputs = AttributeDict(self.exposed_inputs(MdBaseWorkChain, namespace="md"))
            inputs.md = AttributeDict(inputs.md)
            inputs.md.parameters = orm.Dict({**self.inputs.parameters.get_dict(), "temperature_K": float(temperature)})
            if "analysis" not in inputs.md:
                inputs.md.analysis = orm.Dict({})
            label = f"T_{int(round(temperature))}"
            inputs.metadata = {"call_link_label": f"md_{label}"}
            futures[label] = self.submit(MdBaseWorkChain, **inputs)
            self.report(f"launched MdBaseWorkChain<{futures[label].pk}> at {temperature} K")
        return ToContext(**futures)

    def inspect_temperatures(self):
        self.ctx.labels = sorted(k for k in self.ctx if k.startswith("T_"))
        for label in self.ctx.labels:
            node = self.ctx[label]
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_MD_FAILED.format(temperature=label[2:], message=node.exit_message)
            self.out(f"runs.{label}", node.outputs.output_parameters)

    def several_temperatures(self):
        return len(self.ctx.labels) >= 2

    def fit(self):
        runs = {label: self.ctx[label].outputs.output_parameters for label in self.ctx.labels}
        outputs, node = arrhenius_fit.run_get_node(extrapolate_to_K=self.inputs.extrapolate_to_K, **runs,
                                                   metadata={"call_link_label": "arrhenius_fit"})
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_FIT_FAILED.format(message=node.exit_message)
        self.out("arrhenius", outputs["arrhenius"])
        self.out("arrhenius_figure", outputs["figure"])

    def results(self):
        summary = ", ".join(
            f"{label[2:]} K: σ={self.ctx[label].outputs.output_parameters.get('conductivity_mS_per_cm')} mS/cm"
            for label in self.ctx.labels)
        self.report(summary)
