"""One check over every ``battgen.*`` work chain with protocols: each protocol builds, its keys are ports of the
chain (the protocol mirrors the port tree) and the builder holds the protocol's values; names are by intent."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
from aiida import orm
from aiida.engine.processes.ports import PortNamespace
from aiida.plugins import WorkflowFactory

from aiida_battgen.workchains.protocols.utils import ProtocolMixin

# Engine adaptor whose YAML sections are the settings of aiida-vasp's and aiida-quantumespresso's own builders
# (pymatgen input set, pseudo family ...), not its ports; built in tests/aiida/test_dft_*.py with the engines.
NOT_PORT_TREES = {"battgen.dft.relax": "sections feed the engines' own protocol builders"}


def _protocol_chains() -> list[str]:
    names = []
    for entry_point in entry_points(group="aiida.workflows"):
        if not entry_point.name.startswith("battgen."):
            continue
        chain = entry_point.load()
        if isinstance(chain, type) and issubclass(chain, ProtocolMixin) and chain._protocol_file:
            names.append(entry_point.name)
    return sorted(names)


CHAINS = _protocol_chains()
CASES = [(name, protocol) for name in CHAINS if name not in NOT_PORT_TREES
         for protocol in WorkflowFactory(name).get_available_protocols()]


def test_the_base_chains_have_protocols():
    assert {"battgen.mlip.relax_base", "battgen.mlip.md_base", "battgen.discovery", "battgen.insertion",
            "battgen.si_anode", "battgen.mg_cathode_screen", "battgen.property_screen"} <= set(CHAINS)


def _model(kind: str, architecture: str) -> orm.Data:
    from aiida_battgen.data.model import ModelData

    node = ModelData()
    node.base.attributes.set("kind", kind)
    node.base.attributes.set("architecture", architecture)
    return node


def _build(name: str, protocol: str, code, batch, structure):
    chain = WorkflowFactory(name)
    if name == "battgen.property_screen":
        models = {label: _model("predictor", "alignn") for label in ("formation_energy", "band_gap", "voltage")}
        return chain.get_builder_from_protocol(batch, models, protocol=protocol)
    if name == "battgen.mg_cathode_screen":
        return chain.get_builder_from_protocol(code, batch, _model("predictor", "voltage-cgcnn"), protocol=protocol)
    if name == "battgen.discovery":
        return chain.get_builder_from_protocol(code, seed_structures=batch, protocol=protocol)
    if name in ("battgen.mlip.relax_base", "battgen.si_anode"):
        return chain.get_builder_from_protocol(code, structures=batch, protocol=protocol)
    return chain.get_builder_from_protocol(code, structure, protocol=protocol)


def _leaf_value(node):
    if isinstance(node, orm.Dict):
        return node.get_dict()
    if isinstance(node, orm.List):
        return node.get_list()
    if isinstance(node, orm.BaseType):
        return node.value
    return node


def _check(namespace: PortNamespace, values: dict, builder, path: str = "") -> int:
    """Every key of ``values`` is a port of ``namespace``; where the builder holds a plain value for it, it is the
    protocol's. Returns the number of values compared."""
    compared = 0
    for key, value in values.items():
        where = f"{path}.{key}" if path else key
        assert key in namespace, f"protocol key {where!r} is not a port; ports here: {sorted(namespace)}"
        port = namespace[key]
        held = builder.get(key) if builder is not None and hasattr(builder, "get") else None
        if isinstance(port, PortNamespace) and isinstance(value, dict):
            compared += _check(port, value, held, where)
        elif held is not None and not isinstance(held, orm.SinglefileData):
            assert _leaf_value(held) == value, where
            compared += 1
    return compared


