"""The online path: with an MP key the discovery fetches each chemical system of its relaxed candidates
once per database version (a stand-in MPRester counts the calls), a rerun fetches nothing, and a fetch
that fails half-way stores nothing and exits 509. The key never enters the graph."""

from __future__ import annotations

from collections import Counter

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_battgen.data.known_materials import SNAPSHOT_SYSTEM_EXTRA, SNAPSHOT_VERSION_EXTRA
from aiida_battgen.tools.demo import build_demo_inputs
from battgen.batch import row_to_structure
from battgen.known_materials import KnownMaterials

HOSTS = ["LiCoO2", "Li2O"]
TINY = {
    "generation": {"n": 12, "conditions": {"max_per_seed": 6}},
    "preselection": {"top_k": 2},
    "relax": {"relax": {"parameters": {"max_steps": 30, "fmax": 0.3}}},
    "shortlist": {"top_k": 2, "max_values": {"e_above_hull_eV_per_atom": 5.0}},
}
SECRET = "stand-in-key-0123456789abcdef"


class StandInRester:
    """MPRester stand-in serving the embedded reference's records as MP summary documents."""

    searches: Counter = Counter()
    version = "2099.01.01"
    fail_after: int | None = None

    def __init__(self, api_key):
        assert api_key == SECRET

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def get_database_version(self):
        return type(self).version

    @property
    def materials(self):
        return self

    @property
    def summary(self):
        return self

    def search(self, chemsys, fields):
        cls = type(self)
        if cls.fail_after is not None and sum(cls.searches.values()) >= cls.fail_after:
            raise ConnectionError("429 Too Many Requests")
        cls.searches[chemsys] += 1
        return [{"material_id": r["material_id"], "structure": row_to_structure(r["structure"]).as_dict(),
                 "energy_per_atom": r["energy_per_atom_eV"], "energy_above_hull": r["e_above_hull_mp_eV_per_atom"]}
                for r in KnownMaterials.load().records
                if r["chemical_system"] == chemsys and r["structure"] is not None and r["energy_per_atom_eV"] is not None]


def _snapshots(version):
    return orm.QueryBuilder().append(orm.SinglefileData, filters={f"extras.{SNAPSHOT_VERSION_EXTRA}": version}).all(flat=True)


@pytest.mark.slow
def test_fetch_once_per_system_then_cached_and_half_failed_stores_nothing(aiida_profile, battgen_executable,
                                                                         monkeypatch):
    from aiida_battgen.tools.profiles import ensure_battgen_code, ensure_localhost
    from battgen.known_materials import online

    monkeypatch.setenv("MP_API_KEY", SECRET)
    monkeypatch.setattr(online, "_default_rester", StandInRester)
    code = ensure_battgen_code(ensure_localhost())

    _, first = run_get_node(build_demo_inputs(code, "fast", overrides=TINY, host_names=HOSTS))
    assert first.is_finished_ok, first.exit_message
    relaxed = first.outputs.relaxed_structures.get_batch()
    expected = online.systems_to_fetch(online.candidate_systems(relaxed.structures))
    assert dict(StandInRester.searches) == dict.fromkeys(expected, 1)  # one fetch per chemical system
    assert sorted(node.base.extras.get(SNAPSHOT_SYSTEM_EXTRA) for node in _snapshots("2099.01.01")) == expected
    hull = first.outputs.hull.get_dict()
    assert hull["label"].startswith("Materials Project 2099.01.01") and hull["database_version"] == "2099.01.01"
    assert all(meta["hull_label"].startswith("Materials Project 2099.01.01") for meta in relaxed.meta)

    StandInRester.searches.clear()
    _, second = run_get_node(build_demo_inputs(code, "fast", overrides=TINY, host_names=HOSTS))
    assert second.is_finished_ok, second.exit_message
    assert sum(StandInRester.searches.values()) == 0  # a rerun fetches nothing
    assert len(_snapshots("2099.01.01")) == len(expected)

    StandInRester.version, StandInRester.fail_after = "2099.02.02", 1  # new database, fails on the second system
    _, failed = run_get_node(build_demo_inputs(code, "fast", overrides=TINY, host_names=HOSTS))
    assert failed.exit_status == 509 and "nothing" in failed.exit_message
    assert _snapshots("2099.02.02") == []  # nothing half-stored
    assert "hull" not in failed.outputs

    # the key is in no attribute, extra or report of the graph
    for node in orm.QueryBuilder().append(orm.Node).all(flat=True):
        assert SECRET not in str(node.base.attributes.all) + str(node.base.extras.all)
    logs = orm.QueryBuilder().append(orm.Log, project="message").all(flat=True)
    assert not any(SECRET in message for message in logs)


@pytest.mark.slow
def test_without_a_key_the_embedded_reference_is_used_and_said(aiida_profile, battgen_executable, monkeypatch):
    from aiida_battgen.tools.profiles import ensure_battgen_code, ensure_localhost

    monkeypatch.delenv("MP_API_KEY", raising=False)
    monkeypatch.setenv("PMG_MAPI_KEY", "")
    code = ensure_battgen_code(ensure_localhost())
    _, node = run_get_node(build_demo_inputs(code, "fast", overrides=TINY, host_names=HOSTS))
    assert node.is_finished_ok, node.exit_message
    assert node.outputs.hull["label"].startswith("known materials v1")
    logs = orm.QueryBuilder().append(orm.Log, filters={"dbnode_id": node.pk}, project="message").all(flat=True)
    assert any("no Materials Project API key" in message for message in logs)
