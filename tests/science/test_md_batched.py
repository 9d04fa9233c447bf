"""Batched NVT Langevin MD (torch-sim) against the sequential ASE loop of battgen md, on a tiny LJ argon cell.

Same ensemble (Langevin, same friction), same Maxwell-Boltzmann start for the same seed, temperatures reached
within tolerance, trajectory chunks read by the existing analysis, an exact restart, and unstable systems
leaving the batch while the others go on.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch_sim")

import torch  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.lj import LennardJones  # noqa: E402
from torch_sim.models.lennard_jones import LennardJonesModel  # noqa: E402

from battgen.errors import InvalidInputError  # noqa: E402
from battgen.md.analysis import write_msd_file  # noqa: E402
from battgen.md.batched import check_batchable, run_md_batched, system_dir  # noqa: E402
from battgen.md.run import (  # noqa: E402
    load_frames,
    run_md,
    summarize_md,
    validate_md_config,
    write_downsampled_trajectory,
)

SIGMA, EPSILON, CUTOFF = 3.4, 0.0104, 8.5  # argon


def argon():
    return bulk("Ar", "fcc", a=5.26, cubic=True) * (2, 2, 2)  # 32 atoms


def lj_model():
    return LennardJonesModel(sigma=SIGMA, epsilon=EPSILON, cutoff=CUTOFF, device=torch.device("cpu"),
                             dtype=torch.float64)


def settings(**overrides):
    values = dict(temperature_K=40.0, timestep_fs=5.0, npt_time_ps=0.0, nvt_time_ps=1.0, nvt_thermostat="langevin",
                  taut_fs=50.0, sample_every=5, chunk_steps=50, progress=False, restart=True, seed=3)
    return validate_md_config({**values, **overrides})


def test_batched_matches_sequential_ensemble(tmp_path):
    temperatures = [40.0, 80.0]
    states = run_md_batched([argon(), argon()], temperatures, lj_model(), settings(), tmp_path / "batched")
    assert [s["status"] for s in states] == ["completed", "completed"]
    assert [s["step"] for s in states] == [200, 200]
    sequential = {}
    for t in temperatures:
        calc = LennardJones(sigma=SIGMA, epsilon=EPSILON, rc=CUTOFF)
        state = run_md(argon(), calc, settings(temperature_K=t), tmp_path / f"ase_{t:g}")
        assert state["status"] == "completed"
        sequential[t] = load_frames(tmp_path / f"ase_{t:g}")
    for i, t in enumerate(temperatures):
        frames = load_frames(system_dir(tmp_path / "batched", i))
        reference = sequential[t]
        assert frames["positions_A"].shape == reference["positions_A"].shape == (41, 32, 3)
        assert np.array_equal(frames["step"], reference["step"])
        # the same Maxwell-Boltzmann start for the same seed, and the same structure
        assert frames["temperature_K"][0] == pytest.approx(reference["temperature_K"][0], rel=1e-9)
        assert np.allclose(frames["positions_A"][0], reference["positions_A"][0])
        # the same potential: energies of the starting frame agree (up to the LJ energy shift convention)
        # both thermostats hold the target: mean T of the second half within 30 % (32 atoms fluctuate)
        for data in (frames, reference):
            assert np.mean(data["temperature_K"][20:]) == pytest.approx(t, rel=0.3)
    # the hotter system really is hotter: the per-system kT reached the integrator
    hot = load_frames(system_dir(tmp_path / "batched", 1))["temperature_K"][20:].mean()
    cold = load_frames(system_dir(tmp_path / "batched", 0))["temperature_K"][20:].mean()
    assert hot > 1.4 * cold


def test_trajectory_read_by_existing_analysis(tmp_path):
    states = run_md_batched([argon()], [60.0], lj_model(), settings(nvt_time_ps=0.5), tmp_path)
    directory = system_dir(tmp_path, 0)
    summary = summarize_md(directory, states[0])
    assert summary["status"] == "completed" and summary["nvt"]["n_frames"] == 21
    assert summary["nvt"]["time_ps"] == pytest.approx(0.5)
    assert write_downsampled_trajectory(directory, 10) <= 11
    write_msd_file(directory / "msd.npz", load_frames(directory, phase="nvt"))
    with np.load(directory / "msd.npz") as msd:
        assert msd["msd_A2_Ar"][0] == pytest.approx(0, abs=1e-12) and np.all(msd["msd_A2_Ar"][1:] > 0)
    frames = load_frames(directory)
    # unwrapped positions: displacements between frames are small (no jumps across the cell)
    assert np.abs(np.diff(frames["positions_A"], axis=0)).max() < 1.0


def test_restart_continues_exactly(tmp_path):
    args = ([argon(), argon()], [40.0, 70.0])
    full = run_md_batched(*args, lj_model(), settings(nvt_time_ps=0.5), tmp_path / "full")
    first = run_md_batched(*args, lj_model(), settings(nvt_time_ps=0.5), tmp_path / "split", stop_after_chunks=1)
    assert [s["status"] for s in first] == ["incomplete", "incomplete"] and first[0]["step"] == 50
    second = run_md_batched(*args, lj_model(), settings(nvt_time_ps=0.5), tmp_path / "split")
    assert [s["status"] for s in second] == [s["status"] for s in full] == ["completed", "completed"]
    for i in range(2):
        a, b = load_frames(system_dir(tmp_path / "full", i)), load_frames(system_dir(tmp_path / "split", i))
        assert np.array_equal(a["step"], b["step"])
        assert np.allclose(a["positions_A"], b["positions_A"], atol=1e-10)  # same noise stream after restart
    with pytest.raises(InvalidInputError, match="holds a batch"):
        run_md_batched(*args[:1], [41.0, 70.0], lj_model(), settings(nvt_time_ps=0.5), tmp_path / "split")


def test_unstable_system_leaves_the_batch(tmp_path):
    squeezed = argon()
    positions = squeezed.get_positions()
    positions[1] = positions[0] + [1.2, 0.0, 0.0]  # 1.2 Å apart: LJ repulsion blows this one up
    squeezed.set_positions(positions)
    states = run_md_batched([argon(), squeezed], [40.0, 40.0], lj_model(), settings(nvt_time_ps=0.5), tmp_path)
    assert states[0]["status"] == "completed" and states[0]["step"] == 100
    assert states[1]["status"] == "unstable" and "temperature" in states[1]["unstable_reason"]
    assert states[1]["step"] == 0  # the failed chunk is not kept


def test_ensembles_that_are_not_batched_are_refused():
    with pytest.raises(InvalidInputError, match="langevin"):
        check_batchable(settings(nvt_thermostat="nose_hoover_chain"))
    with pytest.raises(InvalidInputError, match="NVT only"):
        check_batchable(settings(npt_time_ps=1.0))


@pytest.mark.slow
def test_sevennet_through_torch_sim(tmp_path):
    pytest.importorskip("sevenn")
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    from battgen.md.batched import sevennet_model

    model, info = sevennet_model("7net-0", device="cpu")
    assert info["engine"] == "torch-sim" and info["model_name"] == "7net-0"
    li2o = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.63), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    atoms = AseAtomsAdaptor.get_atoms(li2o)  # 12 atoms
    states = run_md_batched([atoms, atoms], [300.0, 600.0], model, settings(timestep_fs=1.0, nvt_time_ps=0.01,
                                                                            sample_every=5, chunk_steps=10), tmp_path)
    assert [s["status"] for s in states] == ["completed", "completed"]
    frames = load_frames(system_dir(tmp_path, 0))
    assert np.all(np.isfinite(frames["potential_energy_eV"]))
    assert frames["potential_energy_eV"][0] / 12 == pytest.approx(-4.8, abs=0.4)  # Li2O, eV/atom
