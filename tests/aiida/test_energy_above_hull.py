"""The ``battgen.energy_above_hull`` calcfunction: both reference routes, each exit code, nothing half-stored."""

from __future__ import annotations

import gzip
import json

import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry

from battgen.batch import StructureBatch
from battgen.stability.elemental import elemental_reference_structures

E_LI, E_O = -2.0, -5.0  # eV/atom of the hand-made Li and O2 references


def _total(n_li: int, n_o: int, formation_per_atom: float) -> float:
    return formation_per_atom * (n_li + n_o) + n_li * E_LI + n_o * E_O


def _li2o() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.65), ["O", "Li"], [[0, 0, 0], [0.25] * 3])


def _li2o2() -> Structure:
    return Structure(
        Lattice.hexagonal(3.14, 7.65), ["Li", "Li", "O", "O"],
        [[0, 0, 0], [0, 0, 0.5], [1 / 3, 2 / 3, 0.15], [1 / 3, 2 / 3, 0.35]],
    )


@pytest.fixture
def references():
    """MLIP-route references: Li, O2 (in a box) and Li2O at -2.0 eV/atom, energies in eV."""
    from aiida_battgen.data.batch import StructureBatchData

    elements = elemental_reference_structures(["Li", "O"]).with_columns(energy_eV=[E_LI, 2 * E_O])
    li2o = StructureBatch([_li2o()], [{"row_id": "Li2O", "energy_eV": _total(8, 4, -2.0)}])
    return StructureBatchData(StructureBatch.concatenate([elements, li2o]))


@pytest.fixture
def candidates():
    from aiida_battgen.data.batch import StructureBatchData

    return StructureBatchData(
        StructureBatch(
            [_li2o2(), _li2o2()],
            [{"row_id": "li2o2", "energy_eV": _total(2, 2, -1.4)}, {"row_id": "li2o2-failed", "energy_eV": None}],
        )
    )


def _entries_node(tmp_path, entries):
    """A SinglefileData shaped like a battgen.snapshot: header line, then {"entry": {...}} rows, gzipped."""
    from aiida import orm

    path = tmp_path / "snapshot.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"format": "battgen.snapshot", "n_rows": len(entries)}) + "\n")
        for entry in entries:
            handle.write(json.dumps({"material_id": entry.entry_id, "entry": entry.as_dict()}) + "\n")
    return orm.SinglefileData(path)


def _assert_nothing_stored(node):
    from aiida.common.links import LinkType

    assert node.is_failed
    assert node.base.links.get_outgoing(link_type=LinkType.CREATE).all() == []


def test_mlip_route(aiida_profile_clean, references, candidates):
    from aiida import orm

    from aiida_battgen.calculations.functions.energy_above_hull import energy_above_hull

    label = "mlip:fake-1.0 (elemental + host references)"
    outputs, node = energy_above_hull.run_get_node(
        structures=candidates, reference=references, parameters=orm.Dict({"label": label})
    )
    assert node.is_finished_ok, node.exit_message
    rows = {meta["row_id"]: meta for meta in outputs["structures"].get_batch().meta}
    assert rows["li2o2"]["e_above_hull_eV_per_atom"] == pytest.approx(0.1)  # Li2O-O2 tie line at -1.5 eV/atom
    assert rows["li2o2"]["formation_energy_per_atom_eV"] == pytest.approx(-1.4)
    assert rows["li2o2"]["decomposition"] == pytest.approx({"Li2O": 0.75, "O2": 0.25})
    assert rows["li2o2-failed"]["e_above_hull_eV_per_atom"] is None
    assert "no energy_eV" in rows["li2o2-failed"]["hull_error"]
    hull = outputs["hull"].get_dict()
    assert hull["label"] == label and hull["compatibility"] is None and hull["n_stable_phases"] == 3
    assert outputs["structures"].n_rows == 2
    assert "e_above_hull_eV_per_atom" in outputs["structures"].base.attributes.get("columns")


def test_entries_route_from_snapshot_file(aiida_profile_clean, candidates, tmp_path):
    from aiida import orm

    from aiida_battgen.calculations.functions.energy_above_hull import energy_above_hull

    entries = [
        ComputedEntry("Li", E_LI, entry_id="li"),
        ComputedEntry("O2", 2 * E_O, entry_id="o2"),
        ComputedEntry("Li2O", _total(2, 1, -2.0), entry_id="li2o"),
    ]
    outputs, node = energy_above_hull.run_get_node(
        structures=candidates,
        reference_entries=_entries_node(tmp_path, entries),
        parameters=orm.Dict({"compatibility": None}),  # hand-made energies: no MP2020 corrections
    )
    assert node.is_finished_ok, node.exit_message
    row = outputs["structures"].get_batch().get("li2o2")[0]
    assert row["e_above_hull_eV_per_atom"] == pytest.approx(0.1)
    assert outputs["hull"]["n_input_entries"] == 3 and outputs["hull"]["candidate_compatibility"] is None

    # The same entries as a List of entry dicts.
    outputs, node = energy_above_hull.run_get_node(
        structures=candidates, reference_entries=orm.List([e.as_dict() for e in entries]),
        parameters=orm.Dict({"compatibility": None}),
    )
    assert node.is_finished_ok, node.exit_message
    assert outputs["structures"].get_batch().get("li2o2")[0]["e_above_hull_eV_per_atom"] == pytest.approx(0.1)


