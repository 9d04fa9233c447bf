"""MLIP MD through AiiDA with the real ``battgen md`` / ``battgen diffusion`` CLI on localhost (CHGNet, tiny
cells, sub-picosecond runs): restart across budget stops from the copied chunks, D and σ from the analysis
step, the conductivity work chain with its Arrhenius fit, and the stability monitor."""

from __future__ import annotations

import json
import math

import pytest
from aiida import orm
from aiida.engine import run_get_node
from pymatgen.core import Lattice, Structure

from aiida_battgen.calculations import md as md_calc
from aiida_battgen.workchains.md import ConductivityWorkChain, MdBaseWorkChain

pytestmark = [pytest.mark.usefixtures("aiida_profile_clean"), pytest.mark.slow]


def lithium_nitride() -> orm.StructureData:
    """α-Li3N (P6/mmm, 4 atoms), a fast Li-ion conductor with an N framework (DiffusionAnalyzer needs one)."""
    structure = Structure(Lattice.hexagonal(3.65, 3.88), ["N", "Li", "Li", "Li"],
                          [[0, 0, 0], [0, 0, 0.5], [1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0]])
    return orm.StructureData(pymatgen=structure)


SHORT_MD = {"mlip": "chgnet", "npt_time_ps": 0.0, "nvt_time_ps": 0.24, "timestep_fs": 2.0, "sample_every": 5,
            "chunk_steps": 60, "supercell_min_atoms": 16, "working_ion": "Li", "downsampled_max_frames": 20}


def test_one_contract_for_both_layers():
    from battgen.contracts import md as contract
    from battgen.md import analysis, run

    assert md_calc.MdCalculation.OUTPUT_FILES == (run.SUMMARY_FILENAME, run.DOWNSAMPLED_FILENAME, run.MSD_FILENAME)
    assert md_calc.RESTART_FILES == contract.RESTART_FILES and run.TRAJ_DIRNAME in md_calc.RESTART_FILES
    assert run.MD_DEFAULTS == contract.MdSettings.defaults()
    assert analysis.DIFFUSION_DEFAULTS == contract.DiffusionSettings.defaults()
    # every one of the md keys is in the port's help, with its unit where it has one
    help_text = md_calc.MdCalculation.spec().inputs["parameters"].help
    assert all(key in help_text for key in contract.MdSettings.parameter_fields())
    assert "temperature_K (K; a positive number; default 1200.0)" in help_text


def test_md_continues_across_budget_stops_and_analyses(battgen_code):
    """A zero wall-time budget stops every call after one chunk (410): the work chain resubmits from the
    copied chunks until the 120-step run is complete, then D and σ come out of the analysis step."""
    builder = MdBaseWorkChain.get_builder()
    builder.md.code = battgen_code
    builder.md.structure = lithium_nitride()
    builder.md.parameters = orm.Dict({**SHORT_MD, "temperature_K": 900.0, "max_wall_time_s": 0.001})
    builder.md.analysis = orm.Dict({"uncertainty": "block", "n_blocks": 2, "min_hops": 1})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    calls = sorted(node.called, key=lambda n: n.ctime)
    # 120 steps in chunks of 60; the budget check follows each chunk, so the last chunk's call may still
    # report 410 and one more call finds nothing left to do
    assert len(calls) in (2, 3) and calls[-1].exit_status == 0 and {c.exit_status for c in calls[:-1]} == {410}
    assert all("parent_folder" in c.inputs for c in calls[1:])
    steps = [c.outputs.output_parameters["md"]["steps_done"] for c in calls]
    assert steps[:2] == [60, 120]
    parameters = results["output_parameters"]
    assert parameters["md"]["steps_done"] == 120
    assert parameters["diffusivity_cm2_per_s"] > 0 and math.isfinite(parameters["conductivity_mS_per_cm"])
    assert results["trajectory"].numsteps >= 2 and results["trajectory"].get_positions().shape[1] == 16
    assert "time_ps" in results["msd"].get_arraynames()


