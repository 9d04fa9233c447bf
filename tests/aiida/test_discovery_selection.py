"""Selection settings are checked at submit against the columns the upstream steps write; an empty
shortlist ends with a warning exit code and a report line, never a silent ``Finished [0]``."""

import json

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_battgen.tools.demo import build_demo_inputs


@pytest.fixture
def code(aiida_profile, battgen_executable):
    from aiida_battgen.tools.profiles import ensure_battgen_code, ensure_localhost

    return ensure_battgen_code(ensure_localhost())


@pytest.mark.parametrize(("overrides", "named"), [
    ({"shortlist": {"max_values": {"e_above_hull": 0.1}}}, "`shortlist.max_values.e_above_hull`"),
    ({"shortlist": {"sort_by": "ehull"}}, "`shortlist.sort_by`"),
    ({"shortlist": {"min_values": {"predicted_voltage_V": 3.0}}}, "`shortlist.min_values.predicted_voltage_V`"),
    # the relaxation has not run yet when the preselection cuts
    ({"preselection": {"sort_by": "energy_per_atom_eV"}}, "`preselection.sort_by`"),
])
def test_a_typo_in_a_selection_column_is_refused_at_submit(code, overrides, named):
    builder = build_demo_inputs(code, "fast", overrides=overrides, host_names=["Li2O"])
    before = orm.QueryBuilder().append(orm.ProcessNode).count()
    with pytest.raises(ValueError, match="no step before") as info:
        run_get_node(builder)
    message = str(info.value)
    assert named in message
    assert "e_above_hull_eV_per_atom" in message or "substitution_probability" in message  # the valid list
    assert orm.QueryBuilder().append(orm.ProcessNode).count() == before  # nothing half-stored


def test_every_generator_declares_its_columns():
    from aiida_battgen.workchains.discovery import GENERATOR_CALCFUNCTIONS, TRAINED_GENERATORS
    from battgen.columns import GENERATOR_COLUMNS

    assert set(GENERATOR_COLUMNS) == set(GENERATOR_CALCFUNCTIONS) | set(TRAINED_GENERATORS)


def test_the_protocols_selections_are_valid(code):
    from aiida_battgen.workchains.discovery import DiscoveryWorkChain, validate_inputs

    for protocol in DiscoveryWorkChain.get_available_protocols():
        builder = build_demo_inputs(code, protocol, host_names=["Li2O"])
        assert validate_inputs(builder._inputs(prune=True), None) is None, protocol


@pytest.mark.slow
def test_an_empty_shortlist_ends_with_a_warning_and_a_report(code, tmp_path):
    """Two candidates relaxed against given reference entries; no E_hull reaches 1000 eV/atom."""
    from pymatgen.entries.computed_entries import ComputedEntry

    from aiida_battgen.data.batch import StructureBatchData
    from aiida_battgen.tools.demo import primitive_builtin_hosts
    from aiida_battgen.workchains.discovery import DiscoveryWorkChain

    energies = {"Li": -1.91, "Na": -1.31, "Cl2": -3.6, "LiCl": -7.2, "NaCl": -6.9}  # eV per formula unit
    entries = tmp_path / "entries.json"
    entries.write_text(json.dumps([ComputedEntry(f, e, entry_id=f"ref-{f}").as_dict() for f, e in energies.items()]))
    builder = DiscoveryWorkChain.get_builder_from_protocol(
        code, seed_structures=StructureBatchData(primitive_builtin_hosts(["LiCl"])), protocol="fast",
        overrides={"generation": {"n": 4, "conditions": {"allowed_elements": ["Li", "Na", "Cl"]}},
                   "preselection": {"top_k": 2}, "relax": {"relax": {"parameters": {"fmax": 0.5, "max_steps": 20}}},
                   "hull": {"compatibility": None},
                   "known_materials": None,  # NaCl from LiCl is known: novelty would end the run before the shortlist
                   "shortlist": {"top_k": 2, "max_values": {}, "min_values": {"e_above_hull_eV_per_atom": 1000.0}}},
    )
    builder.hull_reference_entries = orm.SinglefileData(entries)
    _, node = run_get_node(builder)
    assert node.exit_status == DiscoveryWorkChain.exit_codes.WARNING_EMPTY_SHORTLIST.status, node.exit_message
    assert 700 <= node.exit_status < 800
    assert "relaxed_structures" in node.outputs and node.outputs.shortlist.n_rows == 0
    assert node.outputs.funnel["counts"]["shortlisted"] == 0
    reports = [log.message for log in orm.Log.collection.get_logs_for(node)]
    line = next(message for message in reports if "the shortlist is empty" in message)
    assert "best e_above_hull_eV_per_atom = " in line
