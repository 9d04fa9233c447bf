"""Selection by columns and the report table / figure."""

import pytest

from battgen.batch import StructureBatch
from battgen.report import format_table, plot_discovery_summary, write_csv
from battgen.select import SelectionCriteria, select_rows


@pytest.fixture
def ranked_batch(small_batch):
    return small_batch.with_columns(e_above_hull_eV_per_atom=[0.05, 0.2, None, 0.0], generator=["a", "a", "b", "b"])


def test_select_ranks_thresholds_and_reasons(ranked_batch):
    criteria = SelectionCriteria.from_dict(
        {"sort_by": "e_above_hull_eV_per_atom", "top_k": 5, "max_values": {"e_above_hull_eV_per_atom": 0.08}}
    )
    selected, rejected = select_rows(ranked_batch, criteria)
    assert selected.row_ids == ["si", "licl"]
    assert selected.column("rank") == [1, 2]
    reasons = dict(zip(rejected.row_ids, rejected.column("reject_reason")))
    assert reasons["nacl"] == "e_above_hull_eV_per_atom=0.2 > 0.08"
    assert reasons["licl-strained"] == "no value for e_above_hull_eV_per_atom"


def test_select_top_k_and_equals(ranked_batch):
    selected, rejected = select_rows(
        ranked_batch, SelectionCriteria.from_dict({"sort_by": "e_above_hull_eV_per_atom", "ascending": False,
                                                   "top_k": 1, "equals": {"generator": "a"}}))
    assert selected.row_ids == ["nacl"]
    assert len(selected) + len(rejected) == len(ranked_batch)


def test_unknown_selection_key_is_rejected():
    with pytest.raises(ValueError, match="unknown selection key"):
        SelectionCriteria.from_dict({"sortby": "x"})
    with pytest.raises(ValueError, match="top_k"):
        SelectionCriteria.from_dict({"top_k": -1})


def test_table_csv_and_figure(tmp_path):
    rows = [{"stage": "generated", "n": 10, "x": 0.12345}, {"stage": "novel", "n": 4, "x": None}]
    text = format_table(rows, ("stage", "n", "x"))
    assert "0.123" in text and text.splitlines()[3].split()[-1] == "-"
    csv_path = write_csv(rows, ("stage", "n"), tmp_path / "t.csv")
    assert csv_path.read_text().splitlines() == ["stage,n", "generated,10", "novel,4"]
    png = plot_discovery_summary({"generated": 10, "novel": 4}, [0.0, 0.05, 0.3, None], 0.08, tmp_path / "f.png")
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_empty_batch_selection():
    selected, rejected = select_rows(StructureBatch(), SelectionCriteria(sort_by="x", top_k=3))
    assert len(selected) == 0 and len(rejected) == 0
