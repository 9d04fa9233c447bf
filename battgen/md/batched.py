"""Batched NVT Langevin MD through torch-sim: many candidates and/or temperatures in one model call per step.

Seed 002 runs one MD per candidate per temperature. Here all those runs share each model evaluation
(torch-sim's batched state: one neighbour list and one forward pass for every system of the batch), while
every system keeps the chunked, restartable trajectory format of :mod:`battgen.md.run` in its own
directory, so :func:`battgen.md.run.load_frames`, :func:`~battgen.md.run.summarize_md`, the MSD and
diffusion analysis read it unchanged.

Ensemble: NVT Langevin (torch-sim's BAOAB ``nvt_langevin`` with a per-system ``kT`` and friction
``1 / taut_fs``), the ``nvt_thermostat: langevin`` of ``battgen md``. Not batched here, with the reason:

* Nosé–Hoover chain: torch-sim 0.3.0's ``nvt_nose_hoover`` couples *one* chain to the summed degrees of
  freedom of all systems of a batch, so systems at different temperatures (or sizes) would be thermostatted
  together — wrong for a batch of independent runs. Use :func:`battgen.md.run.run_md` (ASE) for it.
* NPT: the seed-002 protocol equilibrates with inhomogeneous Berendsen (not in torch-sim); torch-sim's NPT
  Langevin / Nosé–Hoover are different barostats, so they would change the protocol's definition. NPT stays
  on the ASE path; batched production (NVT) can start from its cells.

Files, per system, in ``workdir/system_NNN/`` (as :func:`battgen.md.run.run_md` writes them):
``traj/chunk_NNNN.npz`` (positions unwrapped, as integrated — torch-sim wraps positions into the cell, the
displacements are unwrapped by the minimum image every step), ``md_state.json`` + ``md_state.npz``
(``"engine": "torch-sim"``); and one ``batch_state.json`` + ``batch_state.npz`` in ``workdir`` with the
systems' temperatures, the chunk counter and the torch random state (the Langevin noise of all systems
comes from one generator, so a restart continues the same noise stream). A system whose temperature
exceeds ``max_temperature_factor`` x target, or whose energy/forces are not finite, is ``unstable``: its
current chunk is discarded (its state stays at its last complete chunk) and it leaves the batch; the others
go on. Pressure is not recorded (NaN), nor a conserved energy (Langevin has none).

Every torch step runs on the ``device`` of the model (``cpu``, ``cuda``, ``cuda:1`` ...).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units

from battgen.checkpoint import atomic_write_json as _atomic_write_json
from battgen.checkpoint import atomic_write_npz as _atomic_write_bytes_npz
from battgen.contracts.md import STATE_FILENAME, TRAJ_DIRNAME
from battgen.md.run import _new_state, default_timestep_fs
from battgen.md.trajectory import chunk_path, list_chunks, read_state
from battgen.md.trajectory import write_state as _write_state

BATCH_STATE_FILENAME = "batch_state.json"
BATCH_ARRAYS_FILENAME = "batch_state.npz"
SYSTEM_DIRNAME = "system_{:03d}"
FRAME_KEYS = ("positions_A", "cell_A", "phase_time_fs", "step", "temperature_K", "potential_energy_eV",
              "kinetic_energy_eV", "conserved_energy_eV", "pressure_GPa")


def system_dir(workdir: Path, index: int) -> Path:
    return Path(workdir) / SYSTEM_DIRNAME.format(index)


def check_batchable(settings: dict[str, Any]) -> None:
    """Raise ``InvalidInputError`` when the validated md settings ask for an ensemble this path lacks."""
    from battgen.errors import InvalidInputError

    if settings["npt_time_ps"] > 0:
        raise InvalidInputError("batched MD runs NVT only: set npt_time_ps 0 (equilibrate with battgen md first)")
    if settings["nvt_thermostat"] != "langevin":
        raise InvalidInputError(
            f"batched MD supports nvt_thermostat 'langevin' only, got {settings['nvt_thermostat']!r}: torch-sim "
            "0.3.0's Nose-Hoover chain thermostats all systems of a batch with one chain")


def sevennet_model(name: str = "7net-0", device: str = "cpu", dtype: Any = None):
    """SevenNet (weights shipped in the sevenn wheel) through torch-sim's own wrapper; (model, info dict)."""
    import importlib
    import sys

    import sevenn.calculator
    import torch
    from sevenn.calculator import SevenNetCalculator

    if not hasattr(sevenn.calculator, "torch_script_type"):
        # torch-sim 0.3.0 imports this name (the class of deployed TorchScript models, for an isinstance test)
        # from older sevenn releases; sevenn 0.13 no longer defines it.
        sevenn.calculator.torch_script_type = torch.jit.ScriptModule
        stale = sys.modules.get("torch_sim.models.sevennet")
        if stale is not None:  # imported before the shim: it holds the ImportError placeholder
            importlib.reload(stale)
    from torch_sim.models.sevennet import SevenNetModel

    calculator = SevenNetCalculator(model=name, device=device)
    model = SevenNetModel(model=calculator.model, device=device, dtype=dtype or torch.float32)
    from importlib.metadata import version

    return model, {"model_name": name, "package": "sevenn", "package_version": version("sevenn"),
                   "engine": "torch-sim", "engine_version": version("torch-sim-atomistic")}


