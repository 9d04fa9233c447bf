"""battgen.md: cell set-up, the chunked/restartable MD run, and the diffusion analysis (seed 002)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from pymatgen.core import Lattice, Structure

from battgen.md.analysis import (
    analyze_frames,
    arrhenius_fit,
    nernst_einstein_conductivity_mS_per_cm,
    run_diffusion_command,
    windowed_msd_A2,
)
from battgen.md.run import load_frames, read_state, run_md, run_md_command, validate_md_config
from battgen.md.setup import cubicity, make_supercell, naive_diagonal_multiplier, remove_working_ions

K_B_EV = 8.617333262e-5


@pytest.fixture
def copper_cell():
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))  # 32 atoms, EMT is instant


def emt_settings(**overrides):
    config = dict(temperature_K=600.0, timestep_fs=2.0, npt_time_ps=0.04, nvt_time_ps=0.08, sample_every=5,
                  chunk_steps=10, progress=False)
    config.update(overrides)
    return validate_md_config(config)


# --- set-up ------------------------------------------------------------------------------------------
def test_vacancies_exact_count_and_reproducible_by_seed():
    mg_cell = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    mg_cell.make_supercell([3, 3, 3])  # 108 Mg
    reduced, record = remove_working_ions(mg_cell, "Mg", fraction=0.2, seed=7)
    assert record.n_removed == round(0.2 * 108) == 22
    assert reduced.composition["Mg"] == 108 - 22 and reduced.composition["O"] == 108
    assert len(set(record.removed_site_indices)) == 22
    assert all(mg_cell[i].specie.symbol == "Mg" for i in record.removed_site_indices)
    assert record.formal_charge_left_e == -44.0  # Z = 2 per vacancy, not compensated
    again = remove_working_ions(mg_cell, "Mg", fraction=0.2, seed=7)[1]
    other = remove_working_ions(mg_cell, "Mg", fraction=0.2, seed=8)[1]
    assert again.removed_site_indices == record.removed_site_indices
    assert other.removed_site_indices != record.removed_site_indices
    assert remove_working_ions(mg_cell, "Mg", count=5, seed=0)[1].n_removed == 5


def test_supercell_reaches_min_atoms_and_is_more_cubic_than_diagonal():
    # Primitive rock salt (rhombohedral, 60 degrees): n x n x n stays a rhombohedron.
    primitive = Structure(Lattice.from_parameters(3.63, 3.63, 3.63, 60, 60, 60), ["Li", "Cl"],
                          [[0, 0, 0], [0.5, 0.5, 0.5]])
    supercell, record = make_supercell(primitive, min_atoms=512)
    assert len(supercell) >= 512 and record.n_atoms == len(supercell)
    n = naive_diagonal_multiplier(2, 512)
    assert n == 7  # 2 * 7**3 = 686
    naive = cubicity(np.diag([n] * 3) @ primitive.lattice.matrix)
    assert naive == pytest.approx(math.sqrt(2.0 / 3.0) / (1 / math.sqrt(2)) ** (1 / 3), rel=1e-6)  # 0.9165 not 1
    assert record.cubicity > 0.99 > naive
    assert len(supercell) == 512  # the 4x4x4 conventional cube (8 atoms each) is exactly 512 atoms
    assert supercell.composition.reduced_formula == "LiCl"


# --- MD run ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("thermostat", ["nose_hoover_chain", "langevin"])
def test_restart_continues_the_same_trajectory(tmp_path, copper_cell, thermostat):
    settings = emt_settings(nvt_thermostat=thermostat)
    full = run_md(copper_cell, EMT(), settings, tmp_path / "full")
    assert full["status"] == "completed" and full["step"] == 60
    killed = run_md(copper_cell, EMT(), settings, tmp_path / "killed", stop_after_chunks=3)  # mid-NVT
    assert killed["status"] == "incomplete" and killed["step"] == 30
    # A chunk written after the state was saved (killed in between) is discarded on restart.
    stray = tmp_path / "killed" / "traj" / "chunk_0003.npz"
    np.savez(stray, step=np.array([999]))
    resumed = run_md(copper_cell, EMT(), settings, tmp_path / "killed")
    assert resumed["status"] == "completed" and resumed["step"] == 60
    a, b = load_frames(tmp_path / "full"), load_frames(tmp_path / "killed")
    # NPT frames at steps 0..20, NVT frames at 20..60, every 5 steps.
    assert np.array_equal(a["step"], b["step"]) and len(a["step"]) == 5 + 9
    # Identical up to force round-off (a fresh EMT neighbour list sums in a different order): 1e-10 Å.
    np.testing.assert_allclose(b["positions_A"], a["positions_A"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(b["conserved_energy_eV"], a["conserved_energy_eV"], rtol=0, atol=1e-9, equal_nan=True)
    # ... while a different seed gives a different trajectory, so the comparison can fail.
    other = run_md(copper_cell, EMT(), emt_settings(nvt_thermostat=thermostat, seed=1), tmp_path / "other")
    assert other["status"] == "completed"
    assert np.abs(load_frames(tmp_path / "other")["positions_A"] - a["positions_A"]).max() > 1e-3


def test_absurd_timestep_is_unstable_and_a_smaller_one_recovers(tmp_path, copper_cell):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        state = run_md(copper_cell, EMT(), emt_settings(timestep_fs=40.0, npt_time_ps=0.0, nvt_time_ps=1.0), tmp_path)
    assert state["status"] == "unstable"
    assert "temperature" in state["unstable_reason"] or "non-finite" in state["unstable_reason"]
    assert state["step"] == 0  # the restart point is the last complete chunk (here: the start)
    retry = run_md(copper_cell, EMT(), emt_settings(timestep_fs=2.0, npt_time_ps=0.0, nvt_time_ps=1.0), tmp_path)
    assert retry["status"] == "completed" and retry["timestep_fs"] == 2.0
    assert retry["previous_instabilities"][0]["timestep_fs"] == 40.0
    frames = load_frames(tmp_path, phase="nvt")
    assert np.allclose(np.diff(frames["phase_time_fs"]), 200.0)  # one frame per 5 x 40 fs = 100 steps of 2 fs


def test_md_command_invalid_config_exits_2(tmp_path, monkeypatch):
    import battgen.cli

    monkeypatch.setitem(battgen.cli.COMMANDS, "md", "battgen.md.run:run_md_command")
    code, summary = battgen.cli.run_command("md", {"temperature_K": -5}, tmp_path)
    assert code == 2 and "temperature_K" in summary["error"]
    code, summary = battgen.cli.run_command("md", {"chunk_steps": 15, "sample_every": 10}, tmp_path)
    assert code == 2 and "multiple" in summary["error"]
    code, summary = battgen.cli.run_command("md", {"input": "missing.cif"}, tmp_path)
    assert code == 2 and "not found" in summary["error"]


def test_md_command_writes_outputs_with_emt(tmp_path):
    cu3au = Structure(Lattice.cubic(3.75), ["Au", "Cu", "Cu", "Cu"],
                      [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cu3au.to(filename=str(tmp_path / "structure.json"))
    config = dict(temperature_K=800.0, timestep_fs=2.0, npt_time_ps=0.02, nvt_time_ps=0.06, sample_every=5,
                  chunk_steps=10, supercell_min_atoms=100, working_ion="Cu", vacancy_count=3, progress=False)
    outputs = run_md_command(config, tmp_path, calculator=EMT())
    summary = json.loads((tmp_path / "md_summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == 40
    assert summary["setup"]["supercell"]["n_atoms"] == 108  # 27 cubic cells: smallest cube >= 100 atoms
    assert summary["setup"]["n_atoms"] == 105
    assert 300 < summary["nvt"]["mean_temperature_K"] < 1600
    assert abs(summary["nvt"]["energy_drift_eV_per_atom_per_ps"]) < 0.05
    msd = np.load(tmp_path / "msd.npz")
    assert msd["time_ps"][0] == 0 and msd["time_ps"][-1] == pytest.approx(0.06)
    assert msd["msd_A2_Cu"][0] == pytest.approx(0, abs=1e-12) and msd["msd_A2_Cu"][-1] > 0
    from ase.io import read

    assert len(read(tmp_path / "trajectory.extxyz", index=":")) == outputs["downsampled_frames"] == 3 + 7
    assert read_state(tmp_path)[0]["status"] == "completed"


# --- analysis ----------------------------------------------------------------------------------------
def test_windowed_msd_matches_direct_average():
    rng = np.random.default_rng(0)
    disp = np.cumsum(rng.normal(size=(5, 40, 3)), axis=1)
    direct = [np.mean([np.sum((disp[:, t + lag] - disp[:, t]) ** 2, axis=1).mean() for t in range(40 - lag)])
              for lag in range(40)]
    np.testing.assert_allclose(windowed_msd_A2(disp), direct, rtol=1e-10, atol=1e-12)


def test_random_walk_diffusivity_and_hops():
    rng = np.random.default_rng(1)
    n_frames, sample_fs, step_A = 600, 20.0, 0.3
    cell = np.eye(3) * 12.0
    li = rng.uniform(0, 12, (24, 3)) + np.cumsum(rng.normal(0, step_A, (n_frames, 24, 3)), axis=0)
    host = rng.uniform(0, 12, (24, 3)) + rng.normal(0, 0.05, (n_frames, 24, 3))
    frames = {"positions_A": np.concatenate([li, host], axis=1) % 12.0, "cell_A": np.repeat(cell[None], n_frames, 0),
              "numbers": np.array([3] * 24 + [16] * 24)}
    result = analyze_frames(frames, "Li", 600.0, sample_fs, uncertainty="block")
    expected = step_A**2 / (2 * sample_fs) * 0.1  # per-dimension variance / 2dt, Å²/fs -> cm²/s
    assert result["diffusivity_cm2_per_s"] == pytest.approx(expected, rel=0.15)
    assert result["diffusive"] and result["n_hops"] > 100 and result["flags"] == []
    assert result["diffusivity_err_cm2_per_s"] < 0.3 * expected
    frozen = {**frames, "positions_A": np.concatenate([li[:1].repeat(n_frames, 0), host], axis=1)}
    frozen["positions_A"] = frozen["positions_A"] + rng.normal(0, 0.05, frozen["positions_A"].shape)
    still = analyze_frames(frozen, "Li", 600.0, sample_fs, uncertainty="none")
    assert not still["diffusive"] and {"too_few_hops", "msd_plateau"} <= set(still["flags"])


def test_arrhenius_fit_recovers_synthetic_barrier_and_room_temperature_conductivity():
    ea, d0 = 0.36, 1.0e-3  # seed 002's MLMD barrier
    temps = np.array([800.0, 1000.0, 1200.0, 1500.0])
    diffs = d0 * np.exp(-ea / (K_B_EV * temps))
    noisy = diffs * np.exp(np.array([0.05, -0.04, 0.03, -0.05]))
    fit = arrhenius_fit(temps, noisy, n_ions=40, volume_A3=1000.0, charge=2, extrapolate_to_K=300.0)
    assert fit["activation_energy_eV"] == pytest.approx(ea, abs=0.02)
    assert 0 < fit["activation_energy_err_eV"] < 0.03
    exact = arrhenius_fit(temps, diffs, n_ions=40, volume_A3=1000.0, charge=2)
    assert exact["activation_energy_eV"] == pytest.approx(ea, rel=1e-9)
    sigma_300 = nernst_einstein_conductivity_mS_per_cm(d0 * math.exp(-ea / (K_B_EV * 300)), 40, 1000.0, 2, 300.0)
    assert exact["extrapolated_conductivity_mS_per_cm"] == pytest.approx(sigma_300, rel=1e-6)
    with_errors = arrhenius_fit(temps, noisy, 0.05 * noisy, n_ions=40, volume_A3=1000.0, charge=2)
    assert with_errors["error_source"] == "diffusivity_errors"
    assert with_errors["extrapolated_conductivity_err_mS_per_cm"] > 0


def test_diffusion_command_arrhenius_from_results(tmp_path):
    temps = [900.0, 1200.0, 1500.0]
    results = [{"temperature_K": t, "diffusivity_cm2_per_s": 1e-3 * math.exp(-0.3 / (K_B_EV * t)), "n_ions": 10,
                "volume_A3": 500.0, "charge": 1} for t in temps]
    outputs = run_diffusion_command({"results": results}, tmp_path)
    assert outputs["arrhenius"]["activation_energy_eV"] == pytest.approx(0.3, rel=1e-6)
    assert (tmp_path / "arrhenius.png").stat().st_size > 1000
    from battgen.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        run_diffusion_command({"trajectories": ["nowhere"]}, tmp_path)


@pytest.mark.shared_data
def test_lgps_reference_conductivity(shared_data):
    from pymatgen.analysis.diffusion.analyzer import DiffusionAnalyzer

    data = json.loads((shared_data / "diffusion_aimd" / "DiffusionAnalyzer_LGPS_600K.json").read_text())
    analyzer = DiffusionAnalyzer.from_dict(data)
    assert analyzer.conductivity == pytest.approx(74.165372613735684, rel=1e-6)
    assert analyzer.diffusivity == pytest.approx(1.1613e-6, rel=1e-3)
    structure = analyzer.structure
    ours = nernst_einstein_conductivity_mS_per_cm(
        analyzer.diffusivity, int(structure.composition["Li"]), structure.volume, 1, analyzer.temperature)
    assert ours == pytest.approx(74.165, rel=1e-4)


@pytest.mark.slow
def test_short_chgnet_md_of_li3n_gives_positive_finite_diffusivity(tmp_path):
    """Li3N (fast Li conductor), 16-atom cell with one Li vacancy, 200 fs NVT at 1000 K with CHGNet."""
    li3n = Structure.from_spacegroup("P6/mmm", Lattice.hexagonal(3.648, 3.875), ["N", "Li", "Li"],
                                     [[0, 0, 0], [0, 0, 0.5], [1 / 3, 2 / 3, 0]])
    li3n.make_supercell([2, 2, 1])
    li3n.to(filename=str(tmp_path / "structure.json"))
    config = dict(mlip="chgnet", temperature_K=1000.0, timestep_fs=2.0, npt_time_ps=0.0, nvt_time_ps=0.2,
                  working_ion="Li", vacancy_count=1, sample_every=2, chunk_steps=50, progress=False)
    outputs = run_md_command(config, tmp_path)
    summary = outputs["md_summary"]
    assert summary["status"] == "completed" and summary["steps_done"] == 100
    assert summary["model"]["name"] == "chgnet" and summary["model"]["package_version"] == "0.4.2"
    assert summary["setup"]["n_atoms"] == 15
    frames = load_frames(tmp_path, phase="nvt")
    result = analyze_frames(frames, "Li", 1000.0, summary["sample_interval_fs"], uncertainty="none")
    assert math.isfinite(result["diffusivity_cm2_per_s"]) and result["diffusivity_cm2_per_s"] > 0
    assert result["smoothing"] == "constant" and "short_run" in result["flags"]  # 0.2 ps < the 1 ps minimum lag


def test_md_input_may_be_a_one_row_batch_or_source_file(tmp_path):
    """A battgen batch (or any source file) with one structure is an MD input; with two it is refused."""
    from battgen.batch import StructureBatch
    from battgen.errors import InvalidInputError
    from battgen.md.run import _prepare_structure

    cu3au = Structure(Lattice.cubic(3.75), ["Au", "Cu", "Cu", "Cu"],
                      [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    StructureBatch([cu3au], [{"row_id": "cu3au"}]).write(tmp_path / "one.jsonl.gz")
    settings = {"input": "one.jsonl.gz", "working_ion": None, "supercell_min_atoms": None,
                "vacancy_fraction": None, "vacancy_count": None}
    structure, setup = _prepare_structure(settings, tmp_path)
    assert structure.composition.reduced_formula == "Cu3Au" and setup["n_atoms_input"] == 4
    StructureBatch([cu3au, cu3au.copy()], [{"row_id": "a"}, {"row_id": "b"}]).write(tmp_path / "two.jsonl.gz")
    with pytest.raises(InvalidInputError, match="holds 2 structures; MD runs one"):
        _prepare_structure({**settings, "input": "two.jsonl.gz"}, tmp_path)
