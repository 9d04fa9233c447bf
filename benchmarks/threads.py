"""Threads benchmark: two CHGNet relaxation jobs at once (as the demo's candidates and references jobs run),
with the libraries' default threads (torch / OpenMP take every core, so two jobs oversubscribe) vs one
thread per job (``battgen relax --threads 1``, what a CalcJob with one cpu in its resources passes), and
the same two jobs one after the other with default threads (the serial alternative).

Each job is the real ``battgen relax`` console script in its own working directory on a tiny batch (LiCl,
a strained LiCl, Li2O, primitive cells), so model loading is in the timing, as in a demo job.

Usage: ``python benchmarks/threads.py [--repeats N] [--max-steps N]``; the last line is ``key=value``
pairs: ``cpus``, ``concurrent_default_s``, ``concurrent_1thread_s``, ``serial_default_s`` (best wall
time of the pair of jobs over the repeats, seconds), ``speedup_1thread_vs_default`` and
``speedup_1thread_vs_serial`` (ratios of those wall times), ``load_average_1min`` (at the start: other
work on the machine changes every number here).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from pymatgen.core import Lattice, Structure

from battgen.batch import StructureBatch
from battgen.cli import THREAD_ENVIRONMENT_VARIABLES


def tiny_batch() -> StructureBatch:
    licl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.2), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    licl = licl.get_primitive_structure()
    strained = licl.copy()
    strained.apply_strain(0.03)
    li2o = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.5), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    return StructureBatch.from_structures(
        [licl, strained, li2o.get_primitive_structure()], [{"row_id": "licl"}, {"row_id": "licl-strained"}, {"row_id": "li2o"}])


def battgen_executable() -> str:
    candidate = Path(sys.executable).parent / "battgen"
    return str(candidate) if candidate.exists() else shutil.which("battgen")


def prepare(workdir: Path, max_steps: int) -> None:
    workdir.mkdir(parents=True)
    tiny_batch().write(workdir / "structures.jsonl.gz")
    config = {"mlip": "chgnet", "fmax": 0.05, "max_steps": max_steps, "progress": False, "checkpoint": False}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def launch(workdir: Path, threads: int | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENVIRONMENT_VARIABLES}  # true library defaults
    command = [battgen_executable(), "relax", "--config", "config.yaml", "--workdir", "."]
    if threads is not None:
        command += ["--threads", str(threads)]
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ok(process: subprocess.Popen) -> None:
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"battgen relax failed ({process.returncode}): {stderr[-2000:]}")


def time_pair(root: Path, label: str, threads: int | None, concurrent: bool, max_steps: int) -> float:
    dirs = [root / f"{label}-{i}" for i in (0, 1)]
    for d in dirs:
        prepare(d, max_steps)
    started = time.perf_counter()
    if concurrent:
        processes = [launch(d, threads) for d in dirs]
        for p in processes:
            wait_ok(p)
    else:
        for d in dirs:
            wait_ok(launch(d, threads))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="pairs per setting; the best wall time is kept")
    parser.add_argument("--max-steps", type=int, default=60, help="FIRE steps per structure at most")
    args = parser.parse_args()

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0]
    settings = {"concurrent_default": (None, True), "concurrent_1thread": (1, True), "serial_default": (None, False)}
    best = {name: float("inf") for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, (threads, concurrent) in settings.items():  # interleaved: a load change hits every setting
                wall = time_pair(Path(tmp), f"{name}-{repeat}", threads, concurrent, args.max_steps)
                best[name] = min(best[name], wall)
                print(f"repeat {repeat}: {name}: {wall:.2f} s", flush=True)
    fields = {
        "cpus": str(cpus),
        **{f"{name}_s": f"{value:.2f}" for name, value in best.items()},
        "speedup_1thread_vs_default": f"{best['concurrent_default'] / best['concurrent_1thread']:.3f}",
        "speedup_1thread_vs_serial": f"{best['serial_default'] / best['concurrent_1thread']:.3f}",
        "load_average_1min": f"{load:.2f}",
    }
    print(" ".join(f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
