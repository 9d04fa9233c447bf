"""The optional DFT stage of ``battgen.discovery``: a tiny Si-C-Ge run (substitution on zinc-blende SiC, CHGNet
through the battgen CLI, MLIP hull) whose best shortlisted candidate goes through real Quantum ESPRESSO
(``battgen.dft.formation_energy``), so its data provenance runs from the seed batch to a DFT energy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from aiida import orm
from aiida.common import LinkType
from aiida.engine import run_get_node
from pymatgen.core import Lattice, Structure

sys.path.insert(0, str(Path(__file__).parent / "dft"))
from battgen_dft_fixtures import QE_FAST, SERIAL, pw_code, qe_family  # noqa: E402,F401 - fixtures

pytestmark = [pytest.mark.dft, pytest.mark.slow]


def _ancestors(node: orm.Node) -> set[int]:
    """Every node upstream of ``node`` in the data provenance (create and calculation-input links only)."""
    seen, todo = set(), [node]
    while todo:
        current = todo.pop()
        for link in current.base.links.get_incoming(link_type=(LinkType.CREATE, LinkType.INPUT_CALC)).all():
            if link.node.pk not in seen:
                seen.add(link.node.pk)
                todo.append(link.node)
    return seen


def test_discovery_shortlist_to_dft_energy(aiida_profile, battgen_code, pw_code, qe_family):  # noqa: F811
    from aiida_battgen.data.batch import StructureBatchData
    from aiida_battgen.workchains.discovery import DiscoveryWorkChain
    from battgen.batch import StructureBatch

    a = 4.38
    sic = Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]), ["Si", "C"],
                    [[0, 0, 0], [0.25, 0.25, 0.25]])
    seeds = StructureBatchData(StructureBatch.from_structures([sic], [{"row_id": "SiC"}]))
    overrides = {
        # Debian's PBE UPFs cover Si, C, Ge: keep the generated candidates inside that set.
        "generation": {"n": 4, "conditions": {"threshold": 0.0001, "max_per_seed": 4,
                                              "allowed_elements": ["Si", "C", "Ge"]}},
        "preselection": {"top_k": 2},
        "relax": {"relax": {"parameters": {"max_steps": 40, "fmax": 0.2}}},
        "shortlist": {"top_k": 2, "max_values": {"e_above_hull_eV_per_atom": 2.0}},
        "known_materials": None,  # MLIP hull: Ge-C has no known compound, the DFT stage needs a shortlist
        "dft": {"engine": "quantumespresso", "protocol": "fast", "family": qe_family.label, "overrides": QE_FAST},
        "dft_top_k": 1,
    }
    without_code = DiscoveryWorkChain.get_builder_from_protocol(battgen_code, seed_structures=seeds, protocol="fast",
                                                                overrides=overrides)
    # no DFT code: no DFT stage (the exposed namespace stays, empty once pruned as at submission)
    assert not without_code._inputs(prune=True).get("dft")
    builder = DiscoveryWorkChain.get_builder_from_protocol(battgen_code, seed_structures=seeds, protocol="fast",
                                                           overrides=overrides, dft_code=pw_code, dft_options=SERIAL)
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message

    energies = results["dft_formation_energy"]
    assert len(energies) == 1
    label = next(iter(energies))
    assert label.startswith("rank_001_")
    candidate = results["candidates"][label]
    dft_call = next(link.node for link in node.base.links.get_outgoing(link_type=LinkType.CALL_WORK).all()
                    if link.link_label == f"dft_{label}")
    assert dft_call.inputs.structure.pk == candidate.pk
    ef = energies[label].value
    print(f"DFT (QE PBE) Ef of {candidate.get_formula()}: {ef:.4f} eV/atom; "
          f"E_hull {results['dft_e_above_hull'][label].value:.4f} eV/atom")
    assert -1.0 < ef < 1.0
    # The DFT energy's data provenance reaches the candidate, a pw.x calculation and the seed batch.
    upstream = _ancestors(energies[label])
    assert candidate.pk in upstream and seeds.pk in upstream
    assert any(orm.load_node(pk).process_type == "aiida.calculations:quantumespresso.pw" for pk in upstream
               if isinstance(orm.load_node(pk), orm.CalcJobNode))


def test_dft_stage_is_exposed_inputs_off_by_default_and_validated(aiida_profile, aiida_localhost):
    from aiida_battgen.workchains.dft_formation import DftFormationEnergyWorkChain
    from aiida_battgen.workchains.discovery import DiscoveryWorkChain, validate_dft

    dft_port = DiscoveryWorkChain.spec().inputs["dft"]
    formation_ports = set(DftFormationEnergyWorkChain.spec().inputs) - {"structure", "mp_entries"}
    assert set(dft_port) == formation_ports  # the child's own ports, not a Dict checked by hand
    assert not dft_port.required
    assert validate_dft({}, top_k=3) is None  # off: nothing to check
    assert "dft_top_k" in validate_dft({"engine": "vasp"}, top_k=0)
    code = orm.InstalledCode(computer=aiida_localhost, filepath_executable="/bin/true", label="pw-stand-in")
    builder = DiscoveryWorkChain.get_builder_from_protocol(
        code, protocol="fast", dft_code=code, dft_options={"max_wallclock_seconds": 60},
        overrides={"dft": {"engine": "vasp", "family": "PBE.54"}, "dft_top_k": 2})
    assert builder.dft.engine.value == "vasp" and builder.dft.family.value == "PBE.54"
    assert builder.dft.protocol.value == "balanced" and builder.dft.code is code
    assert builder.dft.options["max_wallclock_seconds"] == 60 and builder.dft_top_k.value == 2
    dft_namespace = DiscoveryWorkChain.spec().inputs["dft"]  # carries the formation chain's own validator
    assert dft_namespace.validate(builder.dft._inputs(prune=True)) is None
    bad = {**builder.dft._inputs(prune=True), "engine": orm.Str("castep")}
    assert "engine must be vasp or quantumespresso" in str(dft_namespace.validate(bad))
    with pytest.raises(Exception, match="unknown protocol key 'dft.enabled'"):
        DiscoveryWorkChain.get_protocol_inputs("fast", overrides={"dft": {"enabled": True}})
