"""Protocol files: every protocol resolves, overrides merge, unknown keys are rejected."""

import pytest

from aiida_battgen.workchains.protocols.utils import UnknownProtocolKeyError


@pytest.fixture
def discovery():
    from aiida_battgen.workchains.discovery import DiscoveryWorkChain

    return DiscoveryWorkChain


def test_protocols_resolve(discovery):
    assert set(discovery.get_available_protocols()) == {"fast", "balanced", "stringent"}
    assert discovery.get_default_protocol() == "balanced"
    fast = discovery.get_protocol_inputs("fast")
    stringent = discovery.get_protocol_inputs("stringent")
    fmax = {name: inputs["relax"]["relax"]["parameters"]["fmax"] for name, inputs in (("fast", fast), ("stringent", stringent))}
    assert fmax["fast"] > fmax["stringent"] == 0.02  # seed 000's DFT force criterion
    assert discovery.get_protocol_inputs()["shortlist"]["max_values"]["e_above_hull_eV_per_atom"] == 0.08


def test_overrides_merge_and_unknown_keys_fail(discovery):
    inputs = discovery.get_protocol_inputs("fast", overrides={"relax": {"relax": {"parameters": {"max_steps": 7}}},
                                                              "generation": {"n": 3}})
    relax = inputs["relax"]["relax"]["parameters"]
    assert relax["max_steps"] == 7 and relax["mlip"] == "chgnet" and inputs["generation"]["n"] == 3
    with pytest.raises(UnknownProtocolKeyError, match="relax.relax.parameters.fmaxx"):
        discovery.get_protocol_inputs("fast", overrides={"relax": {"relax": {"parameters": {"fmaxx": 0.1}}}})
    with pytest.raises(ValueError, match="unknown protocol"):
        discovery.get_protocol_inputs("ultra")


def test_builder_from_protocol(discovery, aiida_profile, battgen_code, small_batch):
    from aiida_battgen.data.batch import StructureBatchData

    builder = discovery.get_builder_from_protocol(battgen_code, seed_structures=StructureBatchData(small_batch),
                                                  protocol="fast", overrides={"shortlist": {"top_k": 3}})
    assert builder.shortlist["top_k"] == 3
    assert builder.relax.relax.parameters["fmax"] == 0.1
    assert builder.seed.value == 2024
