"""Property-based fuzzing (hypothesis) of our structure readers and of the crystal text <-> structure converter.

* Any bytes or text given to the batch reader raise nothing but ``BatchFormatError``; any text given to the
  extended-XYZ / CIF / CSV source readers raises nothing but ``SourceFormatError`` (a broken *row* is
  skipped and counted, never raised).
* Valid random structures round-trip through the batch file exactly, and through CIF and extended XYZ
  within the files' precision.
* structure -> crystal text -> structure reproduces the cell and the wrapped fractional coordinates within
  the printed precision; the text -> structure -> text round trip is exact; garbage text is a counted parse
  failure with a reason, never an exception.

Example counts are bounded so the file runs in well under a minute.
"""

from __future__ import annotations

import gzip
import io
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure

from battgen.batch import BatchFormatError, StructureBatch
from battgen.generate.llm.sampling import parse_structure_texts
from battgen.generate.llm.text import PARSE_FAILURE_REASONS, CrystalTextError, structure_to_text, text_to_structure
from battgen.sources.files import SourceFormatError, read_structures, structure_problem

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ELEMENTS = ["Li", "Na", "Mg", "O", "S", "Cl", "Co", "Fe", "Si", "P"]


@st.composite
def structures(draw, max_sites: int = 6) -> Structure:
    """An ordered structure: a reasonable cell, 1-6 sites no closer than 0.5 Å."""
    lengths = [draw(st.floats(2.5, 12.0)) for _ in range(3)]
    angles = [draw(st.floats(70.0, 110.0)) for _ in range(3)]
    cosines = np.cos(np.radians(angles))
    assume(1 - (cosines**2).sum() + 2 * cosines.prod() > 0.2)  # a cell, not nearly flat
    n_sites = draw(st.integers(1, max_sites))
    species = [draw(st.sampled_from(ELEMENTS)) for _ in range(n_sites)]
    coords = [[draw(st.floats(0.0, 0.999)) for _ in range(3)] for _ in range(n_sites)]
    structure = Structure(Lattice.from_parameters(*lengths, *angles), species, coords)
    assume(structure_problem(structure) is None)
    return structure


def _wrapped_distance(a: np.ndarray, b: np.ndarray) -> float:
    delta = np.abs(np.mod(a, 1.0) - np.mod(b, 1.0))
    return float(np.minimum(delta, 1.0 - delta).max())


# --- batch files -----------------------------------------------------------------------------------------

json_lines = st.lists(
    st.one_of(
        st.text(max_size=80),
        st.just('{"format": "battgen.structure_batch", "version": 1, "n_rows": 1}'),
        st.builds(lambda n: f'{{"format": "battgen.structure_batch", "version": 1, "n_rows": {n}}}',
                  st.integers(-2, 3)),
        st.just('{"row_id": "a", "meta": {}, "structure": {"lattice": [[1,0,0],[0,1,0],[0,0,1]], "species": ["Li"], '
                '"frac_coords": [[0,0,0]]}}'),
        st.just('{"row_id": "a", "structure": {"lattice": [[1,0],[0,1]], "species": ["Xx"], "frac_coords": []}}'),
        st.just('{"row_id": 5, "structure": {"lattice": "abc"}}'),
        st.just("[1, 2, 3]"),
        st.just('{"row_id": "a", "structure": {"lattice": [[0,0,0],[0,0,0],[0,0,0]], "species": ["Li"], '
                '"frac_coords": [[0,0,0]]}}'),
    ),
    max_size=5,
)


@FUZZ
@given(lines=json_lines)
def test_batch_stream_reader_raises_only_batch_format_error(lines):
    try:
        batch = StructureBatch.read_stream(io.StringIO("\n".join(lines)))
    except BatchFormatError:
        return
    assert all(isinstance(s, Structure) for s in batch.structures)