def test_conductivity_at_two_temperatures_gives_an_arrhenius_fit(battgen_code):
    builder = ConductivityWorkChain.get_builder()
    builder.md.md.code = battgen_code
    builder.md.md.structure = lithium_nitride()
    builder.md.md.analysis = orm.Dict({"uncertainty": "none", "min_hops": 1})
    builder.parameters = orm.Dict(SHORT_MD)
    builder.temperatures_K = orm.List([700.0, 1000.0])
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    assert set(results["runs"]) == {"T_700", "T_1000"}
    for run in results["runs"].values():
        assert run["diffusivity_cm2_per_s"] > 0
    arrhenius = results["arrhenius"].get_dict()
    assert math.isfinite(arrhenius["activation_energy_eV"])
    assert sorted(arrhenius["temperatures_K"]) == [700.0, 1000.0]
    assert results["arrhenius_figure"].filename.endswith(".png")


def test_temperatures_are_validated(battgen_code):
    builder = ConductivityWorkChain.get_builder()
    with pytest.raises(ValueError, match="temperatures_K"):
        builder.temperatures_K = orm.List([300.0, -5.0])


def test_stability_monitor_reads_the_remote_state(tmp_path, aiida_localhost):
    node = orm.CalcJobNode(computer=aiida_localhost)
    node.set_remote_workdir(str(tmp_path))
    with aiida_localhost.get_transport() as transport:
        assert md_calc.md_stability_monitor(node, transport) is None  # nothing written yet
        (tmp_path / "md_state.json").write_text(json.dumps({"status": "running", "step": 40}))
        assert md_calc.md_stability_monitor(node, transport) is None
        (tmp_path / "md_state.json").write_text(json.dumps(
            {"status": "unstable", "unstable_at_step": 60, "unstable_reason": "temperature 9000 K > 3 x 900 K"}))
        message = md_calc.md_stability_monitor(node, transport)
        assert "step 60" in message and "9000 K" in message
        (tmp_path / "md_state.json").write_text(json.dumps({"status": "running"}))
        assert md_calc.md_stability_monitor(node, transport, max_stall_s=-1) is not None  # stalled


def test_potential_training_through_the_calcjob(battgen_code, tmp_path):
    """A tiny NequIP on EMT Cu relaxation frames through PotentialTrainBaseWorkChain: a potential model node
    whose manifest names the frames it was trained on (the frames themselves stay out of the model)."""
    pytest.importorskip("nequip")
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.io import write
    from ase.optimize import BFGS

    from aiida_battgen.workchains.training import PotentialTrainBaseWorkChain
    from battgen.mlip.frames import make_frame

    frames = []
    for t in range(3):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.1, seed=t)
        atoms.calc = EMT()
        optimizer = BFGS(atoms, logfile=None)
        for step in range(6):
            frames.append(make_frame(atoms, atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(),
                                     trajectory_id=f"emt{t}", frame_index=step))
            optimizer.step()
    write(tmp_path / "relaxations.extxyz", frames)
    builder = PotentialTrainBaseWorkChain.get_builder()
    builder.train.code = battgen_code
    builder.train.frames = {"emt": orm.SinglefileData(tmp_path / "relaxations.extxyz")}
    builder.train.parameters = orm.Dict({
        "frame_selection": "seed002", "split": {"val_fraction": 0.25, "seed": 1}, "compile": False, "seed": 0,
        "hyperparameters": {"num_layers": 1, "num_features": [8, 4, 2], "radial_mlp_width": 8, "batch_size": 4,
                            "max_epochs": 2}})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    model = results["model"]
    assert (model.kind, model.architecture) == ("potential", "nequip")
    training = results["output_parameters"]["training"]
    assert training.get("n_frames_selected", training.get("n_frames")) == 12  # first three + last of 3 x 6 frames
    assert not any(name.endswith(".extxyz") for name in model.base.repository.list_object_names())
    assert math.isfinite(results["output_parameters"]["metrics"]["val_force_mae_meV_per_A"])