@pytest.mark.parametrize(("name", "protocol"), CASES)
def test_each_protocol_builds_and_its_keys_are_ports(aiida_profile, battgen_code, name, protocol):
    from pymatgen.core import Lattice, Structure

    from aiida_battgen.data.batch import StructureBatchData
    from battgen.batch import StructureBatch

    chain = WorkflowFactory(name)
    licl = Structure(Lattice.cubic(5.13), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    batch = StructureBatchData(StructureBatch.from_structures([licl], [{"row_id": "licl"}]))
    builder = _build(name, protocol, battgen_code, batch, orm.StructureData(pymatgen=licl))
    inputs = chain.get_protocol_inputs(protocol)
    assert _check(chain.spec().inputs, inputs, builder) >= 1
    description = chain.get_available_protocols()[protocol]["description"]
    assert description and protocol != "seed" and not protocol.startswith("seed")  # named by intent, not `seed…`
    if "seed" in protocol:  # a paper's protocol cites it
        assert "et al." in description, (name, protocol)


def test_the_mlip_and_fmax_are_stated_once():
    """relax_base.yaml is the only protocol file that names the MLIP of a relaxation and its force criterion."""
    from aiida_battgen.workchains.protocols.utils import PROTOCOL_DIR

    stating = sorted(path.name for path in PROTOCOL_DIR.glob("*.yaml")
                     if any(line.strip().startswith(("mlip:", "fmax:")) for line in path.read_text().splitlines()))
    # si_anode's fast protocol loosens fmax on purpose (5 steps); md_base names the MD's potential (SevenNet)
    assert stating == ["md_base.yaml", "relax_base.yaml", "si_anode.yaml"], stating
    discovery = WorkflowFactory("battgen.discovery")
    relax = WorkflowFactory("battgen.mlip.relax_base")
    for protocol in ("fast", "balanced", "stringent"):
        assert discovery.get_protocol_inputs(protocol)["relax"] == relax.get_protocol_inputs(protocol)
    insertion = WorkflowFactory("battgen.insertion").get_protocol_inputs("stringent")["insertion"]["parameters"]
    assert (insertion["mlip"], insertion["fmax"]) == ("chgnet", 0.02)


def test_composite_chain_overrides_reach_the_child(aiida_profile, battgen_code):
    discovery = WorkflowFactory("battgen.discovery")
    builder = discovery.get_builder_from_protocol(
        battgen_code, protocol="fast", options={"max_wallclock_seconds": 120},
        overrides={"relax": {"max_iterations": 2, "relax": {"parameters": {"max_steps": 7}}}})
    assert builder.relax.max_iterations.value == 2
    assert builder.relax.relax.parameters.get_dict() == {"mlip": "chgnet", "fmax": 0.1, "max_steps": 7,
                                                         "cell_filter": "frechet"}
    assert builder.relax.relax.metadata.options.max_wallclock_seconds == 120
    cathode = WorkflowFactory("battgen.mg_cathode_screen").get_protocol_inputs(
        "mg_cathode_seed002", overrides={"parameters": {"md": {"nvt_time_ps": 5.0}}})["parameters"]
    assert (cathode["md"]["mlip"], cathode["md"]["supercell_min_atoms"], cathode["md"]["nvt_time_ps"]) == (
        "sevennet", 512, 5.0)


@pytest.mark.parametrize("protocol", ["fast", "balanced", "stringent", "si_anode_seed004"])
def test_the_relax_base_protocol_read_without_the_work_chain_is_the_work_chains(protocol):
    """protocols.utils reads relax_base.yaml through a stand-in (no import circle with relax_base.py)."""
    from aiida_battgen.workchains.protocols.utils import RelaxBaseProtocol, relax_settings
    from aiida_battgen.workchains.relax_base import MlipRelaxBaseWorkChain

    assert RelaxBaseProtocol._protocol_file == MlipRelaxBaseWorkChain._protocol_file
    chosen = MlipRelaxBaseWorkChain.child_protocol(MlipRelaxBaseWorkChain, protocol)
    expected = MlipRelaxBaseWorkChain.get_protocol_inputs(chosen)["relax"]["parameters"]
    assert relax_settings(protocol, ("mlip", "fmax", "max_steps")) == {
        key: expected[key] for key in ("mlip", "fmax", "max_steps")}
