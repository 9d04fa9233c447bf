"""End to end: DiscoveryWorkChain in-process on SQLite with the real battgen CLI and CHGNet, then the
lineage of every shortlisted candidate, queries, and an archive round trip into empty storage."""

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_battgen.tools.demo import build_demo_inputs
from aiida_battgen.tools.lineage import DISCOVERY_STEPS, candidate_lineage, find_candidates

HOSTS = ["LiCoO2", "Li2O", "LiCl", "Si"]
TINY = {
    "generation": {"n": 30, "conditions": {"max_per_seed": 8}},
    "preselection": {"top_k": 3},
    "relax": {"relax": {"parameters": {"max_steps": 40, "fmax": 0.2}}},
    "shortlist": {"top_k": 3, "max_values": {"e_above_hull_eV_per_atom": 2.0}},
}


@pytest.fixture(scope="module")
def discovery_run(aiida_profile, battgen_executable):
    from aiida_battgen.tools.profiles import ensure_battgen_code, ensure_localhost

    code = ensure_battgen_code(ensure_localhost())
    builder = build_demo_inputs(code, "fast", overrides=TINY, host_names=HOSTS)
    builder.shortlist_group_label = orm.Str("test/discovery/shortlist")
    _, node = run_get_node(builder)
    return node


@pytest.mark.slow
def test_discovery_finishes_with_a_consistent_funnel(discovery_run):
    node = discovery_run
    assert node.is_finished_ok, node.exit_message
    counts = node.outputs.funnel["counts"]
    order = ["generated", "valid_structure", "charge_neutral", "unique", "novel", "preselected", "relaxed"]
    assert [k for k in counts if k in order] == order
    values = [counts[k] for k in order]
    assert values == sorted(values, reverse=True), counts  # a funnel never grows
    assert counts["generated"] <= 30 and counts["preselected"] == 3
    assert counts["shortlisted"] == len(node.outputs.candidates) >= 1
    hull = node.outputs.hull.get_dict()  # the embedded known-materials hull is the offline default
    assert hull["label"].startswith("known materials v1") and hull["source"] == "known_materials"
    assert hull["candidate_compatibility"] is None  # CHGNet learned MP2020-corrected energies
    # every sub-process has a call link label; no reference relaxation against a stored hull
    labels = {link.link_label for link in node.base.links.get_outgoing().all() if link.link_type.value.startswith("call")}
    assert {"generate_substitution", "screen_validity", "screen_novelty", "relax_candidates",
            "energy_above_hull", "shortlist", "funnel_summary"} <= labels
    assert "relax_references" not in labels


@pytest.mark.slow
def test_shortlist_is_new_against_the_known_materials(discovery_run):
    """No shortlisted candidate's formula + structure is in the reference; none is ranked on an incomplete
    hull; every E_hull is against the MP2020 hull; novelty rejections name MP ids."""
    from battgen.known_materials import KnownMaterials
    from battgen.screen.novelty import make_matcher

    known = KnownMaterials.load()
    reference = known.structure_batch()
    matcher = make_matcher()
    shortlist = discovery_run.outputs.shortlist.get_batch()
    assert len(shortlist) >= 1
    for meta, structure in shortlist:
        assert meta["hull_incomplete"] is False and meta["relaxed_matches_known"] is None
        assert meta["e_above_hull_eV_per_atom"] is not None and meta["hull_label"].startswith("known materials v1")
        same_formula = [s for m, s in reference if m["formula"] == structure.composition.reduced_formula]
        assert not any(matcher.fit(structure, other) for other in same_formula), meta["row_id"]
    novelty = next(link.node for link in discovery_run.base.links.get_outgoing().all()
                   if link.link_label == "screen_novelty")
    reasons = novelty.outputs.rejected.get_batch().column("reject_reason")
    assert all(reason.startswith("matches reference ") for reason in reasons)


@pytest.mark.slow
def test_every_candidate_has_a_complete_lineage(discovery_run):
    seeds_pk = discovery_run.inputs.seed_structures.pk
    for structure in discovery_run.outputs.candidates.values():
        lineage = candidate_lineage(structure)
        assert lineage.missing_steps() == [], lineage.as_text()
        assert any(f"<{seeds_pk}>" in source for source in lineage.sources), lineage.as_text()
        assert "generate_substitution" in lineage.process_labels


@pytest.mark.slow
def test_candidates_query(discovery_run):
    everything = find_candidates(group_label="test/discovery/shortlist")
    assert len(everything) == len(discovery_run.outputs.candidates)
    values = [row["e_above_hull_eV_per_atom"] for row in everything]
    assert values == sorted(values)
    cut = find_candidates(max_e_above_hull=values[0], group_label="test/discovery/shortlist")
    assert {row["structure_pk"] for row in cut} <= {row["structure_pk"] for row in everything}
    assert all(row["e_above_hull_eV_per_atom"] <= values[0] for row in cut) and cut
    element = everything[0]["elements"][0]
    assert all(element in row["elements"] for row in find_candidates(elements=[element]))


