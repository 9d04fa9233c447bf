"""Calcfunctions of the discovery chain: shortlist, extract_structure, merge_batches, funnel_summary."""

import pytest
from aiida import orm

from aiida_battgen.calculations.functions.extract_structure import extract_structure
from aiida_battgen.calculations.functions.funnel_summary import funnel_summary
from aiida_battgen.calculations.functions.merge_batches import merge_batches
from aiida_battgen.calculations.functions.shortlist import shortlist
from aiida_battgen.data.batch import StructureBatchData


@pytest.fixture
def annotated(aiida_profile, small_batch):
    batch = small_batch.with_columns(e_above_hull_eV_per_atom=[0.05, 0.2, None, 0.0],
                                     relax_status=["converged", "converged", "exploded", "converged"])
    return StructureBatchData(batch).store()


def test_batch_node_round_trip(annotated, small_batch):
    loaded = orm.load_node(annotated.pk)
    assert loaded.n_rows == 4 and loaded.base.attributes.get("elements") == ["Cl", "Li", "Na", "Si"]
    assert loaded.get_batch().row_ids == small_batch.row_ids
    assert len(loaded.base.attributes.get("content_sha256")) == 64


def test_shortlist_then_extract(annotated):
    result = shortlist(annotated, orm.Dict({"sort_by": "e_above_hull_eV_per_atom", "top_k": 2,
                                            "max_values": {"e_above_hull_eV_per_atom": 0.08}}))
    assert result["selected"].n_rows == 2 and result["rejected"].n_rows == 2
    extracted = extract_structure(result["selected"], orm.Str("si"))
    assert extracted["structure"].get_formula() == "Si2"
    properties = extracted["properties"].get_dict()
    assert properties["rank"] == 1 and properties["elements"] == ["Si"] and properties["e_above_hull_eV_per_atom"] == 0.0
    # provenance: structure <- extract_structure <- selected batch <- shortlist <- annotated batch
    assert extracted["structure"].creator.inputs.structures.creator.inputs.structures.pk == annotated.pk


def test_failures_return_exit_codes_and_store_nothing(annotated):
    n_before = orm.QueryBuilder().append(StructureBatchData).count()
    _, node = shortlist.run_get_node(annotated, orm.Dict({"sort_by": "x", "topk": 1}))
    assert node.exit_status == 321
    _, node = extract_structure.run_get_node(annotated, orm.Str("nope"))
    assert node.exit_status == 322 and not node.base.links.get_outgoing().all()
    _, node = merge_batches.run_get_node(a=annotated, b=annotated)
    assert node.exit_status == 323
    assert orm.QueryBuilder().append(StructureBatchData).count() == n_before


def test_merge_and_funnel(annotated, small_batch):
    other = StructureBatchData(small_batch.select([True, False, False, False]).with_columns(row_id=["extra"]))
    merged = merge_batches(a=annotated, b=other)["structures"]
    assert merged.n_rows == 5 and merged.get_batch().row_ids[-1] == "extra"
    funnel = funnel_summary(generated=merged, relaxed=annotated, shortlisted=other).get_dict()
    assert funnel["stages"] == ["generated", "relaxed", "relaxed_converged", "shortlisted"]
    assert funnel["counts"] == {"generated": 5, "relaxed": 4, "shortlisted": 1, "relaxed_converged": 3}