def _rng_devices(device) -> list:
    return [device] if getattr(device, "type", str(device)).startswith("cuda") else []


class _Batch:
    """The running systems as one torch-sim MDState plus per-system bookkeeping."""

    def __init__(self, model, members: list[int], atoms: list[Atoms]) -> None:
        import torch
        import torch_sim as ts
        from torch_sim.integrators import MDState

        self.members = members
        self.n_atoms = [len(a) for a in atoms]
        wrapped = []
        for a in atoms:  # the model sees positions in the cell; the unwrapped ones are kept below
            w = a.copy()
            w.wrap()
            wrapped.append(w)
        sim = ts.io.atoms_to_state(wrapped, device=model.device, dtype=model.dtype)
        momenta = torch.tensor(np.concatenate([a.get_momenta() for a in atoms]), device=model.device,
                               dtype=model.dtype)
        out = model(sim)
        self.state = MDState(positions=sim.positions, momenta=momenta, energy=out["energy"], forces=out["forces"],
                             masses=sim.masses, cell=sim.cell, pbc=sim.pbc, system_idx=sim.system_idx,
                             atomic_numbers=sim.atomic_numbers)
        # unwrapped positions (as integrated), in float64 whatever the model's dtype
        self.unwrapped = torch.tensor(np.concatenate([a.get_positions() for a in atoms]), device=model.device,
                                      dtype=torch.float64)
        self._last = self.state.positions.detach().to(torch.float64).clone()
        row_cell = self.state.cell.mT.to(torch.float64)  # [n_systems, 3, 3], rows = lattice vectors
        self._row_cell = row_cell[self.state.system_idx]
        self._inv_row_cell = torch.linalg.inv(row_cell)[self.state.system_idx]
        self.atomic_numbers = [a.numbers.copy() for a in atoms]

    def unwrap(self) -> None:
        import torch

        now = self.state.positions.detach().to(torch.float64)
        delta = now - self._last
        frac = torch.einsum("ni,nij->nj", delta, self._inv_row_cell)
        frac = frac - torch.round(frac)
        self.unwrapped += torch.einsum("ni,nij->nj", frac, self._row_cell)
        self._last = now.clone()

    def kinetic_eV(self) -> np.ndarray:
        from torch_sim.quantities import calc_kinetic_energy

        s = self.state
        return calc_kinetic_energy(masses=s.masses, momenta=s.momenta, system_idx=s.system_idx).detach().cpu().numpy()

    def temperature_K(self, kinetic: np.ndarray) -> np.ndarray:
        # as ase.Atoms.get_temperature: 3N degrees of freedom
        return 2.0 * kinetic / (3.0 * np.asarray(self.n_atoms) * units.kB)

    def per_system(self, tensor) -> list[np.ndarray]:
        values = tensor.detach().cpu().numpy().copy()  # a copy: CPU tensors share memory with numpy
        return np.split(values, np.cumsum(self.n_atoms)[:-1])

    def finite(self) -> np.ndarray:
        import torch

        s = self.state
        energy_ok = torch.isfinite(s.energy).cpu().numpy()
        force_ok = torch.isfinite(s.forces).all(dim=-1).cpu().numpy()
        return energy_ok & np.array([chunk.all() for chunk in np.split(force_ok, np.cumsum(self.n_atoms)[:-1])])

    def atoms_of(self, position: int) -> Atoms:
        """ASE atoms (unwrapped positions, momenta, cell) of the batch's ``position``-th system."""
        cell = self.state.cell.mT[position].detach().cpu().numpy().astype(float)
        atoms = Atoms(numbers=self.atomic_numbers[position], positions=self.per_system(self.unwrapped)[position],
                      cell=cell, pbc=True)
        atoms.set_momenta(self.per_system(self.state.momenta)[position].astype(float))
        return atoms


