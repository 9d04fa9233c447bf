"""MgCathodeScreeningWorkChain end to end on localhost (any working ion; here Li with α-Li3N so the MD is
short): voltage CGCNN trained by our code -> capacity and thresholds -> MLMD conductivity of the best ->
funnel and the seed-002 Fig. 6a figure."""

from __future__ import annotations

import math

import pytest
from aiida import orm
from aiida.engine import run_get_node
from pymatgen.core import Lattice, Structure

from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.data.model import ModelData
from aiida_battgen.workchains.cathode_screen import MgCathodeScreeningWorkChain
from battgen.batch import StructureBatch

pytestmark = pytest.mark.usefixtures("aiida_profile_clean")


def li_structures() -> StructureBatch:
    li3n = Structure(Lattice.hexagonal(3.65, 3.88), ["N", "Li", "Li", "Li"],
                     [[0, 0, 0], [0, 0, 0.5], [1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0]])
    li2o = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.61), ["Li", "O"], [[0.25, 0.25, 0.25], [0, 0, 0]])
    licoo2 = Structure.from_spacegroup("R-3m", Lattice.hexagonal(2.82, 14.05), ["Li", "Co", "O"],
                                       [[0, 0, 0], [0, 0, 0.5], [0, 0, 0.24]])
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    # E_hull stand-ins chosen so that only Li3N (4-atom cell, fast MD) passes the 0.15 eV/atom prefilter
    return StructureBatch.from_structures(
        [li3n, li2o, licoo2, nacl],
        [{"row_id": "li3n", "e_above_hull_eV_per_atom": 0.0}, {"row_id": "li2o", "e_above_hull_eV_per_atom": 0.3},
         {"row_id": "licoo2", "e_above_hull_eV_per_atom": 0.2}, {"row_id": "nacl", "e_above_hull_eV_per_atom": 0.5}],
    )


@pytest.fixture(scope="module")
def voltage_model_dir(tmp_path_factory):
    """A tiny voltage CGCNN trained in-process on Li cells with stand-in labels (plumbing under test)."""
    from battgen.predictors.training import run_train_predictor_command

    rows = li_structures().select(lambda m, s: "Li" in s.composition)
    labelled = rows.with_columns(working_ion=["Li"] * len(rows), average_voltage_V=[0.8, 1.5, 3.9])
    workdir = tmp_path_factory.mktemp("voltage")
    labelled.write(workdir / "train.jsonl.gz")
    run_train_predictor_command({
        "predictor": "voltage-cgcnn", "train": "train.jsonl.gz", "targets": ["average_voltage_V"],
        "split": {"fractions": [0.34, 0.33, 0.33], "seed": 0},
        "hyperparameters": {"atom_fea_len": 8, "h_fea_len": 8, "n_conv": 1, "batch_size": 2, "epochs": 2,
                            "progress": False}}, workdir)
    return workdir / "model"


@pytest.mark.slow
def test_cathode_screen_end_to_end(battgen_code, voltage_model_dir):
    overrides = {"parameters": {
        "working_ion": "Li", "min_voltage_V": -100.0, "min_volumetric_capacity_Ah_per_L": 100.0,
        "max_md_candidates": 1, "min_conductivity_mS_per_cm": 0.0,
        "md": {"supercell_min_atoms": 16, "vacancy_fraction": 0.0, "nvt_time_ps": 0.2}}}
    builder = MgCathodeScreeningWorkChain.get_builder_from_protocol(
        battgen_code, StructureBatchData(li_structures()), ModelData.from_directory(voltage_model_dir),
        protocol="fast", overrides=overrides)
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    counts = results["funnel"]["counts"]
    stages = list(results["funnel"]["stages"])
    assert counts[stages[0]] == 4 and counts["e_above_hull_eV_per_atom <= 0.15"] == 1
    assert counts["voltage and capacity"] == 1 and counts["sent to MD"] == 1
    screened = results["screened_structures"].get_batch()
    assert all(v is not None for v in screened.column("predicted_average_voltage_V"))
    assert all(c >= 100.0 for c in screened.column("volumetric_capacity_Ah_per_L"))
    md_row = results["md_structures"].get_batch().meta[0]
    assert md_row["row_id"] == "li3n"
    assert md_row["conductivity_mS_per_cm"] > 0 and math.isfinite(md_row["diffusivity_cm2_per_s"])
    assert results["conductive_structures"].n_rows == 1
    assert results["figure"].filename.endswith(".png")


def test_cathode_screen_rejects_a_wrong_model(battgen_code, tmp_path):
    from battgen.models import write_manifest

    (tmp_path / "w.bin").write_bytes(b"0")
    write_manifest(tmp_path, "predictor", "magpie-cnn", {})
    builder = MgCathodeScreeningWorkChain.get_builder_from_protocol(
        battgen_code, StructureBatchData(li_structures()), ModelData.from_directory(tmp_path), protocol="fast")
    with pytest.raises(ValueError, match="voltage-cgcnn"):
        run_get_node(builder)
