"""MD benchmark: steps/s of ``battgen md``'s run loop vs a plain ASE loop, same CHGNet and cell, CPU.

Ours: :func:`battgen.md.run.run_md` (NVT Langevin; per-step stability monitor, frames every
``sample_every`` steps, a trajectory chunk + state file every ``chunk_steps`` steps, tqdm off).
Baseline: ``ase.md.langevin.Langevin(...).run(n)`` with the same calculator, timestep, friction and start.
Both for a 64- and a 512-atom Li2O cell (rock-salt-like antifluorite, near-cubic supercells). Peak memory is
the process's maximum resident set size (``resource.getrusage``), read after each size.

Batched MD (:mod:`battgen.md.batched`, torch-sim NVT Langevin), with SevenNet-0 for all three timings (the
potential torch-sim wraps; CHGNet has no torch-sim wrapper): raw ASE ``Langevin`` with ``SevenNetCalculator``
(one system), torch-sim one system at a time ("single"), and ``--batch-size`` systems (the same cell at
that many temperatures, 600-1200 K: seed 002's case) in one batch. ``steps_per_s_batched_N`` is steps of
*each* system per second; ``batch_speedup_N`` = (batch size x batched steps/s) / single steps/s, the
throughput gain of batching; ``single_vs_ase_N`` = torch-sim single / raw ASE.

Usage: ``python benchmarks/md.py [--quick] [--steps N] [--batched-only] [--batch-size 4]
[--device cpu]``; the last line is ``key=value`` pairs: ``steps_per_s_ours_64``, ``steps_per_s_ase_64``,
``ratio_64`` (ours/ASE) ... (the CHGNet part, unless ``--batched-only``), ``steps_per_s_ase_7net_64``,
``steps_per_s_single_64``, ``steps_per_s_batched_64``, ``batch_speedup_64``, ``single_vs_ase_64`` ... and
``peak_rss_MB``.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from battgen.md.run import run_md, validate_md_config
from battgen.md.setup import make_supercell
from battgen.mlip.calculators import load_chgnet

TEMPERATURE_K = 1200.0
TIMESTEP_FS = 2.0
TAUT_FS = 100.0


def li2o_cell(min_atoms: int):
    li2o = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.63), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    supercell, _ = make_supercell(li2o, min_atoms)
    return AseAtomsAdaptor.get_atoms(supercell)


def time_ours(atoms, calculator, steps: int, workdir: Path) -> float:
    settings = validate_md_config(dict(
        temperature_K=TEMPERATURE_K, timestep_fs=TIMESTEP_FS, npt_time_ps=0.0, nvt_time_ps=steps * TIMESTEP_FS / 1000,
        nvt_thermostat="langevin", taut_fs=TAUT_FS, sample_every=5, chunk_steps=max(5, steps // 4 // 5 * 5),
        progress=False, restart=False,
    ))
    started = time.perf_counter()
    state = run_md(atoms, calculator, settings, workdir)
    elapsed = time.perf_counter() - started
    if state["status"] != "completed" or state["step"] != steps:
        raise RuntimeError(f"our run did not complete: {state['status']} at step {state['step']}")
    return steps / elapsed


def time_ase(atoms, calculator, steps: int) -> float:
    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(0)
    MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE_K, rng=rng)
    Stationary(atoms)
    dyn = Langevin(atoms, TIMESTEP_FS * units.fs, temperature_K=TEMPERATURE_K, friction=1.0 / (TAUT_FS * units.fs),
                   rng=rng)
    started = time.perf_counter()
    dyn.run(steps)
    return steps / (time.perf_counter() - started)


def time_batched(atoms, model, temperatures: list[float], steps: int, workdir: Path) -> float:
    """Steps per second of each system when ``len(temperatures)`` copies of ``atoms`` run in one batch."""
    from battgen.md.batched import run_md_batched

    settings = validate_md_config(dict(
        temperature_K=TEMPERATURE_K, timestep_fs=TIMESTEP_FS, npt_time_ps=0.0, nvt_time_ps=steps * TIMESTEP_FS / 1000,
        nvt_thermostat="langevin", taut_fs=TAUT_FS, sample_every=steps, chunk_steps=steps, progress=False,
        restart=False,
    ))
    started = time.perf_counter()
    states = run_md_batched([atoms] * len(temperatures), temperatures, model, settings, workdir)
    elapsed = time.perf_counter() - started
    if any(s["status"] != "completed" or s["step"] != steps for s in states):
        raise RuntimeError(f"batched run did not complete: {[(s['status'], s['step']) for s in states]}")
    return steps / elapsed


def batched_part(steps: int, batch_size: int, device: str, fields: dict[str, str]) -> None:
    from sevenn.calculator import SevenNetCalculator

    from battgen.md.batched import sevennet_model

    model, info = sevennet_model("7net-0", device=device)
    calculator = SevenNetCalculator(model="7net-0", device=device)
    temperatures = list(np.linspace(600.0, 1200.0, batch_size))
    print(f"batched part: {info['model_name']} (sevenn {info['package_version']}, torch-sim "
          f"{info['engine_version']}), device {device}, batch of {batch_size} temperatures")
    for target in (64, 512):
        atoms = li2o_cell(target)
        n = len(atoms)
        n_steps = steps if n < 200 else max(3, steps // 4)
        warm = atoms.copy()
        warm.calc = calculator
        warm.get_forces()
        with tempfile.TemporaryDirectory() as tmp:
            time_batched(atoms, model, [TEMPERATURE_K], 1, Path(tmp) / "warm")  # lazy torch / graph init
            single = time_batched(atoms, model, [TEMPERATURE_K], n_steps, Path(tmp) / "single")
            batched = time_batched(atoms, model, temperatures, n_steps, Path(tmp) / "batched")
        ase_rate = time_ase(atoms, calculator, n_steps)
        speedup = batch_size * batched / single
        print(f"{n} atoms, {n_steps} steps: raw ASE {ase_rate:.3f} steps/s, torch-sim single {single:.3f} steps/s, "
              f"batched x{batch_size} {batched:.3f} steps/s each (throughput x{speedup:.2f} vs single)")
        fields[f"steps_per_s_ase_7net_{target}"] = f"{ase_rate:.4g}"
        fields[f"steps_per_s_single_{target}"] = f"{single:.4g}"
        fields[f"steps_per_s_batched_{target}"] = f"{batched:.4g}"
        fields[f"batch_speedup_{target}"] = f"{speedup:.3f}"
        fields[f"single_vs_ase_{target}"] = f"{single / ase_rate:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps (a smoke run of the benchmark)")
    parser.add_argument("--steps", type=int, default=None, help="MD steps per measurement")
    parser.add_argument("--batched-only", action="store_true", help="skip the CHGNet run_md vs ASE part")
    parser.add_argument("--batch-size", type=int, default=4, help="systems (temperatures) in the batched run")
    parser.add_argument("--device", default="cpu", help="torch device of the batched part")
    args = parser.parse_args()
    steps = args.steps or (20 if args.quick else 200)
    fields: dict[str, str] = {}
    if not args.batched_only:
        chgnet_part(steps, fields)
    batched_part(steps, args.batch_size, args.device, fields)
    fields["peak_rss_MB"] = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0:.0f}"
    print(" ".join(f"{k}={v}" for k, v in fields.items()))


def chgnet_part(steps: int, fields: dict[str, str]) -> None:
    calculator, info = load_chgnet()
    print(f"model: {info.model_name} (chgnet {info.package_version}), steps per measurement: {steps}")
    for target in (64, 512):
        atoms = li2o_cell(target)
        n = len(atoms)
        # One warm-up force call (graph construction, lazy torch init) outside both timings.
        warm = atoms.copy()
        warm.calc = calculator
        warm.get_forces()
        n_steps = steps if n < 200 else max(5, steps // 4)
        with tempfile.TemporaryDirectory() as tmp:
            ours = time_ours(atoms, calculator, n_steps, Path(tmp))
        baseline = time_ase(atoms, calculator, n_steps)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        print(f"{n} atoms, {n_steps} steps: ours {ours:.3f} steps/s, ASE Langevin {baseline:.3f} steps/s, "
              f"ratio {ours / baseline:.3f}, peak RSS {peak:.0f} MB")
        fields[f"n_atoms_{target}"] = str(n)
        fields[f"steps_per_s_ours_{target}"] = f"{ours:.4g}"
        fields[f"steps_per_s_ase_{target}"] = f"{baseline:.4g}"
        fields[f"ratio_{target}"] = f"{ours / baseline:.3f}"


if __name__ == "__main__":
    main()