@pytest.mark.shared_data
def test_entries_route_mp2020_real_entries(aiida_profile_clean, shared_data):
    """The MP Li-Fe-O entries file as a node; a candidate given its raw GGA+U energy gets MP's E_hull."""
    from aiida import orm

    from aiida_battgen.calculations.functions.energy_above_hull import energy_above_hull
    from aiida_battgen.data.batch import StructureBatchData
    from battgen.stability.entries import load_entries

    entries = load_entries(shared_data / "emmet_test_files" / "Li-Fe-O.json.gz")
    unstable = next(e for e in entries if e.entry_id == "mp-760830")  # Li4Fe2O5, 43 meV/atom above the hull
    batch = StructureBatch([unstable.structure], [{"row_id": "li4fe2o5", "energy_eV": unstable.uncorrected_energy}])
    outputs, node = energy_above_hull.run_get_node(
        structures=StructureBatchData(batch),
        reference_entries=orm.SinglefileData(shared_data / "emmet_test_files" / "Li-Fe-O.json.gz"),
    )
    assert node.is_finished_ok, node.exit_message
    row = outputs["structures"].get_batch().meta[0]
    assert row["e_above_hull_eV_per_atom"] == pytest.approx(0.0433, abs=1e-3)
    assert row["hull_energy_correction_eV"] == pytest.approx(unstable.correction)
    assert outputs["hull"]["compatibility"] == "MP2020" and outputs["hull"]["n_stable_phases"] == 11


def test_error_no_reference(aiida_profile_clean, candidates, references):
    from aiida_battgen.calculations.functions.energy_above_hull import energy_above_hull

    _, node = energy_above_hull.run_get_node(structures=candidates)
    assert node.exit_status == 332 and "exactly one" in node.exit_message
    _assert_nothing_stored(node)


def test_error_no_energies(aiida_profile_clean, references):
    from aiida_battgen.calculations.functions.energy_above_hull import energy_above_hull
    from aiida_battgen.data.batch import StructureBatchData

    no_energy = StructureBatchData(StructureBatch([_li2o2()], [{"row_id": "li2o2"}]))
    _, node = energy_above_hull.run_get_node(structures=no_energy, reference=references)
    assert node.exit_status == 330 and "candidate rows" in node.exit_message
    _assert_nothing_stored(node)


def test_error_hull_incomplete(aiida_profile_clean, candidates, references):
    from aiida import orm

    from aiida_battgen.calculations.functions.energy_above_hull import energy_above_hull
    from aiida_battgen.data.batch import StructureBatchData

    # References without elemental O: the hull itself cannot be built.
    no_oxygen = references.get_batch().select(lambda meta, _: meta["row_id"] != "element-O")
    _, node = energy_above_hull.run_get_node(structures=candidates, reference=StructureBatchData(no_oxygen))
    assert node.exit_status == 331 and node.exit_message.endswith("missing elements: O")
    _assert_nothing_stored(node)

    # Candidates with Cl against a Li-O hull: refused unless allow_outside_hull.
    licl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.13), ["Li", "Cl"], [[0, 0, 0], [0.5] * 3])
    licl_row = StructureBatch([licl], [{"row_id": "licl", "energy_eV": -7.0}])
    with_cl = StructureBatchData(StructureBatch.concatenate([candidates.get_batch(), licl_row]))
    _, node = energy_above_hull.run_get_node(structures=with_cl, reference=references)
    assert node.exit_status == 331 and "Cl" in node.exit_message
    _assert_nothing_stored(node)
    outputs, node = energy_above_hull.run_get_node(
        structures=with_cl, reference=references, parameters=orm.Dict({"allow_outside_hull": True})
    )
    assert node.is_finished_ok
    assert "no reference for Cl" in outputs["structures"].get_batch().get("licl")[0]["hull_error"]


def test_error_invalid_parameters(aiida_profile_clean, candidates, references):
    from aiida import orm

    from aiida_battgen.calculations.functions.energy_above_hull import energy_above_hull

    _, node = energy_above_hull.run_get_node(
        structures=candidates, reference=references, parameters=orm.Dict({"compatibility": "MP2017"})
    )
    assert node.exit_status == 333 and "MP2017" in node.exit_message
    _assert_nothing_stored(node)


def test_ports_state_units():
    from aiida_battgen.calculations.functions.energy_above_hull import energy_above_hull

    inputs = energy_above_hull.spec().inputs
    for name in ("structures", "reference", "reference_entries"):
        assert "eV" in inputs[name].help, name
    assert not inputs["reference"].required and not inputs["reference_entries"].required