@pytest.mark.slow
def test_archive_round_trip_keeps_the_lineage(discovery_run, aiida_profile, tmp_path):
    from aiida.tools.archive import create_archive, import_archive

    candidates = {s.uuid: candidate_lineage(s).process_labels for s in discovery_run.outputs.candidates.values()}
    archive = tmp_path / "run.aiida"
    create_archive([discovery_run], filename=archive)
    aiida_profile.reset_storage()
    assert orm.QueryBuilder().append(orm.StructureData).count() == 0
    import_archive(archive)
    for uuid, labels in candidates.items():
        lineage = candidate_lineage(orm.load_node(uuid))
        assert lineage.process_labels == labels
        assert lineage.missing_steps(DISCOVERY_STEPS) == []


@pytest.mark.slow
def test_node_count_does_not_grow_with_candidates(aiida_profile):
    """Runs with 10 and 60 generated candidates add the same number of nodes, up to the shortlist."""
    from aiida_battgen.tools.profiles import ensure_battgen_code, ensure_localhost

    from aiida_battgen.data.known_materials import known_materials_node

    code = ensure_battgen_code(ensure_localhost())
    known_materials_node()  # stored once per profile, before either run is counted
    added = {}
    for n in (10, 60):
        settings = {
            "generation": {"n": n, "conditions": {"threshold": 1e-5, "max_per_seed": 1000,
                                                  "max_substituted_species": 2}},
            "preselection": {"top_k": 2},
            "relax": {"relax": {"parameters": {"fmax": 1.0, "max_steps": 60}}},
            "shortlist": {"top_k": 2, "max_values": {"e_above_hull_eV_per_atom": 10.0}},
        }
        before = orm.QueryBuilder().append(orm.Node).count()
        _, node = run_get_node(build_demo_inputs(code, "fast", overrides=settings, host_names=["LiCoO2", "Li2O"]))
        assert node.is_finished_ok, node.exit_message
        counts = node.outputs.funnel["counts"]
        assert counts["generated"] == n
        # each shortlisted candidate adds extract_structure + StructureData + properties Dict
        added[n] = orm.QueryBuilder().append(orm.Node).count() - before - 3 * counts["shortlisted"]
    assert added[10] == added[60], added


@pytest.mark.slow
def test_file_snapshot_source_and_entries_hull(aiida_profile, tmp_path):
    """Seeds from a CSV snapshot (batch_from_snapshot) and E_hull against given reference entries: no
    reference relaxation is launched and the hull Dict names the entries."""
    import json

    from pymatgen.entries.computed_entries import ComputedEntry
    from pymatgen.io.cif import CifWriter

    from aiida_battgen.data.snapshot import SourceSnapshotData
    from aiida_battgen.tools.demo import primitive_builtin_hosts
    from aiida_battgen.tools.profiles import ensure_battgen_code, ensure_localhost
    from aiida_battgen.workchains.discovery import DiscoveryWorkChain

    hosts = primitive_builtin_hosts(["LiCoO2", "Li2O"])
    lines = ["material_id,cif,formation_energy_per_atom,band_gap,e_above_hull"]
    for meta, structure in hosts:
        lines.append(f'{meta["row_id"]},"{CifWriter(structure)}",-1.0,1.0,0.0')
    csv_path = tmp_path / "seeds.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    # Illustrative energies (eV per formula unit) spanning Li-Na-Co-O, so Li->Na substitutions are on the hull.
    energies = {"Li": -1.91, "Na": -1.31, "Co": -7.11, "O2": -9.90, "Li2O": -14.98, "Na2O": -11.8,
                "CoO": -14.45, "LiCoO2": -26.11, "NaCoO2": -24.5}
    entries_path = tmp_path / "entries.json"
    entries_path.write_text(json.dumps([ComputedEntry(f, e, entry_id=f"ref-{f}").as_dict() for f, e in energies.items()]))

    code = ensure_battgen_code(ensure_localhost())
    builder = DiscoveryWorkChain.get_builder_from_protocol(
        code, snapshot=SourceSnapshotData.from_file(csv_path), protocol="fast",
        overrides={"generation": {"n": 10, "conditions": {"allowed_elements": ["Li", "Na", "Co", "O"]}},
                   "preselection": {"top_k": 2}, "relax": {"relax": {"parameters": {"fmax": 0.5, "max_steps": 40}}},
                   "hull": {"compatibility": None},
                   "known_materials": None,  # this test is about the given entries and the seeds
                   "shortlist": {"top_k": 2, "max_values": {"e_above_hull_eV_per_atom": 100.0}}},
    )
    builder.hull_reference_entries = orm.SinglefileData(entries_path)
    _, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    called = {link.link_label for link in node.base.links.get_outgoing().all()}
    assert "batch_from_snapshot" in called and "relax_references" not in called
    hull = node.outputs.hull.get_dict()
    assert hull["n_entries"] == len(energies) and hull["label"].startswith("entries SinglefileData")
    e_hull = node.outputs.relaxed_structures.get_batch().column("e_above_hull_eV_per_atom")
    assert e_hull and all(value is not None for value in e_hull)
    formulas = {s.get_formula() for s in node.outputs.candidates.values()}
    assert formulas and all("Na" in f for f in formulas)
