"""What full provenance costs: the same work done directly and through the AiiDA layer.

    .venv/bin/python benchmarks/provenance_overhead.py

``screen_overhead()``: the screening benchmark's 10,000 generated structures (validity, SMACT,
uniqueness, novelty against >= 5,000 real MP structures; built-in-host substitutions without the shared
data) screened by one ``battgen.screen.screen_batch`` call, and by the four screening calcfunctions in a
throwaway AiiDA profile (every passed/rejected batch stored as a node). Fraction = AiiDA / science − 1.

``relax_overhead()``: 24 strained/rattled cells — ten 1–3 atom cells and the primitive cells of the 14
built-in hosts (2–38 atoms), i.e. a realistic batch — relaxed with CHGNet (FIRE, FrechetCellFilter,
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
    """Ten 1–3 atom cells strained by 4 % and the 14 primitive built-in hosts strained by 2 %, all
    rattled so every relaxation takes real steps."""
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
    from battgen.sources.builtin_hosts import builtin_hosts

    cells += [host.get_primitive_structure() for host in builtin_hosts().structures]
    for index, cell in enumerate(cells):
        cell.apply_strain(0.04 if index < 10 else 0.02)
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


_CODE = None


def _localhost_code():
    """A throwaway AiiDA profile (temporary SQLite storage) with the battgen CLI on localhost (once)."""
    global _CODE
    if _CODE is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from _throwaway_profile import throwaway_battgen_code

        _CODE = throwaway_battgen_code()
    return _CODE


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


SCREEN_CANDIDATES = 10_000


def screening_batches():
    """(candidates, reference): the screening benchmark's data (10,000 generated vs >= 5,000 real MP
    structures from ../shared/data) when present, else substitutions of the built-in hosts."""
    sys.path.insert(0, str(Path(__file__).parent))
    import screening

    if (screening.shared_data_dir() / "SOURCES.md").exists():
        reference = screening.load_reference(screening.shared_data_dir())
        return screening.build_generated(reference, SCREEN_CANDIDATES, seed=0), reference
    from battgen.batch import StructureBatch
    from battgen.generate.substitution import SubstitutionGenerator
    from battgen.sources.builtin_hosts import builtin_hosts

    hosts = builtin_hosts()
    hosts = StructureBatch([s.get_primitive_structure() for s in hosts.structures], hosts.meta)
    conditions = {"threshold": 1e-5, "max_per_seed": 100_000, "max_substituted_species": 2}
    return SubstitutionGenerator().generate(hosts, SCREEN_CANDIDATES, conditions, seed=1), hosts


def _screen_through_aiida(candidates_node, reference_node) -> tuple[float, int]:
    """Wall time of the four screening calcfunctions on stored batch nodes; returns (seconds, survivors)."""
    from aiida_battgen.calculations.functions.screen_charge_neutrality import screen_charge_neutrality
    from aiida_battgen.calculations.functions.screen_novelty import screen_novelty
    from aiida_battgen.calculations.functions.screen_uniqueness import screen_uniqueness
    from aiida_battgen.calculations.functions.screen_validity import screen_validity

    started = time.perf_counter()
    current = candidates_node
    for function in (screen_validity, screen_charge_neutrality, screen_uniqueness):
        current = function(structures=current)["passed"]
    current = screen_novelty(structures=current, reference=reference_node)["passed"]
    return time.perf_counter() - started, current.n_rows


def screen_overhead(verbose: bool = True) -> float | None:
    """(screening calcfunctions) / (one science ``screen_batch`` call) − 1 on the same data.

    The input batches are stored before timing: in a discovery run they are the outputs of the
    previous step. "warm" = the inputs were created in this process (as in a work chain, whose steps
    run in one process); "cold" = the parsed-batch cache is cleared first, so the first read parses
    every structure from the repository file. The headline is the cold (pessimistic) figure.
    """
    from aiida_battgen.data.batch import StructureBatchData, clear_parsed_cache
    from battgen.screen.pipeline import screen_batch

    candidates, reference = screening_batches()
    _localhost_code()  # loads a throwaway profile
    candidates_node = StructureBatchData(candidates).store()
    reference_node = StructureBatchData(reference).store()
    science_times, warm_times, cold_times = [], [], []
    for _ in range(REPEATS):
        started = time.perf_counter()
        result = screen_batch(candidates, reference=reference)
        science_times.append(time.perf_counter() - started)
        seconds, survivors = _screen_through_aiida(candidates_node, reference_node)
        warm_times.append(seconds)
        clear_parsed_cache()
        seconds, survivors = _screen_through_aiida(candidates_node, reference_node)
        cold_times.append(seconds)
        if survivors != len(result.passed):
            raise RuntimeError(f"AiiDA screening kept {survivors} rows, the science call {len(result.passed)}")
    science, warm, cold = min(science_times), min(warm_times), min(cold_times)
    if verbose:
        print(f"screen: {len(candidates)} candidates vs {len(reference)} references -> {survivors} survivors; "
              f"screen_batch {science:.2f} s, 4 calcfunctions warm {warm:.2f} s (overhead {warm / science - 1:.3f}),"
              f" cold {cold:.2f} s; all runs: science {[round(t, 1) for t in science_times]}, "
              f"warm {[round(t, 1) for t in warm_times]}, cold {[round(t, 1) for t in cold_times]}")
    return cold / science - 1.0


def _fmt(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.3f}"


def main() -> None:
    from battgen.batch import StructureBatch

    batch = StructureBatch.from_structures(benchmark_structures(), prefix="bench")
    direct, batched = in_process_batch_vs_structoptimizer(batch)
    print(f"in-process: StructOptimizer loop {direct:.2f} s, relax_batch {batched:.2f} s "
          f"(ratio - 1 = {batched / direct - 1:.3f})")
    screen = screen_overhead()
    relax = relax_overhead()
    print(f"screen_overhead={_fmt(screen)} relax_overhead={_fmt(relax)}")


if __name__ == "__main__":
    main()