def run_md_batched(
    atoms_list: list[Atoms],
    temperatures_K: list[float],
    model: Any,
    settings: dict[str, Any],
    workdir: Path,
    *,
    stop_after_chunks: int | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) NVT Langevin MD of every ``atoms_list[i]`` at ``temperatures_K[i]`` in one batch.

    ``model`` is a torch-sim ``ModelInterface`` (e.g. :func:`sevennet_model`); ``settings`` a validated
    ``battgen md`` config (:func:`battgen.md.run.validate_md_config`; its ``temperature_K`` is ignored,
    ``seed`` gives every system the same Maxwell-Boltzmann start as ``run_md`` with that seed, and the
    Langevin noise). The same structure may appear several times (one per temperature). Returns each
    system's final state dict (as :func:`battgen.md.run.run_md`).
    """
    import torch

    from battgen.errors import InvalidInputError

    check_batchable(settings)
    if len(atoms_list) != len(temperatures_K) or not atoms_list:
        raise InvalidInputError("give one temperature per structure (and at least one structure)")
    for t in temperatures_K:
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= 10_000:
            raise InvalidInputError(f"temperatures must be in (0, 10000] K, got {t!r}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    batch_file = workdir / BATCH_STATE_FILENAME
    resume = settings["restart"] and batch_file.exists()
    n = len(atoms_list)
    if resume:
        batch = json.loads(batch_file.read_text(encoding="utf-8"))
        if batch["temperatures_K"] != [float(t) for t in temperatures_K]:
            raise InvalidInputError(f"{workdir} holds a batch at {batch['temperatures_K']} K; start a new workdir")
        rng_state = torch.from_numpy(np.load(workdir / BATCH_ARRAYS_FILENAME)["torch_rng_state"])
    else:
        batch = {"format_version": 1, "engine": "torch-sim", "temperatures_K": [float(t) for t in temperatures_K],
                 "n_systems": n, "chunks_done": 0}
        rng_state = None

    states: list[dict[str, Any]] = []
    starts: list[Atoms] = []
    for i, atoms in enumerate(atoms_list):
        directory = system_dir(workdir, i)
        (directory / TRAJ_DIRNAME).mkdir(parents=True, exist_ok=True)
        previous = read_state(directory) if resume else None
        if previous is None:
            for stale in list_chunks(directory):
                stale.unlink()
            from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

            start = atoms.copy()
            start.calc = None
            timestep = settings["timestep_fs"] or default_timestep_fs(start.get_chemical_symbols())
            state = _new_state(settings, timestep)
            state["engine"] = "torch-sim"
            rng = np.random.default_rng(settings["seed"])  # the same start as run_md with this seed
            MaxwellBoltzmannDistribution(start, temperature_K=temperatures_K[i], rng=rng)
            Stationary(start)
            _write_state(directory, state, start)
        else:
            state, start = previous
            for stale in list_chunks(directory):
                if int(stale.stem.split("_")[1]) >= state["next_chunk"]:
                    stale.unlink()
            if state["status"] == "incomplete":
                state["status"] = "running"
        states.append(state)
        starts.append(start)
    timesteps = {s["timestep_fs"] for s in states}
    if len(timesteps) != 1:
        raise InvalidInputError(f"systems of one batch need one timestep, got {sorted(timesteps)} fs")
    timestep_fs = timesteps.pop()
    sample_every = settings["sample_every"]
    chunk_steps = settings["chunk_steps"]
    total_fs = settings["nvt_time_ps"] * 1000.0

    running = [i for i in range(n) if states[i]["status"] == "running"]
    device = model.device
    dt = torch.tensor(timestep_fs * units.fs, device=device, dtype=model.dtype)
    gamma = torch.tensor(1.0 / (settings["taut_fs"] * units.fs), device=device, dtype=model.dtype)
    from torch_sim.integrators import nvt_langevin

    _, update = nvt_langevin(model, dt=dt, kT=torch.tensor(1.0, device=device, dtype=model.dtype), gamma=gamma)
    chunks_this_call = 0
    with torch.random.fork_rng(devices=_rng_devices(device)):
        if rng_state is None:
            torch.manual_seed(settings["seed"])
        else:
            torch.random.set_rng_state(rng_state)
        while running:
            remaining = int(round((total_fs - states[running[0]]["phase_time_fs"]) / timestep_fs))
            if remaining <= 0:
                for i in running:
                    states[i]["status"] = "completed"
                    _atomic_write_json(system_dir(workdir, i) / STATE_FILENAME, states[i])
                break
            group = _Batch(model, running, [starts[i] for i in running])
            kT = torch.tensor([temperatures_K[i] * units.kB for i in running], device=device, dtype=model.dtype)
            limit = np.array([settings["max_temperature_factor"] * temperatures_K[i] for i in running])
            n_steps = min(chunk_steps, remaining)
            rows = [{key: [] for key in FRAME_KEYS} for _ in running]
            failed: dict[int, str] = {}

            def record(done: int) -> None:
                kinetic = group.kinetic_eV()
                temperature = group.temperature_K(kinetic)
                energy = group.state.energy.detach().cpu().numpy()
                positions = group.per_system(group.unwrapped)
                cells = group.state.cell.mT.detach().cpu().numpy().astype(float)
                for k, i in enumerate(running):
                    r = rows[k]
                    r["positions_A"].append(positions[k])
                    r["cell_A"].append(cells[k])
                    r["phase_time_fs"].append(states[i]["phase_time_fs"] + done * timestep_fs)
                    r["step"].append(states[i]["step"] + done)
                    r["temperature_K"].append(float(temperature[k]))
                    r["potential_energy_eV"].append(float(energy[k]))
                    r["kinetic_energy_eV"].append(float(kinetic[k]))
                    r["conserved_energy_eV"].append(float("nan"))
                    r["pressure_GPa"].append(float("nan"))

            if states[running[0]]["phase_time_fs"] == 0.0:
                record(0)  # the time origin of the phase, as run_md
            for done in range(1, n_steps + 1):
                group.state = update(group.state, dt=dt, kT=kT, gamma=gamma)
                group.unwrap()
                finite = group.finite()
                temperature = group.temperature_K(group.kinetic_eV())
                for k, i in enumerate(running):
                    if i in failed:
                        continue
                    if not finite[k]:
                        failed[i] = "non-finite energy or forces"
                    elif not math.isfinite(temperature[k]) or temperature[k] > limit[k]:
                        failed[i] = (f"temperature {temperature[k]:.4g} K above {settings['max_temperature_factor']:g}"
                                     f" x target ({limit[k]:.4g} K)")
                    if i in failed:
                        states[i].update(status="unstable", unstable_reason=failed[i],
                                         unstable_at_step=states[i]["step"] + done)
                if len(failed) == len(running):
                    break
                if done % sample_every == 0 or done == n_steps:
                    record(done)
            for k, i in enumerate(running):
                directory = system_dir(workdir, i)
                if i in failed:  # keep the last complete chunk as the restart point (only the JSON changes)
                    _atomic_write_json(directory / STATE_FILENAME, states[i])
                    continue
                state = states[i]
                _atomic_write_bytes_npz(
                    chunk_path(directory, state["next_chunk"]), numbers=group.atomic_numbers[k],
                    phase=np.array(["nvt"] * len(rows[k]["step"])),
                    **{key: np.asarray(values) for key, values in rows[k].items()},
                )
                state["step"] += n_steps
                state["phase_time_fs"] += n_steps * timestep_fs
                state["next_chunk"] += 1
                starts[i] = group.atoms_of(k)
                _write_state(directory, state, starts[i])
            running = [i for i in running if i not in failed]
            batch["chunks_done"] += 1
            _atomic_write_bytes_npz(workdir / BATCH_ARRAYS_FILENAME, torch_rng_state=torch.random.get_rng_state().numpy())
            _atomic_write_json(batch_file, batch)
            chunks_this_call += 1
            out_of_time = settings["max_wall_time_s"] and time.perf_counter() - started > settings["max_wall_time_s"]
            if running and (out_of_time or (stop_after_chunks is not None and chunks_this_call >= stop_after_chunks)):
                for i in running:
                    states[i]["status"] = "incomplete"
                    _atomic_write_json(system_dir(workdir, i) / STATE_FILENAME, states[i])
                break
    return [json.loads((system_dir(workdir, i) / STATE_FILENAME).read_text(encoding="utf-8")) for i in range(n)]
