"""Candidates are first-class outputs of a discovery: labelled StructureData with queryable extras and
their properties beside them; every recipe of docs/queries.md runs against a real (tiny) run."""

import json
import re
from pathlib import Path

import pytest
from aiida import orm
from aiida.engine import run_get_node

QUERIES = Path(__file__).resolve().parents[2] / "docs" / "queries.md"
# Illustrative energies (eV per formula unit) spanning Li-Na-Cl: Li->Na substitutions of LiCl land near the hull.
ENERGIES = {"Li": -1.91, "Na": -1.31, "Cl2": -3.6, "LiCl": -7.2, "NaCl": -6.9}


@pytest.fixture(scope="module")
def discovery_run(aiida_profile, battgen_executable, tmp_path_factory):
    from pymatgen.entries.computed_entries import ComputedEntry
    from pymatgen.io.cif import CifWriter

    from aiida_battgen.data.snapshot import SourceSnapshotData
    from aiida_battgen.tools.demo import primitive_builtin_hosts
    from aiida_battgen.tools.profiles import ensure_battgen_code, ensure_localhost
    from aiida_battgen.workchains.discovery import DiscoveryWorkChain

    folder = tmp_path_factory.mktemp("candidates")
    lines = ["material_id,cif"] + [f'mp-{i},"{CifWriter(s)}"' for i, (_, s) in
                                   enumerate(primitive_builtin_hosts(["LiCl"]), start=22905)]
    (folder / "seeds.csv").write_text("\n".join(lines) + "\n")
    entries = folder / "entries.json"
    entries.write_text(json.dumps([ComputedEntry(f, e, entry_id=f"ref-{f}").as_dict() for f, e in ENERGIES.items()]))
    builder = DiscoveryWorkChain.get_builder_from_protocol(
        ensure_battgen_code(ensure_localhost()), snapshot=SourceSnapshotData.from_file(folder / "seeds.csv"),
        protocol="fast",
        overrides={"generation": {"n": 4, "conditions": {"allowed_elements": ["Li", "Na", "Cl"]}},
                   "preselection": {"top_k": 2}, "relax": {"relax": {"parameters": {"fmax": 0.5, "max_steps": 20}}},
                   "hull": {"compatibility": None},
                   "known_materials": None,  # NaCl from LiCl is known; these tests are about the outputs
                   "shortlist": {"top_k": 2, "max_values": {"e_above_hull_eV_per_atom": 100.0}}},
    )
    builder.hull_reference_entries = orm.SinglefileData(entries)
    builder.metadata.label = "test-candidates-campaign"
    _, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    return node


@pytest.mark.slow
def test_candidates_are_labelled_with_extras_and_properties(discovery_run):
    candidates = discovery_run.outputs.candidates
    properties = discovery_run.outputs.candidate_properties
    assert len(candidates) >= 1 and set(candidates) == set(properties)
    for name, structure in candidates.items():
        values = properties[name].get_dict()
        rank = int(re.match(r"rank_(\d+)_", name).group(1))
        formula = structure.get_pymatgen().composition.reduced_formula
        assert structure.label == f"{formula} (rank {rank})"
        extras = structure.base.extras.all
        assert extras["e_above_hull_eV_per_atom"] == values["e_above_hull_eV_per_atom"]
        assert isinstance(extras["e_above_hull_eV_per_atom"], float)
        assert extras["formula"] == formula and extras["generator"] == "substitution" and extras["rank"] == rank
        assert extras["campaign"] == "test-candidates-campaign"
        assert extras["discovery_uuid"] == discovery_run.uuid
        assert extras["parent_row_id"] == "mp-22905"  # the source row it was substituted from
        assert values["energy_per_atom_eV"] is not None  # units in the keys


@pytest.mark.slow
def test_one_line_query_finds_the_candidates(discovery_run):
    best = min(s.base.extras.get("e_above_hull_eV_per_atom") for s in discovery_run.outputs.candidates.values())
    # the profile is shared with other test files (e.g. the campaign's candidates): ask for this campaign's
    found = orm.QueryBuilder().append(orm.StructureData, filters={
        "extras.campaign": "test-candidates-campaign",
        "extras.e_above_hull_eV_per_atom": {"<": best + 1e-6}}).all(flat=True)
    expected = {s.uuid for s in discovery_run.outputs.candidates.values()
                if s.base.extras.get("e_above_hull_eV_per_atom") < best + 1e-6}
    assert {node.uuid for node in found} == expected and expected


@pytest.mark.slow
def test_the_documented_recipes_run(discovery_run):
    blocks = re.findall(r"```python\n(.+?)\n```", QUERIES.read_text(), flags=re.S)
    assert len(blocks) == 3
    namespace = {}
    for block in blocks:
        exec(compile(block, str(QUERIES), "exec"), namespace)  # noqa: S102 - the documentation's own code
    candidates = list(discovery_run.outputs.candidates.values())
    below = {s.label for s in candidates if s.base.extras.get("e_above_hull_eV_per_atom") < 0.05}
    assert below, "the illustrative hull should put a Na substitution below 0.05 eV/atom"
    assert {row[0] for row in namespace["stable"]} >= below
    with_source = namespace["with_source"]
    assert {row[0] for row in with_source} == below
    assert all(row[2] == "mp-22905" and row[3] == "file" and row[4] == "seeds.csv" for row in with_source)
    assert {row[0] for row in namespace["made_by_substitution"]} >= {s.label for s in candidates}
    assert all(row[1] == "test-candidates-campaign" for row in namespace["made_by_substitution"]
               if row[0] in {s.label for s in candidates})
