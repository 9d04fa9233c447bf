"""What full provenance costs: the same work done directly and through the AiiDA layer.

    .venv/bin/python benchmarks/provenance_overhead.py

``relax_overhead()``: ten small strained/rattled cells relaxed with CHGNet (FIRE, FrechetCellFilter,
fmax 0.05 eV/Å, 500 steps, maxstep 0.2 Å)

  (a) by a plain ``chgnet`` ``StructOptimizer().relax`` loop in a fresh Python process (what a user would
      run by hand: interpreter start, imports, model load, loop);
  (b) by ``MlipRelaxCalculation`` on localhost, run in-process in a throwaway AiiDA profile (temporary
      SQLite storage): nodes stored, files written and copied, ``battgen relax`` launched as a fresh
      process, outputs retrieved and parsed.

Both start from a cold Python process for the relaxation, so the ratio isolates the provenance layer.
The in-process ``relax_batch`` vs ``StructOptimizer`` loop (model already loaded) is printed as well.
The last line is ``screen_overhead=<fraction> relax_overhead=<fraction>``.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from pymatgen.core import Lattice, Structure

FMAX = 0.05
MAX_STEPS = 500
MAXSTEP = 0.2
REPEATS = 2  # the minimum of alternating repeats damps noise from other jobs on the machine
# One torch thread on both paths: on a shared 2-core machine thread oversubscription dominates otherwise.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def benchmark_structures() -> list[Structure]:
    """Ten 1–3 atom cells, strained by 4 % and rattled so every relaxation takes real steps."""
    fcc = Lattice.from_parameters
    cells = [
        Structure(fcc(3.84, 3.84, 3.84, 60, 60, 60), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        Structure(fcc(4.00, 4.00, 4.00, 60, 60, 60), ["Ge", "Ge"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        Structure(fcc(3.63, 3.63, 3.63, 60, 60, 60), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(fcc(3.99, 3.99, 3.99, 60, 60, 60), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(fcc(2.85, 2.85, 2.85, 60, 60, 60), ["Li", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(fcc(2.98, 2.98, 2.98, 60, 60, 60), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(fcc(3.27, 3.27, 3.27, 60, 60, 60), ["O", "Li", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25], [0.75, 0.75, 0.75]]),
        Structure(fcc(2.86, 2.86, 2.86, 60, 60, 60), ["Al"], [[0, 0, 0]]),
        Structure(Lattice.cubic(3.44), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(fcc(3.87, 3.87, 3.87, 60, 60, 60), ["Ca", "F", "F"], [[0, 0, 0], [0.25, 0.25, 0.25], [0.75, 0.75, 0.75]]),
    ]
    for index, cell in enumerate(cells):
        cell.apply_strain(0.04)
        if len(cell) > 1:
            cell.perturb(0.05, min_distance=0.05, seed=index)
    return cells


def _direct_chgnet_loop_seconds(batch_path: Path) -> float:
    """Wall time of a fresh Python process relaxing the batch with a plain StructOptimizer loop."""
    script = textwrap.dedent(f"""
        from battgen.batch import StructureBatch
        from chgnet.model import StructOptimizer
        batch = StructureBatch.read({str(batch_path)!r})
        optimizer = StructOptimizer(use_device="cpu")
        for _, structure in batch:
            optimizer.relax(structure, fmax={FMAX}, steps={MAX_STEPS}, relax_cell=True,
                            ase_filter="FrechetCellFilter", verbose=False, maxstep={MAXSTEP})
    """)
    started = time.perf_counter()
    import os

    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, env={**os.environ, **THREAD_ENV})
    return time.perf_counter() - started


def _localhost_code():
    """A throwaway AiiDA profile (temporary SQLite storage) with the battgen CLI on localhost."""
    import aiida
    from aiida import orm
    from aiida.storage.sqlite_temp import SqliteTempBackend

    workdir = tempfile.mkdtemp(prefix="battgen-bench-")
    profile = SqliteTempBackend.create_profile("battgen-benchmark", options={"runner.poll.interval": 0})
    aiida.load_profile(profile, allow_switch=True)
    computer = orm.Computer(
        label="localhost-bench", hostname="localhost", transport_type="core.local", scheduler_type="core.direct",
        workdir=workdir,
    ).store()
    computer.configure()
    computer.set_minimum_job_poll_interval(0.0)
    code = orm.InstalledCode(computer=computer, filepath_executable=str(Path(sys.executable).parent / "battgen"),
                             label="battgen").store()
    return code


def _calcjob_seconds(batch, code) -> tuple[float, int]:
    """Wall time of MlipRelaxCalculation on localhost; returns (seconds, exit status)."""
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_battgen.calculations.relax import MlipRelaxCalculation
    from aiida_battgen.data.batch import StructureBatchData

    started = time.perf_counter()
    _, node = run_get_node(
        MlipRelaxCalculation, code=code, structures=StructureBatchData(batch),
        parameters=orm.Dict({"mlip": "chgnet", "fmax": FMAX, "max_steps": MAX_STEPS, "maxstep": MAXSTEP,
                             "cell_filter": "frechet", "optimizer": "FIRE"}),
        metadata={"options": {"environment_variables": THREAD_ENV}},
    )
    return time.perf_counter() - started, node.exit_status


def in_process_batch_vs_structoptimizer(batch) -> tuple[float, float]:
    """Seconds for relax_batch vs a StructOptimizer loop, model loaded beforehand (same process)."""
    from chgnet.model import StructOptimizer

    from battgen.mlip.calculators import load_chgnet
    from battgen.mlip.relax import relax_batch

    import torch

    torch.set_num_threads(1)
    calculator, info = load_chgnet()
    optimizer = StructOptimizer(model=calculator)
    relax_batch(batch.select([True] + [False] * (len(batch) - 1)), progress=False)  # warm-up
    started = time.perf_counter()
    for _, structure in batch:
        optimizer.relax(structure, fmax=FMAX, steps=MAX_STEPS, ase_filter="FrechetCellFilter", verbose=False, maxstep=MAXSTEP)
    direct = time.perf_counter() - started
    started = time.perf_counter()
    relax_batch(batch, fmax=FMAX, max_steps=MAX_STEPS, maxstep=MAXSTEP, progress=False)
    return direct, time.perf_counter() - started


def relax_overhead(verbose: bool = True) -> float:
    """(CalcJob wall time) / (direct StructOptimizer loop wall time) − 1, both from a cold process."""
    from battgen.batch import StructureBatch

    batch = StructureBatch.from_structures(benchmark_structures(), prefix="bench")
    code = _localhost_code()
    direct_times, aiida_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        batch_path = batch.write(Path(tmp) / "bench.jsonl.gz")
        for _ in range(REPEATS):
            direct_times.append(_direct_chgnet_loop_seconds(batch_path))
            seconds, exit_status = _calcjob_seconds(batch, code)
            aiida_times.append(seconds)
    direct, through_aiida = min(direct_times), min(aiida_times)
    if verbose:
        print(f"relax: {len(batch)} structures, direct StructOptimizer loop (fresh process) {direct:.2f} s, "
              f"MlipRelaxCalculation on localhost {through_aiida:.2f} s (exit status {exit_status}); "
              f"all runs: direct {[round(t, 1) for t in direct_times]}, aiida {[round(t, 1) for t in aiida_times]}")
    return through_aiida / direct - 1.0


def screen_overhead(verbose: bool = True) -> float | None:
    """Provenance cost of the screening funnel; filled in by the screening work."""
    return None


def _fmt(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.3f}"


def main() -> None:
    from battgen.batch import StructureBatch

    batch = StructureBatch.from_structures(benchmark_structures(), prefix="bench")
    direct, batched = in_process_batch_vs_structoptimizer(batch)
    print(f"in-process: StructOptimizer loop {direct:.2f} s, relax_batch {batched:.2f} s "
          f"(ratio - 1 = {batched / direct - 1:.3f})")
    relax = relax_overhead()
    screen = screen_overhead()
    print(f"screen_overhead={_fmt(screen)} relax_overhead={_fmt(relax)}")


if __name__ == "__main__":
    main()
