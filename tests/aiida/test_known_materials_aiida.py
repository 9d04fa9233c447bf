"""The known-materials reference in the provenance layer: one stored node per file, novelty and E_hull
calcfunctions against it, clear exit codes (nothing stored) for a file of the wrong format."""

from __future__ import annotations

import gzip

import pytest
from aiida import orm

from aiida_battgen.calculations.functions.energy_above_hull import energy_above_hull
from aiida_battgen.calculations.functions.screen_novelty import screen_novelty
from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.data.known_materials import known_materials_node
from battgen.batch import StructureBatch
from battgen.known_materials import KnownMaterials, KnownMaterialsFormatError


@pytest.fixture(scope="module")
def known():
    return KnownMaterials.load()


def _known_structure(known, material_id):
    batch = known.structure_batch()
    return batch.structures[batch.index_of(material_id)].copy()


def test_node_is_stored_once_and_a_wrong_file_stores_nothing(aiida_profile, tmp_path):
    first = known_materials_node()
    assert known_materials_node().pk == first.pk
    assert first.base.attributes.get("known_materials_version") == 1
    assert first.base.attributes.get("n_structures") > 5000 and "CC-BY-4.0" in first.base.attributes.get("licence")
    before = orm.QueryBuilder().append(orm.Node).count()
    bad = tmp_path / "other.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"format": "battgen.structure_batch", "version": 1}\n'))
    with pytest.raises(KnownMaterialsFormatError, match="not a battgen.known_materials file"):
        known_materials_node(bad)
    assert orm.QueryBuilder().append(orm.Node).count() == before


def test_novelty_names_the_matched_mp_id(aiida_profile, known):
    lif = _known_structure(known, "mp-1138")  # rock-salt LiF
    lif.scale_lattice(lif.volume * 1.05)  # a generated copy is never exactly the MP cell
    new = _known_structure(known, "mp-1138")
    new.replace_species({"Li": "Cs", "F": "At"})
    batch = StructureBatchData(StructureBatch([lif, new], [{"row_id": "c-LiF"}, {"row_id": "c-CsAt"}]))
    outputs, node = screen_novelty.run_get_node(structures=batch, known_materials=known_materials_node())
    assert node.is_finished_ok, node.exit_message
    rejected = outputs["rejected"].get_batch().meta
    assert [(m["row_id"], m["reject_reason"]) for m in rejected] == [("c-LiF", "matches reference mp-1138")]
    assert outputs["passed"].get_batch().row_ids == ["c-CsAt"]


def test_novelty_refuses_a_file_that_is_not_a_reference(aiida_profile, tmp_path):
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"format": "something else"}\n'))
    batch = StructureBatchData(StructureBatch([_known_structure(KnownMaterials.load(), "mp-1138")], [{"row_id": "a"}]))
    _, node = screen_novelty.run_get_node(structures=batch, known_materials=orm.SinglefileData(path))
    assert node.exit_status == 322 and "not a battgen.known_materials file" in node.exit_message
    _, node = screen_novelty.run_get_node(structures=batch)
    assert node.exit_status == 322


def test_energy_above_hull_against_the_known_hull(aiida_profile, known):
    """LiFeO2-type candidate in Li-Fe-O (well covered) and one in Ta-O (no known compound: incomplete)."""
    li_fe_o = _known_structure(known, "mp-1265")  # rock-salt MgO (2 atoms) -> ordered LiFeO2 cell
    li_fe_o.make_supercell([2, 1, 1])
    li_fe_o.replace(0, "Li")
    li_fe_o.replace(1, "Fe")
    tao = _known_structure(known, "mp-1265")
    tao.replace_species({"Mg": "Ta"})
    batch = StructureBatch([li_fe_o, tao], [{"row_id": "lfo", "energy_eV": -6.0 * len(li_fe_o)},
                                            {"row_id": "tao", "energy_eV": -9.0 * len(tao)}])
    reference = known_materials_node()
    outputs, node = energy_above_hull.run_get_node(structures=StructureBatchData(batch), known_materials=reference)
    assert node.is_finished_ok, node.exit_message
    rows = {m["row_id"]: m for m in outputs["structures"].get_batch().meta}
    assert rows["lfo"]["hull_incomplete"] is False and rows["lfo"]["hull_n_competing_compounds"] > 50
    assert rows["tao"]["hull_incomplete"] is True
    assert all(m["e_above_hull_eV_per_atom"] is not None for m in rows.values())
    assert rows["lfo"]["hull_energy_correction_eV"] < 0  # MP2020 applied to the MLIP energy
    hull = outputs["hull"].get_dict()
    assert hull["label"].startswith("known materials v1") and hull["version"] == 1
    assert hull["source"] == "known_materials" and hull["candidate_compatibility"] == "MP2020"
    assert hull["coverage"]["n_chemical_systems"] == 2 and hull["coverage"]["n_with_competing_compounds"] == 1
    assert hull["reference_node"] == f"SinglefileData<{reference.pk}>"

    _, node = energy_above_hull.run_get_node(structures=StructureBatchData(batch), known_materials=reference,
                                             parameters=orm.Dict({"compatibility": "MP2020"}))
    assert node.exit_status == 333
