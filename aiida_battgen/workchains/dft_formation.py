"""``battgen.dft.formation_energy``: DFT formation energy (and E_hull) of a candidate, seed 000 §2.6 / Fig. 9.

1. ``relax_candidate`` and one ``relax_reference_<El>`` per element, all ``battgen.dft.relax`` with builders
   from the *same* protocol, overrides, family and options (for QE the plane-wave cutoffs of the candidate's
   composition are imposed on every reference, so energies are comparable). Elemental structures come from
   the ``battgen.elemental_reference_structure`` calcfunction (:mod:`battgen.stability.elemental`: ground-state
   crystals; O2/N2/... molecules in a 12 Å box, relaxed at fixed cell) unless given in ``reference_structures``;
2. ``formation_energy``: the ``battgen.dft_formation_energy`` calcfunction (Ef in eV/atom, MP2020 only for
   MP-compatible VASP settings, MP comparison when ``mp_entries`` are given);
3. ``energy_above_hull``: ``battgen.dft_energy_above_hull`` (E_hull on the DFT hull, eV/atom).

**Reusing references.** The references of a chemical system are identical calculations in every run
(same structure, code, protocol, cutoffs): with AiiDA caching enabled for the engine's CalcJob (``verdi
config set caching.enabled_for aiida.calculations:quantumespresso.pw aiida.calculations:vasp.vasp``) a
second formation energy in the same system reuses them without running the DFT code again. The work
chain reports, per reference, whether its calculations came from the cache.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain
from aiida.plugins import WorkflowFactory

from aiida_battgen.calculations.functions.dft_energy_above_hull import dft_energy_above_hull
from aiida_battgen.calculations.functions.dft_formation_energy import dft_formation_energy
from aiida_battgen.calculations.functions.elemental_reference_structure import elemental_reference_structure



def load_dft_relax_chain():
    """battgen.dft.relax, loaded where a relaxation is built: it imports aiida-vasp and aiida-quantumespresso
    (the ``dft`` extra), which the ports of this chain do not need, so composite chains can expose them."""
    return WorkflowFactory("battgen.dft.relax")


def validate_inputs(inputs, _):
    if "engine" in inputs and inputs["engine"].value not in ("vasp", "quantumespresso"):
        return f"engine must be vasp or quantumespresso, got {inputs['engine'].value!r}"
    if "structure" not in inputs:  # exposed without it (the discovery's `dft` namespace): checked per candidate
        return None
    elements = {site.kind_name for site in inputs["structure"].sites}
    for element, structure in inputs.get("reference_structures", {}).items():
        symbols = set(structure.get_symbols_set())
        if symbols != {element}:
            return f"reference_structures.{element} holds {sorted(symbols)}, not pure {element}"
    if "reference_structures" in inputs and not set(inputs["reference_structures"]) <= elements:
        extra = sorted(set(inputs["reference_structures"]) - elements)
        return f"reference_structures for elements not in the candidate: {extra}"
    return None


class DftFormationEnergyWorkChain(WorkChain):
    """Relax a candidate and its elemental references with one DFT protocol; Ef, MP comparison, E_hull."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("structure", valid_type=orm.StructureData, help="The candidate (Å).")
        spec.input("code", valid_type=orm.AbstractCode, help="pw.x (quantumespresso) or VASP (vasp) code.")
        spec.input("engine", valid_type=orm.Str, serializer=orm.to_aiida_type,
                   help="`vasp` or `quantumespresso` (see battgen.dft.relax).")
        spec.input("protocol", valid_type=orm.Str, serializer=orm.to_aiida_type, default=lambda: orm.Str("balanced"),
                   help="Protocol of battgen.dft.relax (protocols/dft.yaml) used for every relaxation.")
        spec.input("overrides", valid_type=orm.Dict, required=False, serializer=orm.to_aiida_type,
                   help="Overrides of the dft.yaml protocol, applied to every relaxation.")
        spec.input("family", valid_type=orm.Str, required=False, serializer=orm.to_aiida_type,
                   help="POTCAR family (vasp) or aiida-pseudo family (quantumespresso) label.")
        spec.input("options", valid_type=orm.Dict, required=False, serializer=orm.to_aiida_type,
                   help="metadata.options of every DFT calculation (resources, wall time in s).")
        spec.input_namespace("reference_structures", valid_type=orm.StructureData, dynamic=True, required=False,
                             help="Elemental reference structures by element (default: battgen.stability.elemental).")
        spec.input("mp_entries", valid_type=orm.Data, required=False,
                   help="Materials Project entries (battgen.snapshot, entries file, List, JsonableData) to compare "
                        "with; joined to the hull only for MP-compatible VASP settings.")
        spec.inputs.validator = validate_inputs
        spec.outline(cls.setup, cls.run_relaxations, cls.inspect_relaxations, cls.compute, cls.results)
        spec.output("relaxed_structure", valid_type=orm.StructureData, help="The relaxed candidate (Å).")
        spec.output("total_energy", valid_type=orm.Float, help="Total energy of the relaxed candidate (eV).")
        spec.output("formation_energy_per_atom", valid_type=orm.Float,
                    help="Ef against the DFT elemental references (eV/atom).")
        spec.output("mp_formation_energy_per_atom", valid_type=orm.Float, required=False,
                    help="Ef of the matching Materials Project entry, MP2020 (eV/atom).")
        spec.output("difference", valid_type=orm.Float, required=False,
                    help="Ef(DFT) − Ef(MP) (eV/atom).")
        spec.output("report", valid_type=orm.Dict, help="Formation-energy report (energies in eV/atom).")
        spec.output("e_above_hull", valid_type=orm.Float, help="E_hull on the DFT hull (eV/atom).")
        spec.output("hull", valid_type=orm.Dict, help="The DFT hull used, Ef and decomposition.")
        spec.exit_code(301, "ERROR_UNSUPPORTED_ELEMENT", invalidates_cache=True,
                       message="No elemental reference structure for {element}: pass reference_structures.{element}.")
        spec.exit_code(401, "ERROR_CANDIDATE_RELAX_FAILED",
                       message="The candidate relaxation failed with exit status {status}.")
        spec.exit_code(402, "ERROR_REFERENCE_RELAX_FAILED",
                       message="The reference relaxation of {element} failed with exit status {status}.")
        spec.exit_code(403, "ERROR_FORMATION_FAILED",
                       message="The formation-energy / hull calcfunction failed with exit status {status}.")

    # Its protocol is battgen.dft.relax's (protocols/dft.yaml), applied to every relaxation: delegated, not copied.
    @classmethod
    def get_available_protocols(cls):
        return load_dft_relax_chain().get_available_protocols()

    @classmethod
    def get_default_protocol(cls):
        return load_dft_relax_chain().get_default_protocol()

    @classmethod
    def get_protocol_inputs(cls, protocol=None, overrides=None):
        return load_dft_relax_chain().get_protocol_inputs(protocol, overrides)

    @classmethod
    def get_builder_from_protocol(cls, code, structure=None, engine="quantumespresso", protocol=None, overrides=None,
                                  family=None, options=None):
        """A builder whose relaxations all use battgen.dft.relax's ``protocol`` (protocols/dft.yaml, its default
        when None) with ``overrides`` (dft.yaml keys, unknown ones rejected here), the POTCAR / pseudopotential
        ``family`` label and the calculations' ``options`` (resources, wall time in s)."""
        cls.get_protocol_inputs(protocol, overrides)  # an unknown protocol or override key fails here, not at launch
        builder = cls.get_builder()
        builder.code = code
        if structure is not None:
            builder.structure = structure
        builder.engine = orm.Str(engine)
        if protocol:
            builder.protocol = orm.Str(protocol)
        if overrides:
            builder.overrides = orm.Dict(overrides)
        if family:
            builder.family = orm.Str(family)
        if options:
            builder.options = orm.Dict(options)
        return builder

    def setup(self):
        candidate = self.inputs.structure
        elements = sorted({site.kind_name for site in candidate.sites})
        self.ctx.references = {}
        given = dict(self.inputs.get("reference_structures", {}))
        fixed_cell = set()
        for element in (el for el in elements if el not in given):
            outputs, node = elemental_reference_structure.run_get_node(
                orm.Str(element), metadata={"call_link_label": f"reference_structure_{element}"})
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_UNSUPPORTED_ELEMENT.format(element=element)
            given[element] = outputs["structure"]
            if outputs["fixed_cell"].value:
                fixed_cell.add(element)
        self.ctx.reference_structures = given
        self.ctx.fixed_cell = sorted(fixed_cell)
        self.ctx.overrides = self._common_overrides()
        return None

    def _common_overrides(self) -> dict[str, Any]:
        """Protocol overrides shared by every relaxation; for QE the candidate's cutoffs for all."""
        overrides = self.inputs.overrides.get_dict() if "overrides" in self.inputs else {}
        if self.inputs.engine.value == "quantumespresso":
            qe = overrides.setdefault("quantumespresso", {})
            if not qe.get("ecutwfc_Ry"):
                from aiida.orm import load_group

                if "family" in self.inputs:
                    family_label = self.inputs.family.value
                else:
                    protocol = load_dft_relax_chain().get_protocol_inputs(self.inputs.protocol.value, overrides)
                    family_label = protocol["quantumespresso"]["pseudo_family"]
                wfc, rho = load_group(family_label).get_recommended_cutoffs(structure=self.inputs.structure, unit="Ry")
                qe["ecutwfc_Ry"], qe["ecutrho_Ry"] = wfc, rho
        return overrides

    def _builder(self, structure: orm.StructureData, fixed_cell: bool):
        from aiida_battgen.workchains.protocols.utils import recursive_merge

        overrides = self.ctx.overrides
        engine = self.inputs.engine.value
        if fixed_cell:  # a molecule in a box: relax the atoms only, a cell relaxation would collapse the vacuum
            extra = ({"vasp": {"relax_settings": {"shape": False, "volume": False}}} if engine == "vasp"
                     else {"quantumespresso": {"relax_type": "positions"}})
            overrides = recursive_merge(overrides, extra, strict=False)
        family = self.inputs.family.value if "family" in self.inputs else None
        return load_dft_relax_chain().get_builder_from_protocol(
            self.inputs.code, structure, engine=engine, protocol=self.inputs.protocol.value, overrides=overrides,
            potential_family=family if engine == "vasp" else None,
            pseudo_family=family if engine == "quantumespresso" else None,
            options=self.inputs.options.get_dict() if "options" in self.inputs else None,
        )

    def run_relaxations(self):
        children = {}
        builder = self._builder(self.inputs.structure, fixed_cell=False)
        builder.metadata.call_link_label = "relax_candidate"
        children["candidate"] = self.submit(builder)
        for element, structure in sorted(self.ctx.reference_structures.items()):
            builder = self._builder(structure, fixed_cell=element in self.ctx.fixed_cell)
            builder.metadata.call_link_label = f"relax_reference_{element}"
            children[f"reference_{element}"] = self.submit(builder)
        self.report(f"launched {len(children)} DftRelaxWorkChains: {', '.join(sorted(children))}")
        return ToContext(**children)

    def inspect_relaxations(self):
        if not self.ctx.candidate.is_finished_ok:
            return self.exit_codes.ERROR_CANDIDATE_RELAX_FAILED.format(status=self.ctx.candidate.exit_status)
        for element in sorted(self.ctx.reference_structures):
            node = self.ctx[f"reference_{element}"]
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_REFERENCE_RELAX_FAILED.format(element=element, status=node.exit_status)
            calcs = [n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)]
            cached = [n.pk for n in calcs if n.base.caching.is_created_from_cache]
            self.report(f"reference {element}: {len(cached)} of {len(calcs)} calculations taken from the cache")
        return None

    def compute(self):
        candidate = self.ctx.candidate.outputs
        references = {}
        for element in sorted(self.ctx.reference_structures):
            outputs = self.ctx[f"reference_{element}"].outputs
            references[f"structure_{element}"] = outputs.relaxed_structure
            references[f"energy_{element}"] = outputs.total_energy
        inputs = AttributeDict({"structure": candidate.relaxed_structure, "total_energy": candidate.total_energy,
                                "dft_settings": candidate.dft_settings, **references})
        if "mp_entries" in self.inputs:
            inputs.mp_entries = self.inputs.mp_entries
        formation, node = dft_formation_energy.run_get_node(**inputs, metadata={"call_link_label": "formation_energy"})
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_FORMATION_FAILED.format(status=node.exit_status)
        hull, node = dft_energy_above_hull.run_get_node(**inputs, metadata={"call_link_label": "energy_above_hull"})
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_FORMATION_FAILED.format(status=node.exit_status)
        self.ctx.formation, self.ctx.hull = formation, hull
        return None

    def results(self):
        self.out("relaxed_structure", self.ctx.candidate.outputs.relaxed_structure)
        self.out("total_energy", self.ctx.candidate.outputs.total_energy)
        for name, node in self.ctx.formation.items():
            self.out(name, node)
        self.out("e_above_hull", self.ctx.hull["e_above_hull"])
        self.out("hull", self.ctx.hull["hull"])
        report = self.ctx.formation["report"].get_dict()
        self.report(f"{report['formula']}: Ef = {report['formation_energy_per_atom_eV']:.4f} eV/atom "
                    f"({'MP2020 applied' if report['mp2020_applied'] else 'no MP2020: ' + report['mp2020_reason']})")
