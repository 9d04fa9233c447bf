"""Screening and substitution calcfunctions: outputs, funnel, exit codes 320/321."""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_battgen.calculations.functions.generate_substitution import generate_substitution
from aiida_battgen.calculations.functions.screen_charge_neutrality import screen_charge_neutrality
from aiida_battgen.calculations.functions.screen_novelty import screen_novelty
from aiida_battgen.calculations.functions.screen_uniqueness import screen_uniqueness
from aiida_battgen.calculations.functions.screen_validity import screen_validity
from aiida_battgen.data.batch import StructureBatchData
from battgen.batch import StructureBatch

pytestmark = pytest.mark.usefixtures("aiida_profile_clean")


def test_funnel_chain(small_batch):
    structures = StructureBatchData(batch=small_batch)
    valid = screen_validity(structures, orm.Dict({"min_distance_A": 0.5}))
    assert valid["passed"].n_rows == 4 and valid["rejected"].n_rows == 0  # empty side is still a node
    neutral = screen_charge_neutrality(valid["passed"])
    unique = screen_uniqueness(neutral["passed"])
    assert unique["passed"].n_rows == 3
    rejected_meta = unique["rejected"].get_batch().meta[0]
    assert (rejected_meta["row_id"], rejected_meta["reject_reason"]) == ("licl-strained", "duplicate of licl")
    reference = StructureBatchData(batch=small_batch.select(lambda m, s: m["row_id"] == "si"))
    novel = screen_novelty(unique["passed"], reference)
    assert novel["passed"].get_batch().row_ids == ["licl", "nacl"]
    assert novel["rejected"].get_batch().meta[0]["rejected_by"] == "novelty"
    funnel = [small_batch.__len__()] + [n["passed"].n_rows for n in (valid, neutral, unique, novel)]
    assert funnel == [4, 4, 4, 3, 2]


def test_exit_codes(small_batch):
    empty = StructureBatchData(batch=StructureBatch())
    _, node = run_get_node(screen_validity, structures=empty)
    assert node.exit_status == 320 and "ERROR_EMPTY_BATCH" in node.exit_message
    assert not node.base.links.get_outgoing().all()  # nothing stored
    structures = StructureBatchData(batch=small_batch)
    _, node = run_get_node(screen_validity, structures=structures, parameters=orm.Dict({"min_distance_A": -1.0}))
    assert node.exit_status == 321 and "non-negative" in node.exit_message
    _, node = run_get_node(screen_uniqueness, structures=structures, parameters=orm.Dict({"cutoff": 0.5}))
    assert node.exit_status == 321 and "unknown key" in node.exit_message


def test_generate_substitution(small_batch):
    seeds = StructureBatchData(batch=small_batch.select(lambda m, s: m["row_id"] in ("licl", "si")))
    parameters = orm.Dict({"n": 5, "conditions": {"max_per_seed": 10}})
    result, node = run_get_node(generate_substitution, seeds=seeds, parameters=parameters, seed=orm.Int(0))
    assert node.is_finished_ok
    batch = result["structures"].get_batch()
    assert len(batch) == 5 and batch.row_ids[0] == "substitution-000000"
    assert all(m["parent_row_id"] in ("licl", "si") for m in batch.meta)
    _, node = run_get_node(generate_substitution, seeds=seeds, parameters=orm.Dict({"n": 5, "conditions": {"x": 1}}),
                           seed=orm.Int(0))
    assert node.exit_status == 321
    _, node = run_get_node(generate_substitution, seeds=StructureBatchData(batch=StructureBatch()),
                           parameters=parameters, seed=orm.Int(0))
    assert node.exit_status == 320
