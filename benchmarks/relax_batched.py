"""Batched vs sequential MLIP relaxation: the same MP-20 structures, potential and criteria, both engines.

Rows: the first ``--n`` structures (default 100) of the shared MP-20 subset
(``mp20_mini_slices/raw_mp20_dataset_mini.csv``, 1–20 atoms). Both engines relax them with the same
potential (``--mlip``, default CHGNet 0.3.0), FIRE, the Fréchet cell filter, ``fmax`` 0.05 eV/Å and
``max_steps`` 500 (``battgen relax``'s defaults):

* ``ase``: :func:`battgen.mlip.relax.relax_batch`'s loop, one structure after another through the ASE
  calculator (the reference implementation);
* ``batched``: the same call with ``engine="batched"`` (:mod:`battgen.mlip.batched`: torch-sim's FIRE,
  every step one model call for the rows in flight, ``--max-atoms`` atoms at most).

Each engine runs in its own subprocess (its peak resident memory is its own; model loading is not timed),
with ``--threads`` torch threads (default 2: the two cores of the development machine). Reported: wall
time and structures/min of each, the throughput ratio, the per-atom energy difference on rows both
engines converged (median and max, meV/atom), rows whose status differs, model calls, peak RSS.

Usage: ``python benchmarks/relax_batched.py [--n 100] [--mlip chgnet] [--threads 2] [--max-atoms 400]``;
the last line is ``speedup=... median_dE_meV=... identical_status=...`` and more ``key=value`` pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("BATTGEN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def load_batch(n: int):
    from battgen.sources.files import read_mp20_csv

    path = shared_data_dir() / "mp20_mini_slices" / "raw_mp20_dataset_mini.csv"
    if not path.exists():
        sys.exit(f"shared data not found at {path} (set BATTGEN_SHARED_DATA)")
    batch, _ = read_mp20_csv(path, max_rows=n)
    return batch


def run_engine(engine: str, n: int, mlip: str, threads: int, max_atoms: int | None, out: Path) -> None:
    """One engine in this process: relax, then write records, timings and peak RSS to ``out``."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    from battgen.mlip.relax import load_relax_mlip, relax_batch

    batch = load_batch(n)
    calculator, info = load_relax_mlip(mlip)
    report: dict = {}
    started = time.perf_counter()
    _, records = relax_batch(batch, mlip=mlip, calculator=calculator, supported_elements=info.supported_elements,
                             progress=False, engine=engine, batch_max_atoms=max_atoms, engine_report=report)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps({"engine": engine, "seconds": seconds, "records": records, "report": report,
                               "peak_rss_MB": peak_mb, "model": info.model_name, "n_atoms": sum(map(len, batch.structures))},
                              default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="MP-20 structures (default 100; smaller for a smoke run)")
    parser.add_argument("--mlip", default="chgnet")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per engine (default 2)")
    parser.add_argument("--max-atoms", type=int, default=None, help="atoms in flight, batched engine (default: its own)")
    parser.add_argument("--engine", choices=("ase", "batched"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:  # the child process of one engine
        run_engine(args.engine, args.n, args.mlip, args.threads, args.max_atoms, args.out)
        return

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("batched", "ase"):
            out = Path(tmp) / f"{engine}.json"
            command = [sys.executable, __file__, "--engine", engine, "--out", str(out), "--n", str(args.n),
                       "--mlip", args.mlip, "--threads", str(args.threads)]
            if args.max_atoms:
                command += ["--max-atoms", str(args.max_atoms)]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            subprocess.run(command, check=True, env=env)
            results[engine] = json.loads(out.read_text())
            print(f"{engine}: {results[engine]['seconds']:.1f} s for {args.n} structures", flush=True)

    ase, ours = results["ase"], results["batched"]
    differences, mismatches = [], []
    for ref, new in zip(ase["records"], ours["records"]):
        if ref["relax_status"] != new["relax_status"]:
            mismatches.append((ref["row_id"], ref["relax_status"], new["relax_status"], ref["n_steps"], new["n_steps"]))
        if ref["relax_status"] == new["relax_status"] == "converged":
            differences.append(abs(ref["energy_per_atom_eV"] - new["energy_per_atom_eV"]) * 1000)
    statuses = {}
    for name, result in (("ase", ase), ("batched", ours)):
        counts: dict[str, int] = {}
        for record in result["records"]:
            counts[record["relax_status"]] = counts.get(record["relax_status"], 0) + 1
        statuses[name] = counts
    steps_ase = sum(r["n_steps"] for r in ase["records"])
    steps_ours = sum(r["n_steps"] for r in ours["records"])
    speedup = ase["seconds"] / ours["seconds"]
    median = statistics.median(differences) if differences else float("nan")

    print(f"\nmodel {ase['model']}, {args.n} MP-20 structures ({ase['n_atoms']} atoms), {args.threads} torch threads")
    print(f"{'engine':<9}{'wall s':>9}{'struct/min':>12}{'FIRE steps':>12}{'model calls':>13}{'peak RSS MB':>13}  statuses")
    for name, result, steps in (("ase", ase, steps_ase), ("batched", ours, steps_ours)):
        calls = result["report"].get("model_calls", steps + args.n)
        print(f"{name:<9}{result['seconds']:>9.1f}{60 * args.n / result['seconds']:>12.1f}{steps:>12}{calls:>13}"
              f"{result['peak_rss_MB']:>13.0f}  {statuses[name]}")
    print(f"batched engine: {ours['report']}")
    if differences:
        print(f"|ΔE| per atom on {len(differences)} rows both converged: median {median:.4f} meV, "
              f"max {max(differences):.4f} meV")
    for row_id, ref, new, n_ref, n_new in mismatches:
        print(f"status differs: {row_id}: ase {ref} ({n_ref} steps), batched {new} ({n_new} steps)")
    print(
        f"speedup={speedup:.2f} median_dE_meV={median:.4f} identical_status={str(not mismatches).lower()} "
        f"status_mismatches={len(mismatches)} max_dE_meV={max(differences, default=float('nan')):.4f} n={args.n} "
        f"mlip={args.mlip} threads={args.threads} ase_s={ase['seconds']:.1f} batched_s={ours['seconds']:.1f} "
        f"ase_struct_per_min={60 * args.n / ase['seconds']:.1f} batched_struct_per_min={60 * args.n / ours['seconds']:.1f} "
        f"peak_rss_MB_ase={ase['peak_rss_MB']:.0f} peak_rss_MB_batched={ours['peak_rss_MB']:.0f}"
    )


if __name__ == "__main__":
    main()
