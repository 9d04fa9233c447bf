"""Restartable MLIP molecular dynamics for diffusion: NPT equilibration, then NVT production (seed 002).

Seed 002: ">= 512-atom supercell with 1/5 of Mg removed, 10 ps NPT at 1200 K to equilibrate the lattice
vectors, then 50 ps NVT at 1200 K" — those are the defaults below.

Integrators (ASE):

* NPT equilibration: ``Inhomogeneous_NPTBerendsen`` (default, ``npt_barostat: inhomogeneous_berendsen``;
  each lattice vector relaxes independently, which is what "equilibrate lattice vectors" needs) or
  isotropic ``NPTBerendsen`` (``berendsen``). Berendsen, not Nosé–Hoover–Parrinello–Rahman (ASE ``NPT``):
  equilibration only needs the right average cell quickly and robustly from a possibly strained start;
  Berendsen is first-order (no cell oscillations, no upper-triangular cell requirement) and memoryless,
  so a restart is exact. It does not sample the NPT ensemble correctly, which does not matter here: the
  production cell is the *average* cell of the second half of the NPT phase (``nvt_cell: npt_average``).
* NVT production: Nosé–Hoover chain (``nose_hoover_chain``, default; deterministic and time-reversible, so
  the dynamics that D comes from is not perturbed by random forces, and there is a conserved energy to
  monitor), ``bussi`` (stochastic velocity rescaling; also conserves an effective energy) or ``langevin``
  (friction ``1 / taut``; perturbs the dynamics, use only for quick screening).

Config keys of ``battgen md`` (units in the names; defaults in :data:`MD_DEFAULTS`):

``input`` structure file in the workdir (anything ``Structure.from_file`` reads: json, cif, POSCAR);
``mlip`` / ``model_path`` / ``device`` (see ``battgen.mlip.calculators``); ``temperature_K`` (1200);
``timestep_fs`` (None: 2 fs, or 1 fs when the cell contains H); ``npt_time_ps`` (10, 0 skips NPT);
``nvt_time_ps`` (50); ``pressure_GPa`` (0); ``bulk_modulus_GPa`` (50, sets the Berendsen compressibility);
``taut_fs`` (100, thermostat time constant, all thermostats); ``taup_fs`` (1000, barostat time constant);
``nhc_chain_length`` (3); ``npt_barostat``; ``nvt_thermostat``; ``nvt_cell`` (``npt_average`` or
``last``); ``sample_every`` (10 steps between stored frames); ``chunk_steps`` (1000 steps per trajectory
chunk, a multiple of ``sample_every``); ``seed`` (0; velocities and stochastic thermostats);
``max_temperature_factor`` (3: a run whose instantaneous temperature exceeds 3 x ``temperature_K`` is
``unstable``); ``max_wall_time_s`` (None: stop cleanly after the chunk that crosses it, status
``incomplete``); ``restart`` (True: continue from ``md_state.json`` if present);
``supercell_min_atoms`` (None: use the input cell; e.g. 512 builds a near-cubic supercell first);
``working_ion`` (e.g. ``Mg``; needed for vacancies and ``msd.npz``); ``vacancy_fraction`` (e.g. 0.2) or
``vacancy_count``; ``vacancy_seed`` (0); ``downsampled_max_frames`` (500); ``progress`` (True).

Files written in the workdir:

* ``traj/chunk_NNNN.npz``: frames of one chunk (``positions_A`` (unwrapped, as integrated), ``cell_A``,
  ``numbers``, ``phase``, ``phase_time_fs``, ``step``, ``temperature_K``, ``potential_energy_eV``,
  ``kinetic_energy_eV``, ``conserved_energy_eV``, ``pressure_GPa``), written atomically;
* ``md_state.json`` (+ ``md_state.npz`` with positions, momenta, cell at full precision): step counter,
  phase, phase time, thermostat variables, RNG state, chunk counter, status — written after every chunk,
  so a walltime kill loses at most one chunk; a restart removes chunks newer than the state;
* ``md_summary.json``: steps done, mean T (K), mean P (GPa), energy drift (eV/atom/ps), status ...;
* ``trajectory.extxyz``: down-sampled frames (for the AiiDA layer's TrajectoryData);
* ``msd.npz`` (when ``working_ion`` is set and production finished): time in ps and MSD in Å² per species.

Statuses: ``completed``; ``unstable`` (temperature above ``max_temperature_factor`` x target, non-finite
energy/forces, or the calculator failed; the last complete chunk is kept so the AiiDA restart can retry
with a smaller timestep: a restart may change ``timestep_fs`` — ``sample_every`` is rescaled so frames stay
evenly spaced in time); ``incomplete`` (walltime).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.md.bussi import Bussi
from ase.md.langevin import Langevin
from ase.md.nose_hoover_chain import NoseHooverChainNVT
from ase.md.nptberendsen import Inhomogeneous_NPTBerendsen, NPTBerendsen
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from battgen.checkpoint import atomic_write_json, atomic_write_npz
from battgen.contracts.md import (  # noqa: F401 - re-exported: the md file names and statuses
    DEFAULT_TIMESTEP_FS, DOWNSAMPLED_FILENAME, HYDROGEN_TIMESTEP_FS, INITIAL_STRUCTURE_FILENAME, MAX_TEMPERATURE_K,
    MD_STATUSES, MSD_FILENAME, NPT_BAROSTATS, NVT_CELLS, NVT_THERMOSTATS, SETUP_FILENAME, STATE_ARRAYS_FILENAME,
    STATE_FILENAME, SUMMARY_FILENAME, TRAJ_DIRNAME, MdSettings,
)
from battgen.md.trajectory import chunk_path, list_chunks, load_frames, read_state, write_state  # noqa: F401
from battgen.progress import Bar

# The settings (with units and ranges), file names and statuses are declared once, in battgen.contracts.md.
MD_DEFAULTS: dict[str, Any] = MdSettings.defaults()
UNITS = {
    "temperature_K": "K", "timestep_fs": "fs", "time_ps": "ps", "pressure_GPa": "GPa",
    "energy_drift_eV_per_atom_per_ps": "eV/atom/ps", "volume_A3": "Å^3", "steps_per_s": "1/s",
}


def default_timestep_fs(symbols: list[str] | set[str]) -> float:
    """2 fs, or 1 fs when hydrogen (fast O–H/N–H vibrations) is present."""
    return HYDROGEN_TIMESTEP_FS if "H" in set(symbols) else DEFAULT_TIMESTEP_FS


def validate_md_config(config: dict[str, Any]) -> dict[str, Any]:
    """Config with defaults filled in (:class:`~battgen.contracts.md.MdSettings`); raises ``InvalidInputError``
    naming the bad key and its allowed range."""
    return MdSettings.settings_dict(config)


# --- dynamics ----------------------------------------------------------------------------------------
def _make_dynamics(atoms: Atoms, phase: str, settings: dict[str, Any], timestep_fs: float,
                   thermostat_state: dict[str, Any], rng: np.random.Generator):
    dt = timestep_fs * units.fs
    temperature = settings["temperature_K"]
    if phase == "npt":
        barostat = Inhomogeneous_NPTBerendsen if settings["npt_barostat"] == "inhomogeneous_berendsen" else NPTBerendsen
        return barostat(
            atoms, dt, temperature_K=temperature, pressure_au=settings["pressure_GPa"] * units.GPa,
            taut=settings["taut_fs"] * units.fs, taup=settings["taup_fs"] * units.fs,
            compressibility_au=1.0 / (settings["bulk_modulus_GPa"] * units.GPa),
        )
    thermostat = settings["nvt_thermostat"]
    if thermostat == "nose_hoover_chain":
        dyn = NoseHooverChainNVT(atoms, dt, temperature_K=temperature, tdamp=settings["taut_fs"] * units.fs,
                                 tchain=settings["nhc_chain_length"])
        if "nhc_eta" in thermostat_state:
            dyn._thermostat._eta = np.array(thermostat_state["nhc_eta"], dtype=float)
            dyn._thermostat._p_eta = np.array(thermostat_state["nhc_p_eta"], dtype=float)
        return dyn
    if thermostat == "bussi":
        dyn = Bussi(atoms, dt, temperature_K=temperature, taut=settings["taut_fs"] * units.fs, rng=rng)
        dyn.transferred_energy = float(thermostat_state.get("transferred_energy_eV", 0.0))
        return dyn
    return Langevin(atoms, dt, temperature_K=temperature, friction=1.0 / (settings["taut_fs"] * units.fs), rng=rng)


def _thermostat_state(dyn) -> dict[str, Any]:
    if isinstance(dyn, NoseHooverChainNVT):
        return {"nhc_eta": dyn._thermostat._eta.tolist(), "nhc_p_eta": dyn._thermostat._p_eta.tolist()}
    if isinstance(dyn, Bussi):
        return {"transferred_energy_eV": float(dyn.transferred_energy)}
    return {}


def _conserved_energy(dyn, atoms: Atoms) -> float:
    if isinstance(dyn, NoseHooverChainNVT):
        # As NoseHooverChainNVT.get_conserved_energy, but with the plain potential energy: MLIP calculators
        # (CHGNet) do not implement the force-consistent free_energy it asks for.
        return float(atoms.get_potential_energy() + atoms.get_kinetic_energy()
                     + dyn._thermostat.get_thermostat_energy())
    if isinstance(dyn, Bussi):
        return float(atoms.get_total_energy() - dyn.transferred_energy)
    return float("nan")  # Langevin and Berendsen have no conserved quantity


def _pressure_GPa(atoms: Atoms) -> float:
    try:
        stress = atoms.get_stress(include_ideal_gas=True, voigt=True)
    except Exception:  # noqa: BLE001 - calculators without stress: pressure is simply not reported
        return float("nan")
    return float(-np.mean(stress[:3]) / units.GPa)


def _instability(atoms: Atoms, settings: dict[str, Any]) -> str | None:
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    if not math.isfinite(energy) or not np.all(np.isfinite(forces)):
        return "non-finite energy or forces"
    temperature = atoms.get_temperature()
    limit = settings["max_temperature_factor"] * settings["temperature_K"]
    if not math.isfinite(temperature) or temperature > limit:
        return f"temperature {temperature:.4g} K above {settings['max_temperature_factor']:g} x target ({limit:.4g} K)"
    return None


def _phase_plan(settings: dict[str, Any]) -> list[tuple[str, float]]:
    plan = []
    if settings["npt_time_ps"] > 0:
        plan.append(("npt", settings["npt_time_ps"] * 1000.0))
    if settings["nvt_time_ps"] > 0:
        plan.append(("nvt", settings["nvt_time_ps"] * 1000.0))
    return plan


def _average_npt_cell(workdir: Path) -> np.ndarray | None:
    frames = load_frames(workdir, phase="npt")
    if not len(frames.get("step", [])):
        return None
    cells = frames["cell_A"]
    return cells[len(cells) // 2:].mean(axis=0)


def _new_state(settings: dict[str, Any], timestep_fs: float) -> dict[str, Any]:
    return {
        "format_version": 1, "status": "running", "phase": _phase_plan(settings)[0][0], "phase_time_fs": 0.0,
        "step": 0, "next_chunk": 0, "timestep_fs": timestep_fs,
        "sample_interval_fs": settings["sample_every"] * timestep_fs, "thermostat": {}, "rng": None,
        "unstable_reason": None, "unstable_at_step": None,
    }


def run_md(
    atoms: Atoms,
    calculator: Any,
    settings: dict[str, Any],
    workdir: Path,
    *,
    stop_after_chunks: int | None = None,
) -> dict[str, Any]:
    """Run (or continue) the NPT -> NVT protocol of ``settings`` (a validated config) in ``workdir``.

    ``atoms`` is the starting cell; it is ignored when a state file exists and ``settings['restart']``.
    ``stop_after_chunks`` ends the run cleanly after that many chunks in this call (status
    ``incomplete``), like a walltime stop. Returns the final state dict.
    """
    workdir = Path(workdir)
    (workdir / TRAJ_DIRNAME).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    previous = read_state(workdir) if settings["restart"] else None
    requested_timestep = settings["timestep_fs"] or default_timestep_fs(atoms.get_chemical_symbols())

    if previous is None:
        for stale in list_chunks(workdir):
            stale.unlink()
        atoms = atoms.copy()
        state = _new_state(settings, requested_timestep)
        rng = np.random.default_rng(settings["seed"])
        MaxwellBoltzmannDistribution(atoms, temperature_K=settings["temperature_K"], rng=rng)
        Stationary(atoms)
        state["rng"] = rng.bit_generator.state
        write_state(workdir, state, atoms)  # the restart point if the very first chunk fails
    else:
        state, atoms = previous
        # Chunks written after the last state (a kill between chunk and state) are not part of the run.
        for stale in list_chunks(workdir):
            if int(stale.stem.split("_")[1]) >= state["next_chunk"]:
                stale.unlink()
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        if state["status"] in ("unstable", "incomplete"):
            if state["status"] == "unstable":  # keep the history, clear the current failure
                state.setdefault("previous_instabilities", []).append(
                    {"reason": state["unstable_reason"], "at_step": state["unstable_at_step"],
                     "timestep_fs": state["timestep_fs"]})
                state.update(unstable_reason=None, unstable_at_step=None)
            state["status"] = "running"
        if settings["timestep_fs"] is not None and settings["timestep_fs"] != state["timestep_fs"]:
            state["timestep_fs"] = settings["timestep_fs"]
    timestep_fs = state["timestep_fs"]
    sample_ratio = state["sample_interval_fs"] / timestep_fs
    if abs(sample_ratio - round(sample_ratio)) > 1e-9:
        from battgen.errors import InvalidInputError

        raise InvalidInputError(
            f"timestep_fs {timestep_fs} does not divide the sampling interval {state['sample_interval_fs']} fs"
        )
    sample_every = int(round(sample_ratio))
    chunk_steps = max(sample_every, settings["chunk_steps"] // sample_every * sample_every)
    atoms.calc = calculator

    plan = dict(_phase_plan(settings))
    phases = list(plan)
    total_steps = state["step"] + sum(
        int(round((plan[p] - (state["phase_time_fs"] if p == state["phase"] else 0.0)) / timestep_fs))
        for p in phases[phases.index(state["phase"]):]
    ) if state["status"] == "running" else state["step"]
    bar = Bar(total=total_steps, initial=state["step"], desc=f"md {settings['temperature_K']:g} K", unit="step",
              disable=not settings["progress"])
    chunks_this_call = 0
    try:
        while state["status"] == "running":
            phase = state["phase"]
            remaining = int(round((plan[phase] - state["phase_time_fs"]) / timestep_fs))
            if remaining <= 0:
                nxt = phases.index(phase) + 1
                if nxt == len(phases):
                    state["status"] = "completed"
                    write_state(workdir, state, atoms)
                    break
                state.update(phase=phases[nxt], phase_time_fs=0.0, thermostat={})
                if phase == "npt" and settings["nvt_cell"] == "npt_average":
                    mean_cell = _average_npt_cell(workdir)
                    if mean_cell is not None:
                        atoms.set_cell(mean_cell, scale_atoms=True)
                write_state(workdir, state, atoms)
                continue

            n_steps = min(chunk_steps, remaining)
            dyn = _make_dynamics(atoms, phase, settings, timestep_fs, state["thermostat"], rng)
            rows: dict[str, list[Any]] = {key: [] for key in (
                "positions_A", "cell_A", "phase_time_fs", "step", "temperature_K", "potential_energy_eV",
                "kinetic_energy_eV", "conserved_energy_eV", "pressure_GPa")}

            def record(steps_in_chunk: int) -> None:
                rows["positions_A"].append(atoms.get_positions())
                rows["cell_A"].append(np.array(atoms.get_cell()))
                rows["phase_time_fs"].append(state["phase_time_fs"] + steps_in_chunk * timestep_fs)
                rows["step"].append(state["step"] + steps_in_chunk)
                rows["temperature_K"].append(atoms.get_temperature())
                rows["potential_energy_eV"].append(atoms.get_potential_energy())
                rows["kinetic_energy_eV"].append(atoms.get_kinetic_energy())
                rows["conserved_energy_eV"].append(_conserved_energy(dyn, atoms))
                rows["pressure_GPa"].append(_pressure_GPa(atoms))

            problem = None
            done = 0
            try:
                for _ in dyn.irun(n_steps):
                    done = dyn.nsteps
                    problem = _instability(atoms, settings)
                    if problem:
                        break
                    if done == 0:
                        if state["phase_time_fs"] == 0.0:  # the time origin of the phase
                            record(0)
                        continue
                    bar.update(1, current=f"{phase} phase")
                    if done % sample_every == 0 or done == n_steps:
                        record(done)
            except (ValueError, RuntimeError, FloatingPointError, IndexError) as exc:
                problem = f"calculator failed: {type(exc).__name__}: {exc}"
            if problem:
                # Keep the last complete chunk as the restart point; this chunk's frames are discarded.
                # Only the JSON changes: md_state.npz still holds the atoms of the last complete chunk.
                state.update(status="unstable", unstable_reason=problem, unstable_at_step=state["step"] + done)
                atomic_write_json(workdir / STATE_FILENAME, state)
                break

            atomic_write_npz(
                chunk_path(workdir, state["next_chunk"]), numbers=atoms.numbers,
                phase=np.array([phase] * len(rows["step"])),
                **{key: np.asarray(values) for key, values in rows.items()},
            )
            state["step"] += n_steps
            state["phase_time_fs"] += n_steps * timestep_fs
            state["next_chunk"] += 1
            state["thermostat"] = _thermostat_state(dyn)
            state["rng"] = rng.bit_generator.state
            write_state(workdir, state, atoms)
            chunks_this_call += 1
            out_of_time = settings["max_wall_time_s"] and time.perf_counter() - started > settings["max_wall_time_s"]
            if out_of_time or (stop_after_chunks is not None and chunks_this_call >= stop_after_chunks):
                state["status"] = "incomplete"
                write_state(workdir, state, atoms)
    finally:
        bar.close()
    state = json.loads((workdir / STATE_FILENAME).read_text(encoding="utf-8"))
    state["wall_time_s_this_call"] = round(time.perf_counter() - started, 3)
    return state


# --- outputs -------------------------------------------------------------------------------------------
def energy_drift_eV_per_atom_per_ps(time_fs: np.ndarray, energy_eV: np.ndarray, n_atoms: int) -> float:
    """Slope of a straight-line fit of energy vs time, per atom, in eV/atom/ps (NaN with < 3 finite points)."""
    time_fs, energy_eV = np.asarray(time_fs, float), np.asarray(energy_eV, float)
    finite = np.isfinite(energy_eV)
    if finite.sum() < 3:
        return float("nan")
    slope_eV_per_fs = np.polyfit(time_fs[finite], energy_eV[finite], 1)[0]
    return float(slope_eV_per_fs * 1000.0 / n_atoms)


def summarize_md(workdir: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Numbers of ``md_summary.json`` from the complete chunks and the state."""
    summary: dict[str, Any] = {
        "status": state["status"], "steps_done": int(state["step"]), "timestep_fs": state["timestep_fs"],
        "sample_interval_fs": state["sample_interval_fs"], "phase": state["phase"],
        "unstable_reason": state.get("unstable_reason"), "unstable_at_step": state.get("unstable_at_step"),
    }
    for phase in ("npt", "nvt"):
        frames = load_frames(workdir, phase=phase)
        if not len(frames.get("step", [])):
            continue
        n_atoms = frames["positions_A"].shape[1]
        conserved = frames["conserved_energy_eV"]
        use_conserved = np.isfinite(conserved).all()
        energy = conserved if use_conserved else frames["potential_energy_eV"] + frames["kinetic_energy_eV"]
        volumes = np.abs(np.linalg.det(frames["cell_A"]))
        summary[phase] = {
            "n_frames": int(len(frames["step"])),
            "time_ps": float(frames["phase_time_fs"][-1] / 1000.0),
            # The first frame of a phase is its starting point, not yet thermalised by this phase.
            "mean_temperature_K": float(np.mean(frames["temperature_K"][1:] if len(frames["step"]) > 1
                                                else frames["temperature_K"])),
            "mean_pressure_GPa": (float(np.nanmean(frames["pressure_GPa"]))
                                  if np.isfinite(frames["pressure_GPa"]).any() else None),
            "mean_volume_A3": float(volumes.mean()),
            "energy_drift_eV_per_atom_per_ps": energy_drift_eV_per_atom_per_ps(
                frames["phase_time_fs"], energy, n_atoms),
            "energy_drift_quantity": "conserved_energy" if use_conserved else "total_energy",
        }
    return summary


