"""MD benchmark: steps/s of ``battgen md``'s run loop vs a plain ASE loop, same CHGNet and cell, CPU.

Ours: :func:`battgen.md.run.run_md` (NVT Langevin; per-step stability monitor, frames every
``sample_every`` steps, a trajectory chunk + state file every ``chunk_steps`` steps, tqdm off).
Baseline: ``ase.md.langevin.Langevin(...).run(n)`` with the same calculator, timestep, friction and start.
Both for a 64- and a 512-atom Li2O cell (rock-salt-like antifluorite, near-cubic supercells). Peak memory is
the process's maximum resident set size (``resource.getrusage``), read after each size.

Usage: ``python benchmarks/md.py [--quick] [--steps N]``; the last line is
``key=value`` pairs: ``steps_per_s_ours_64``, ``steps_per_s_ase_64``, ``ratio_64`` (ours/ASE) ... and
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps (a smoke run of the benchmark)")
    parser.add_argument("--steps", type=int, default=None, help="MD steps per measurement")
    args = parser.parse_args()
    steps = args.steps or (20 if args.quick else 200)
    calculator, info = load_chgnet()
    print(f"model: {info.model_name} (chgnet {info.package_version}), steps per measurement: {steps}")
    fields: dict[str, str] = {}
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
    fields["peak_rss_MB"] = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0:.0f}"
    print(" ".join(f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
