"""``battgen.dft.relax``: one DFT relaxation interface, two engines (the engine is an input).

* ``engine = vasp``: aiida-vasp's ``vasp.v2.relax`` work chain (namespace ``vasp``), which owns the INCAR
  logic, the relaxation-convergence loop and the VASP error handlers (restarts on unfinished / unconverged
  runs). POTCARs come from an aiida-vasp POTCAR family chosen by name; POTCAR files are linked by hash, not
  by provenance links, so an archive of the run holds no licensed content.
* ``engine = quantumespresso``: aiida-quantumespresso's ``PwRelaxWorkChain`` (namespace
  ``quantumespresso``), pseudopotentials from an aiida-pseudo family, its PwBaseWorkChain error handlers.

Nothing of either engine's input generation or error handling is re-implemented here; this chain only
launches the chosen one and translates its outputs into the same names and units for both engines:

==================  =============================================================================
``relaxed_structure``  StructureData
``total_energy``       Float, eV (VASP: ``energy_extrapolated`` (σ→0) of the final run; QE: ``energy``)
``energy_per_atom``    Float, eV/atom
``forces``             ArrayData ``forces`` (n_atoms × 3), eV/Å, of the final structure
``stress``             ArrayData ``stress`` (3 × 3), **GPa**; positive diagonal = compressive (the cell
                       would expand); VASP's kbar are divided by 10, QE's GPa are kept
``converged``          Dict ``{ionic: bool, electronic: bool}`` of the final calculation
``dft_settings``       Dict: engine, functional, cutoffs, Hubbard U, pseudopotentials — what a
                       formation energy needs to decide whether MP2020 corrections apply
==================  =============================================================================

``get_builder_from_protocol`` reads ``protocols/dft.yaml``: VASP from pymatgen's ``MPRelaxSet``
(PBE PAW, ENCUT 520 eV, k-point density 64 Å⁻³, MP Hubbard U, spin polarised) with forces to 0.02 eV/Å;
QE from ``PwRelaxWorkChain.get_builder_from_protocol`` with the chosen aiida-pseudo family.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, if_
from aiida.plugins import WorkflowFactory

from aiida_battgen.calculations.functions.dft_relax_results import dft_relax_results
from aiida_battgen.workchains.protocols.utils import ProtocolMixin

VaspRelaxWorkChain = WorkflowFactory("vasp.v2.relax")
PwRelaxWorkChain = WorkflowFactory("quantumespresso.pw.relax")

ENGINES = ("vasp", "quantumespresso")
_L_CHANNEL = {0: "s", 1: "p", 2: "d", 3: "f"}


def validate_inputs(inputs, _):
    engine = inputs["engine"].value if "engine" in inputs else None
    if engine not in ENGINES:
        return f"engine must be one of {ENGINES}, got {engine!r}"
    if engine not in inputs or not inputs[engine]:
        return f"engine {engine!r} needs the inputs of the `{engine}` namespace"
    other = ENGINES[1 - ENGINES.index(engine)]
    if inputs.get(other):
        return f"engine is {engine!r} but inputs were given for `{other}` as well"
    return None


class DftRelaxWorkChain(ProtocolMixin, WorkChain):
    """Relax a structure with VASP (aiida-vasp) or Quantum ESPRESSO (aiida-quantumespresso); same outputs."""

    _protocol_file = "dft.yaml"

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("structure", valid_type=orm.StructureData, help="The structure to relax (Å).")
        spec.input("engine", valid_type=orm.Str, serializer=orm.to_aiida_type,
                   help="DFT engine: `vasp` (aiida-vasp vasp.v2.relax) or `quantumespresso` (PwRelaxWorkChain).")
        spec.expose_inputs(
            VaspRelaxWorkChain, namespace="vasp", exclude=("structure",),
            namespace_options={"required": False, "populate_defaults": False,
                               "help": "Inputs of aiida-vasp's relax work chain (engine vasp)."},
        )
        spec.expose_inputs(
            PwRelaxWorkChain, namespace="quantumespresso", exclude=("structure",),
            namespace_options={"required": False, "populate_defaults": False,
                               "help": "Inputs of aiida-quantumespresso's PwRelaxWorkChain (engine quantumespresso)."},
        )
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.run_relax,
            if_(cls.is_vasp)(cls.results_vasp).else_(cls.results_quantumespresso),
        )
        spec.expose_outputs(VaspRelaxWorkChain, namespace="vasp", namespace_options={"required": False})
        spec.expose_outputs(PwRelaxWorkChain, namespace="quantumespresso", namespace_options={"required": False})
        spec.output("relaxed_structure", valid_type=orm.StructureData, help="The relaxed structure (Å).")
        spec.output("total_energy", valid_type=orm.Float,
                    help="Total energy of the relaxed structure (eV); VASP: energy extrapolated to σ→0.")
        spec.output("energy_per_atom", valid_type=orm.Float, help="Total energy per atom (eV/atom).")
        spec.output("forces", valid_type=orm.ArrayData,
                    help="Array `forces` (n_atoms × 3) on the relaxed structure, eV/Å.")
        spec.output("stress", valid_type=orm.ArrayData,
                    help="Array `stress` (3 × 3) of the relaxed structure in GPa (VASP kbar / 10); positive "
                         "diagonal = compressive.")
        spec.output("converged", valid_type=orm.Dict,
                    help="{ionic: bool, electronic: bool}: convergence of the final calculation.")
        spec.output("dft_settings", valid_type=orm.Dict,
                    help="Engine, functional, plane-wave cutoff (eV), Hubbard U (eV) and pseudopotentials used.")
        spec.exit_code(401, "ERROR_SUB_PROCESS_FAILED",
                       message="The {engine} relaxation work chain failed with exit status {status}: {message}")
        spec.exit_code(302, "ERROR_OUTPUT_MISSING", invalidates_cache=True,
                       message="The {engine} relaxation finished without the output {name}.")

    # --- builder ------------------------------------------------------------------------------
    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode,
        structure: orm.StructureData,
        engine: str = "vasp",
        protocol: str | None = None,
        overrides: dict[str, Any] | None = None,
        potential_family: str | None = None,
        pseudo_family: str | None = None,
        options: dict[str, Any] | None = None,
    ):
        """A builder from ``protocols/dft.yaml`` for ``engine``.

        :param potential_family: VASP: aiida-vasp POTCAR family label (default: the protocol's, PBE.54).
        :param pseudo_family: QE: aiida-pseudo family label (default: the protocol's).
        :param overrides: deep-merged over the protocol (unknown keys rejected), e.g.
            ``{"quantumespresso": {"kpoints_distance": 0.5}}`` or ``{"vasp": {"incar_overrides": {"nelm": 200}}}``.
        :param options: ``metadata.options`` of the calculations (resources, wall time, ...).
        """
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        inputs = cls.get_protocol_inputs(protocol, overrides)
        calc_options = dict(inputs["options"])
        calc_options.update(options or {})
        builder = cls.get_builder()
        builder.structure = structure
        builder.engine = orm.Str(engine)
        if engine == "vasp":
            settings = inputs["vasp"]
            if potential_family:
                settings["potential_family"] = potential_family
            builder.vasp = _vasp_relax_inputs(code, structure, settings, calc_options)
        else:
            settings = inputs["quantumespresso"]
            if pseudo_family:
                settings["pseudo_family"] = pseudo_family
            builder.quantumespresso = _qe_relax_builder(code, structure, settings, calc_options)
        return builder

    # --- steps --------------------------------------------------------------------------------
    def is_vasp(self) -> bool:
        return self.inputs.engine.value == "vasp"

    def run_relax(self):
        engine = self.inputs.engine.value
        process = VaspRelaxWorkChain if engine == "vasp" else PwRelaxWorkChain
        inputs = AttributeDict(self.exposed_inputs(process, namespace=engine))
        inputs.structure = self.inputs.structure
        inputs.metadata.call_link_label = f"relax_{engine}"
        node = self.submit(process, **inputs)
        self.report(f"launched {process.__name__}<{node.pk}>")
        return ToContext(relax=node)

    def _check_child(self, engine: str):
        node = self.ctx.relax
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_SUB_PROCESS_FAILED.format(
                engine=engine, status=node.exit_status, message=node.exit_message or "")
        process = VaspRelaxWorkChain if engine == "vasp" else PwRelaxWorkChain
        self.out_many(self.exposed_outputs(node, process, namespace=engine))
        return None

    def _attach(self, structure, settings: dict[str, Any], **raw) -> None:
        results = dft_relax_results(structure=structure, dft_settings=orm.Dict(settings), **raw,
                                    metadata={"call_link_label": "collect_results"})
        self.out("relaxed_structure", structure)
        for name, node in results.items():
            self.out(name, node)

    def results_vasp(self):
        exit_code = self._check_child("vasp")
        if exit_code:
            return exit_code
        node = self.ctx.relax
        if "misc" not in node.outputs:
            return self.exit_codes.ERROR_OUTPUT_MISSING.format(engine="vasp", name="misc")
        structure = node.outputs.relax.structure if "relax" in node.outputs else self.inputs.structure
        self._attach(structure, _vasp_settings(node), vasp_misc=node.outputs.misc)
        return None

    def results_quantumespresso(self):
        exit_code = self._check_child("quantumespresso")
        if exit_code:
            return exit_code
        node = self.ctx.relax
        structure = node.outputs.output_structure if "output_structure" in node.outputs else self.inputs.structure
        parameters = node.outputs.output_parameters
        self._attach(structure, _qe_settings(node, parameters.get_dict()), qe_parameters=parameters,
                     qe_trajectory=node.outputs.output_trajectory)
        return None


# --- engine settings -------------------------------------------------------------------------------
def _vasp_relax_inputs(code, structure: orm.StructureData, settings: dict[str, Any], options: dict) -> dict:
    """Inputs of ``vasp.v2.relax`` from a pymatgen input set (no POTCAR files needed: symbols only).

    aiida-vasp's own pymatgen adaptor asks pymatgen for the POTCAR *files* (PMG_VASP_PSP_DIR); POTCARs here
    come from the aiida-vasp family instead, so only the set's symbols, INCAR and k-points are taken.
    """
    import pymatgen.io.vasp.sets as pmg_sets

    input_set = getattr(pmg_sets, settings["pymatgen_set"])(structure.get_pymatgen_structure())
    incar = {key.lower(): value for key, value in input_set.incar.items()}
    site_symbols = input_set.poscar.site_symbols
    potential_mapping = dict(zip(site_symbols, input_set.potcar_symbols))
    mapping = {}
    if incar.get("ldau"):
        for element, u_value, l_value in zip(site_symbols, incar["ldauu"], incar["ldaul"]):
            if u_value:
                mapping[element] = [_L_CHANNEL[int(l_value)], float(u_value)]
    magmom = {}
    if "magmom" in incar:
        for site, moment in zip(input_set.poscar.structure, incar["magmom"]):
            magmom.setdefault(site.specie.symbol, float(moment))
    # The relax work chain derives IBRION/ISIF/NSW/EDIFFG from relax_settings; U and MAGMOM go by element
    # through ldau_mapping/magmom_mapping (POSCAR order is aiida-vasp's); restart tags are aiida-vasp's.
    for key in ("ibrion", "isif", "nsw", "ediffg", "ldau", "ldauu", "ldaul", "ldauj", "ldautype", "ldauprint",
                "magmom", "icharg", "istart", "kspacing"):
        incar.pop(key, None)
    for key, value in (settings.get("incar_overrides") or {}).items():
        if value is None:
            incar.pop(key.lower(), None)
        else:
            incar[key.lower()] = value
    kpoints = orm.KpointsData()
    kpoints.set_cell_from_structure(structure)
    mesh = input_set.kpoints.kpts[0]
    kpoints.set_kpoints_mesh([int(n) for n in mesh], offset=[float(s) for s in input_set.kpoints.kpts_shift])

    vasp = {
        "code": code,
        "parameters": orm.Dict({"incar": incar}),
        "kpoints": kpoints,
        "potential_family": orm.Str(settings["potential_family"]),
        "potential_mapping": orm.Dict(potential_mapping),
        "max_iterations": orm.Int(settings["max_iterations"]),
        "clean_workdir": orm.Bool(settings["clean_workdir"]),
        "calc": {"metadata": {"options": options}},
    }
    if mapping:
        vasp["ldau_mapping"] = orm.Dict({"mapping": mapping, "utype": 2})
    if magmom:
        vasp["magmom_mapping"] = orm.Dict(magmom)
    # RelaxOptions fills the defaults aiida-vasp reads (`perform`, ...) into the Dict.
    relax_settings = VaspRelaxWorkChain.option_class.aiida_serialize(dict(settings["relax_settings"]))
    return {"vasp": vasp, "relax_settings": relax_settings, "verbose": orm.Bool(False)}


def _vasp_settings(node) -> dict[str, Any]:
    """What the VASP run used (for MP compatibility): PBE PAW family, ENCUT (eV), U (eV) by element."""
    base = node.inputs.vasp
    incar = base.parameters.get_dict().get("incar", {})
    hubbard = {}
    if "ldau_mapping" in base:
        hubbard = {el: float(value[1]) for el, value in base.ldau_mapping.get_dict().get("mapping", {}).items()}
    return {
        "engine": "vasp",
        "functional": str(incar.get("gga", "PE")).upper().replace("PE", "PBE") if "gga" in incar else "PBE",
        "encut_eV": float(incar["encut"]) if "encut" in incar else None,
        "hubbard_u": hubbard,
        "spin_polarised": int(incar.get("ispin", 1)) == 2,
        "potential_family": base.potential_family.value,
        "potential_mapping": base.potential_mapping.get_dict(),
    }


def _qe_relax_builder(code, structure: orm.StructureData, settings: dict[str, Any], options: dict):
    from aiida_quantumespresso.common.types import RelaxType, SpinType

    overrides: dict[str, Any] = {"base_relax": {"pseudo_family": settings["pseudo_family"]},
                                 "base_init_relax": {"pseudo_family": settings["pseudo_family"]}}
    system = {}
    if settings.get("ecutwfc_Ry"):
        system["ecutwfc"] = float(settings["ecutwfc_Ry"])
    if settings.get("ecutrho_Ry"):
        system["ecutrho"] = float(settings["ecutrho_Ry"])
    for namespace in ("base_relax", "base_init_relax"):
        if system:
            overrides[namespace]["pw"] = {"parameters": {"SYSTEM": system}}
        if settings.get("kpoints_distance"):
            overrides[namespace]["kpoints_distance"] = float(settings["kpoints_distance"])
    builder = PwRelaxWorkChain.get_builder_from_protocol(
        code, structure, protocol=settings["protocol"], overrides=overrides,
        relax_type=RelaxType(settings["relax_type"]), spin_type=SpinType(settings["spin_type"]), options=options,
    )
    builder.pop("structure", None)
    builder.pop("base_init_relax", None)  # one relax loop: the protocol's pre-relaxation doubles cheap cells' cost
    builder.meta_convergence = orm.Bool(settings["meta_convergence"])
    builder.max_meta_convergence_iterations = orm.Int(settings["max_meta_convergence_iterations"])
    builder.clean_workdir = orm.Bool(settings["clean_workdir"])
    return builder


def _qe_settings(node, parameters: dict[str, Any]) -> dict[str, Any]:
    pw_parameters = node.inputs.base_relax.pw.parameters.get_dict()
    system = pw_parameters.get("SYSTEM", {})
    pseudos = {kind: f"{pseudo.filename} (md5 {pseudo.md5})"
               for kind, pseudo in node.inputs.base_relax.pw.pseudos.items()}
    return {
        "engine": "quantumespresso",
        "functional": parameters.get("dft_exchange_correlation", "unknown"),
        "encut_eV": float(system.get("ecutwfc", 0.0)) * 13.605693122994,  # Ry -> eV
        "ecutwfc_Ry": system.get("ecutwfc"),
        "ecutrho_Ry": system.get("ecutrho"),
        "hubbard_u": {},
        "spin_polarised": int(system.get("nspin", 1)) == 2,
        "pseudopotentials": pseudos,
        "code_version": parameters.get("creator_version"),
    }
