"""The batch file format: round trip, summaries and clear errors on bad files."""

import gzip

import numpy as np
import pytest

from battgen.batch import BatchFormatError, StructureBatch


def test_round_trip_preserves_structures_and_metadata(tmp_path, small_batch):
    batch = small_batch.with_columns(energy_per_atom_eV=[-1.0, -2.0, float("nan"), np.float64(-5.4)])
    path = batch.write(tmp_path / "b.jsonl.gz")
    back = StructureBatch.read(path)
    assert back.row_ids == batch.row_ids
    for (_, original), (_, read) in zip(batch, back):
        assert read.composition == original.composition
        np.testing.assert_allclose(read.lattice.matrix, original.lattice.matrix, atol=1e-9)
        np.testing.assert_allclose(read.frac_coords, original.frac_coords, atol=1e-9)
    # NaN is not JSON: it becomes None; numpy scalars become floats.
    assert back.column("energy_per_atom_eV") == [-1.0, -2.0, None, -5.4]


def test_summary_counts(small_batch):
    summary = small_batch.summary()
    assert summary["n_rows"] == 4
    assert summary["elements"] == ["Cl", "Li", "Na", "Si"]
    assert summary["n_reduced_formulas"] == 3
    assert summary["nsites_min"] == 2 and summary["nsites_max"] == 8


def test_select_and_duplicate_ids(small_batch):
    kept = small_batch.select(lambda meta, s: "Li" in s.composition)
    assert kept.row_ids == ["licl", "licl-strained"]
    with pytest.raises(BatchFormatError, match="duplicate row_id"):
        StructureBatch.concatenate([small_batch, small_batch])


def test_truncated_file_is_reported(tmp_path, small_batch):
    path = small_batch.write(tmp_path / "b.jsonl.gz")
    text = gzip.decompress(path.read_bytes()).decode()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(text[: len(text) // 2].encode()))
    with pytest.raises(BatchFormatError, match="truncated|not JSON"):
        StructureBatch.read(cut)
    raw_cut = tmp_path / "rawcut.jsonl.gz"
    raw_cut.write_bytes(path.read_bytes()[:40])
    with pytest.raises(BatchFormatError):
        StructureBatch.read(raw_cut)
    with pytest.raises(BatchFormatError, match="does not exist"):
        StructureBatch.read(tmp_path / "missing.jsonl.gz")


def test_disordered_structure_is_rejected(rocksalt_licl):
    disordered = rocksalt_licl.copy()
    disordered.replace_species({"Li": {"Li": 0.5, "Na": 0.5}})
    with pytest.raises(BatchFormatError, match="disordered"):
        StructureBatch.from_structures([disordered]).write_stream(__import__("io").StringIO())


def test_remembered_structure_text_is_reused_and_refreshed(tmp_path, small_batch):
    path = small_batch.write(tmp_path / "a.jsonl.gz")
    back = StructureBatch.read(path)
    subset = back.select([True, False, True, False]).with_columns(score=[1.0, 2.0])
    # A structure changed in place (strain) must be re-encoded, not written from the remembered text.
    subset.structures[1].apply_strain(0.05)
    again = StructureBatch.read(subset.write(tmp_path / "b.jsonl.gz"))
    assert again.row_ids == ["licl", "licl-strained"] and again.column("score") == [1.0, 2.0]
    np.testing.assert_allclose(again.structures[1].lattice.matrix, subset.structures[1].lattice.matrix, atol=1e-9)
    np.testing.assert_allclose(again.structures[0].frac_coords, small_batch.structures[0].frac_coords, atol=1e-9)
    # a metadata key named like the structure field does not confuse the reader
    tricky = small_batch.with_columns(note=['{"structure": 1}'] * 4, structure=[{"x": 1}] * 4)
    read = StructureBatch.read(tricky.write(tmp_path / "c.jsonl.gz"))
    assert read.column("structure") == [{"x": 1}] * 4
    assert StructureBatch.read(read.write(tmp_path / "d.jsonl.gz")).structures[3].composition.reduced_formula == "Si"


def test_early_version_1_layout_is_still_read(tmp_path):
    """Rows written with the structure keys at the top level (early v1 files) remain readable."""
    text = ('{"format": "battgen.structure_batch", "version": 1, "n_rows": 1, "columns": ["row_id"]}\n'
            '{"row_id":"si","lattice":[[5.43,0,0],[0,5.43,0],[0,0,5.43]],"species":["Si","Si"],'
            '"frac_coords":[[0,0,0],[0.25,0.25,0.25]],"meta":{"x":1}}\n')
    path = tmp_path / "old.jsonl.gz"
    path.write_bytes(gzip.compress(text.encode()))
    batch = StructureBatch.read(path)
    assert batch.row_ids == ["si"] and batch.column("x") == [1]
    assert StructureBatch.read(batch.write(tmp_path / "new.jsonl.gz")).structures[0].composition.reduced_formula == "Si"