@FUZZ
@given(payload=st.binary(max_size=400), gzipped=st.booleans())
def test_batch_file_reader_raises_only_batch_format_error(payload, gzipped, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "in.jsonl.gz"
    path.write_bytes(gzip.compress(payload) if gzipped else payload)
    with pytest.raises(BatchFormatError):
        StructureBatch.read(path)


@FEW
@given(items=st.lists(structures(), min_size=1, max_size=4), energy=st.floats(-50, 50))
def test_valid_structures_round_trip_through_a_batch_file(items, energy, tmp_path_factory):
    batch = StructureBatch.from_structures(items, [{"energy_eV": energy, "note": "ünïcode"} for _ in items])
    path = batch.write(tmp_path_factory.mktemp("fuzz") / "b.jsonl.gz")
    back = StructureBatch.read(path)
    assert back.meta == batch.meta
    for original, read in zip(items, back.structures):
        assert [s.symbol for s in read.species] == [s.symbol for s in original.species]
        np.testing.assert_allclose(read.lattice.matrix, original.lattice.matrix, atol=1e-9)
        np.testing.assert_allclose(read.frac_coords, original.frac_coords, atol=1e-9)


# --- source files: extended XYZ, CIF, CSV ----------------------------------------------------------------

text_junk = st.text(alphabet=string.printable, max_size=300)
extxyz_like = st.builds(
    lambda n, lattice, lines: (f"{n}\nLattice=\"{lattice}\" Properties=species:S:1:pos:R:3 pbc=\"T T T\"\n"
                               + "\n".join(lines)),
    st.integers(-1, 4),
    st.sampled_from(["5 0 0 0 5 0 0 0 5", "0 0 0 0 0 0 0 0 0", "1 2 3", "a b c d e f g h i", "1e400 0 0 0 1 0 0 0 1"]),
    st.lists(st.sampled_from(["Li 0 0 0", "O 0.1 0 0", "Xx 1 1 1", "Li 0 0", "Cl 2.5 2.5 two", "Na nan 0 0", ""]),
             max_size=5),
)
cif_like = st.builds(
    lambda cell, rows: "data_fuzz\n" + cell + "_symmetry_space_group_name_H-M 'P 1'\nloop_\n _atom_site_label\n"
    " _atom_site_type_symbol\n _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n _atom_site_occupancy\n"
    + "\n".join(rows) + "\n",
    st.sampled_from([
        "_cell_length_a 5\n_cell_length_b 5\n_cell_length_c 5\n_cell_angle_alpha 90\n_cell_angle_beta 90\n"
        "_cell_angle_gamma 90\n",
        "_cell_length_a 0\n_cell_length_b 5\n_cell_length_c 5\n_cell_angle_alpha 90\n_cell_angle_beta 90\n"
        "_cell_angle_gamma 90\n",
        "_cell_length_a 5\n_cell_length_b 5\n_cell_length_c 5\n_cell_angle_alpha 180\n_cell_angle_beta 0\n"
        "_cell_angle_gamma 90\n",
        "_cell_length_a five\n",
        "",
    ]),
    st.lists(st.sampled_from(["Li1 Li 0 0 0 1", "O1 O 0.01 0 0 1", "Co1 Co 0.5 0.5 0.5 0.5", "Xx1 Xx 0 0 0 1",
                              "Li2 Li 0 0", "Na1 Na ? ? ? 1", "S1 S 0.5 0.5 0.5 2"]), max_size=4),
)


@FEW
@given(text=st.one_of(text_junk, extxyz_like))
def test_extxyz_reader_raises_only_source_format_error(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "in.extxyz"
    path.write_text(text)
    try:
        batch, report = read_structures(path)
    except SourceFormatError:
        return
    assert report.n_kept == len(batch) and report.n_read >= len(batch)


@FUZZ
@given(text=st.one_of(text_junk, cif_like))
def test_cif_reader_raises_only_source_format_error(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "in.cif"
    path.write_text(text)
    try:
        batch, report = read_structures(path)
    except SourceFormatError:
        return
    assert report.n_kept == len(batch)
    assert all(structure_problem(s) is None for s in batch.structures)


@FEW
@given(cifs=st.lists(st.one_of(text_junk, cif_like), max_size=3),
       header=st.sampled_from(["material_id,cif", "cif", "id,x"]))
def test_csv_reader_raises_only_source_format_error(cifs, header, tmp_path_factory):
    import csv

    path = tmp_path_factory.mktemp("fuzz") / "in.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header.split(","))
        for index, cif in enumerate(cifs):
            writer.writerow([f"mp-{index}", cif][-len(header.split(",")):])
    try:
        batch, report = read_structures(path)
    except SourceFormatError:
        return
    assert report.n_kept == len(batch) <= len(cifs)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structure=structures())
def test_valid_structures_round_trip_through_cif_and_extxyz(structure, tmp_path_factory):
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    folder = tmp_path_factory.mktemp("fuzz")
    structure.to(filename=str(folder / "s.cif"))
    write(folder / "s.extxyz", AseAtomsAdaptor.get_atoms(structure), format="extxyz")
    for name in ("s.cif", "s.extxyz"):
        batch, report = read_structures(folder / name)
        assert len(batch) == 1, f"{name}: {report}"
        read = batch.structures[0]
        assert read.composition == structure.composition
        np.testing.assert_allclose(read.lattice.abc, structure.lattice.abc, atol=1e-4)
        np.testing.assert_allclose(read.lattice.angles, structure.lattice.angles, atol=1e-3)
        # CIF groups sites by element and both may wrap coordinates: match each site to one of its element.
        unmatched = list(range(len(structure)))
        for site in read:
            match = next(i for i in unmatched if structure[i].specie == site.specie
                         and _wrapped_distance(structure[i].frac_coords, site.frac_coords) < 1e-4)
            unmatched.remove(match)


# --- crystal text <-> structure -------------------------------------------------------------------------


@FUZZ
@given(structure=structures(max_sites=8))
def test_crystal_text_round_trip_within_printed_precision(structure):
    text = structure_to_text(structure)
    try:
        back = text_to_structure(text)
    except CrystalTextError as exc:
        # Rounding to whole degrees can only break a cell that was nearly flat; our cells are not.
        pytest.fail(f"printed text of a valid structure does not parse: {exc}\n{text}")
    assert [s.symbol for s in back.species] == [s.symbol for s in structure.species]
    np.testing.assert_allclose(back.lattice.abc, structure.lattice.abc, atol=0.05 + 1e-9)
    np.testing.assert_allclose(back.lattice.angles, structure.lattice.angles, atol=0.5 + 1e-6)
    assert _wrapped_distance(back.frac_coords, structure.frac_coords) <= 0.005 + 1e-9
    assert structure_to_text(back) == text  # text -> structure -> text is exact


garbage_texts = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(["5.1 5.1 5.1", "90 90 90", "Li", "O", "Xx", "0.00 0.50 0.50", "0.1 0.2", "-1 2 3",
                              "nan 1 1", "0 0 0", "179 179 179", "1e999 1 1", "  ", "Li Li", "0.5 0.5 0.5 0.5"]),
             max_size=10).map("\n".join),
)


@FUZZ
@given(texts=st.lists(garbage_texts, max_size=6))
def test_garbage_crystal_text_is_a_counted_parse_failure(texts):
    parsed, failures = parse_structure_texts(texts)
    assert len(parsed) == len(texts)
    assert sum(failures.values()) == sum(s is None for s in parsed)
    assert set(failures) <= set(PARSE_FAILURE_REASONS)
    for structure in parsed:
        if structure is not None:
            assert len(structure) >= 1 and structure.volume > 0