def write_downsampled_trajectory(workdir: Path, max_frames: int) -> int:
    """Every k-th stored frame (k so that at most ``max_frames`` remain) to ``trajectory.extxyz``."""
    from ase.io import write

    frames = load_frames(workdir)
    n = len(frames.get("step", []))
    if n == 0:
        return 0
    stride = max(1, math.ceil(n / max_frames))
    images = []
    for i in range(0, n, stride):
        image = Atoms(numbers=frames["numbers"], positions=frames["positions_A"][i], cell=frames["cell_A"][i], pbc=True)
        image.info.update(step=int(frames["step"][i]), phase=str(frames["phase"][i]),
                          phase_time_fs=float(frames["phase_time_fs"][i]),
                          temperature_K=float(frames["temperature_K"][i]),
                          potential_energy_eV=float(frames["potential_energy_eV"][i]))
        images.append(image)
    tmp = Path(workdir) / (DOWNSAMPLED_FILENAME + ".tmp")
    write(tmp, images, format="extxyz")
    os.replace(tmp, Path(workdir) / DOWNSAMPLED_FILENAME)
    return len(images)


def _prepare_structure(settings: dict[str, Any], workdir: Path) -> tuple[Any, dict[str, Any]]:
    from pymatgen.core import Structure

    from battgen.errors import InvalidInputError
    from battgen.md.setup import make_supercell, remove_working_ions

    path = workdir / settings["input"]
    if not path.exists():
        raise InvalidInputError(f"input structure {settings['input']} not found in {workdir}")
    from battgen.batch import BatchFormatError
    from battgen.sources.files import read_input_batch, structure_problem

    try:
        structure = Structure.from_file(path)
    except Exception as exc:  # noqa: BLE001 - not a single-structure file: a batch or any source, one row
        try:
            batch = read_input_batch(path)
        except BatchFormatError:
            raise InvalidInputError(f"cannot read {settings['input']}: {exc}") from exc
        if len(batch) != 1:
            raise InvalidInputError(f"{settings['input']} holds {len(batch)} structures; MD runs one: give a file "
                                    "with a single structure") from None
        structure = batch.structures[0]

    problem = structure_problem(structure)
    if problem:  # MD of stacked atoms only "finds" a temperature runaway; say what is wrong instead
        raise InvalidInputError(f"{settings['input']}: {problem[0].replace('_', ' ')}: {problem[1]}")
    setup: dict[str, Any] = {"n_atoms_input": len(structure)}
    ion = settings["working_ion"]
    if ion and ion not in {el.symbol for el in structure.composition.elements}:
        raise InvalidInputError(f"working_ion {ion} is not in {structure.composition.reduced_formula}")
    if settings["supercell_min_atoms"]:
        structure, record = make_supercell(structure, settings["supercell_min_atoms"])
        setup["supercell"] = record.as_dict()
    if settings["vacancy_fraction"] is not None or settings["vacancy_count"] is not None:
        try:
            structure, vacancies = remove_working_ions(
                structure, ion, fraction=settings["vacancy_fraction"], count=settings["vacancy_count"],
                seed=settings["vacancy_seed"],
            )
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc
        setup["vacancies"] = vacancies.as_dict()
    setup["n_atoms"] = len(structure)
    return structure, setup


def run_md_command(config: dict[str, Any], workdir: Path, calculator: Any = None) -> dict[str, Any]:
    """``battgen md``: set up the cell, run/continue NPT -> NVT, write the summary, trajectory and MSD.

    ``calculator`` replaces the MLIP (a cheap ASE calculator in tests); the model info is then omitted.
    """
    from pymatgen.io.ase import AseAtomsAdaptor

    from battgen.errors import InvalidInputError
    from battgen.md.analysis import write_msd_file
    from battgen.mlip.relax import load_relax_mlip

    settings = validate_md_config(config)
    workdir = Path(workdir)
    resuming = settings["restart"] and (workdir / STATE_FILENAME).exists()
    if resuming and (workdir / INITIAL_STRUCTURE_FILENAME).exists():
        from pymatgen.core import Structure

        structure = Structure.from_file(workdir / INITIAL_STRUCTURE_FILENAME)
        setup = json.loads((workdir / SETUP_FILENAME).read_text(encoding="utf-8"))
    else:
        structure, setup = _prepare_structure(settings, workdir)

    model = None
    if calculator is None:
        try:
            calculator, info = load_relax_mlip(settings["mlip"], settings["model_path"], settings["device"])
        except KeyError as exc:
            raise InvalidInputError(exc.args[0]) from exc
        missing = info.unsupported_elements({el.symbol for el in structure.composition.elements})
        if missing:
            raise InvalidInputError(f"element(s) {missing} not supported by {info.model_name}")
        model = info.as_dict()
        model.pop("supported_elements")
    if not resuming or not (workdir / INITIAL_STRUCTURE_FILENAME).exists():
        # Written only once the input is known to be usable: invalid input leaves just the summary.
        structure.to(filename=str(workdir / INITIAL_STRUCTURE_FILENAME))
        atomic_write_json(workdir / SETUP_FILENAME, setup)

    atoms = AseAtomsAdaptor.get_atoms(structure)
    started = time.perf_counter()
    state = run_md(atoms, calculator, settings, workdir)
    wall_time = time.perf_counter() - started
    summary = summarize_md(workdir, state)
    summary["wall_time_s_this_call"] = round(wall_time, 3)
    summary["setup"] = setup
    summary["model"] = model
    summary["temperature_K"] = settings["temperature_K"]
    summary["working_ion"] = settings["working_ion"]
    n_frames = write_downsampled_trajectory(workdir, settings["downsampled_max_frames"])
    files = {"state": STATE_FILENAME, "state_arrays": STATE_ARRAYS_FILENAME, "trajectory_chunks": TRAJ_DIRNAME,
             "summary": SUMMARY_FILENAME, "initial_structure": INITIAL_STRUCTURE_FILENAME}
    if n_frames:
        files["trajectory"] = DOWNSAMPLED_FILENAME
    if state["status"] == "completed" and settings["working_ion"]:
        nvt = load_frames(workdir, phase="nvt" if "nvt" in dict(_phase_plan(settings)) else "npt")
        write_msd_file(workdir / MSD_FILENAME, nvt)
        files["msd"] = MSD_FILENAME
    atomic_write_json(workdir / SUMMARY_FILENAME, summary)
    return {"files": files, "md_summary": summary, "downsampled_frames": n_frames, "units": UNITS}
