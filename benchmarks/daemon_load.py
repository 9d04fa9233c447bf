"""Daemon load: many small discoveries submitted at once to a PostgreSQL + RabbitMQ daemon.

    nice -n 10 .venv/bin/python benchmarks/daemon_load.py [--discoveries 50 --baseline 100 --workers 4]

Makes a throwaway profile (temporary AIIDA_PATH, a uniquely named PostgreSQL database, RabbitMQ broker),
starts the daemon with ``--workers`` workers and runs two phases, each submitted all at once and timed
from the first submission until the last process is terminated:

1. baseline: ``--baseline`` aiida-core-only work chains, each calling two trivial calcfunctions
   (``_trivial_workchain.py``; 3 processes each, no CalcJob) — the overhead AiiDA itself has here;
2. ours: ``--discoveries`` DiscoveryWorkChains on built-in hosts with tiny settings that still go
   through generation → screening → preselection → CHGNet relaxation (a CalcJob running ``battgen relax``)
   → elemental references → E_hull → shortlist → extraction (about 20 processes each).

The direct scheduler of localhost has no queue, so the ``battgen`` code takes one of ``--job-slots`` lock
files before it starts (what a cluster's scheduler would do): 50 CHGNet jobs at once would need ~20 GB.

Prints a table of wall time (mtime - ctime, s) per process type and the slowest step, then the database
is dropped. Compare with AiiDA's documented benchmark (docs: how-to "tune performance"): ~0.16 s per
ArithmeticAddCalculation with 4 workers on a work station. Last line:
``processes=<n> seconds=<s> per_hour=<x> failed=<k> ...`` (ours; baseline and slowest step appended).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
HOSTS = ["LiCoO2", "Li2O", "Si"]
# The smallest discovery that still relaxes and shortlists something (as tests/aiida/test_daemon.py).
TINY_OVERRIDES = {
    "generation": {"n": 12, "conditions": {"max_per_seed": 4}},
    "preselection": {"top_k": 1},
    "relax": {"relax": {"parameters": {"max_steps": 20, "fmax": 0.2}}},
    "shortlist": {"top_k": 1, "max_values": {"e_above_hull_eV_per_atom": 5.0}},
    "known_materials": None,  # comparable with the recorded runs (MLIP-referenced hull, two relaxations)
}


def _slot_prepend_text(lock_dir: Path, slots: int) -> str:
    """Shell that waits for one of ``slots`` lock files; the lock is held until the job's shell exits."""
    numbers = " ".join(str(i) for i in range(slots))
    return (
        f"while :; do for slot in {numbers}; do exec 9>\"{lock_dir}/slot$slot\"; "
        "flock -n 9 && break 2; done; sleep 0.2; done"
    )


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def _wait(pks: list[int], timeout: float, label: str) -> tuple[float, bool]:
    """Seconds until every process in ``pks`` is terminated (bounded by ``timeout``), and whether all did."""
    from aiida import orm
    from tqdm.auto import tqdm

    started = time.perf_counter()
    done = 0
    with tqdm(total=len(pks), desc=label, unit="run", disable=None, file=sys.stderr) as bar:
        while time.perf_counter() - started < timeout:
            query = orm.QueryBuilder().append(orm.ProcessNode, filters={
                "id": {"in": pks}, "attributes.process_state": {"in": ["finished", "excepted", "killed"]}})
            now = query.count()
            bar.update(now - done)
            done = now
            if done == len(pks):
                return time.perf_counter() - started, True
            time.sleep(2.0)
    return time.perf_counter() - started, False


def _process_stats(min_pk: int) -> dict:
    """Processes created since ``min_pk`` (exclusive): count, failures and wall time per process type."""
    from aiida import orm

    query = orm.QueryBuilder().append(orm.ProcessNode, filters={"id": {">": min_pk}}, project=[
        "attributes.process_label", "ctime", "mtime", "attributes.process_state", "attributes.exit_status",
        "node_type"])
    times: dict[str, list[float]] = defaultdict(list)
    failed: dict[str, int] = defaultdict(int)
    leaves: set[str] = set()
    for label, ctime, mtime, state, exit_status, node_type in query.iterall():
        times[label].append((mtime - ctime).total_seconds())
        if node_type.startswith("process.calculation."):
            leaves.add(label)
        if state != "finished" or exit_status != 0:
            failed[label] += 1
    table = {label: {"n": len(values), "mean_s": statistics.fmean(values), "max_s": max(values),
                     "failed": failed[label], "calculation": label in leaves} for label, values in times.items()}
    return {"processes": sum(len(v) for v in times.values()), "failed": sum(failed.values()), "by_type": table}


def _print_table(title: str, stats: dict) -> None:
    print(f"\n{title}: wall time per process type (mtime - ctime, s)")
    print(f"{'process type':<36}{'n':>6}{'mean_s':>10}{'max_s':>10}{'failed':>8}")
    for label, row in sorted(stats["by_type"].items(), key=lambda item: -item[1]["mean_s"]):
        print(f"{label:<36}{row['n']:>6}{row['mean_s']:>10.2f}{row['max_s']:>10.2f}{row['failed']:>8}")


def slowest_step(stats: dict) -> tuple[str, dict]:
    """The calculation type (CalcJob or calcfunction; work chains only wait for them) with the largest mean
    wall time."""
    steps = {k: v for k, v in stats["by_type"].items() if v["calculation"]}
    label = max(steps, key=lambda k: steps[k]["mean_s"])
    return label, steps[label]


def run_load(discoveries: int, baseline: int, workers: int, job_slots: int, timeout: float) -> dict:
    """Set up the throwaway profile, run both phases, tear everything down; returns the measurements.

    Call in a fresh process: AiiDA reads AIIDA_PATH when it is first imported.
    """
    if "aiida" in sys.modules:
        raise RuntimeError("run_load() needs a process that has not imported aiida yet (AIIDA_PATH is set here)")
    root = Path(tempfile.mkdtemp(prefix="battgen-daemon-load-"))
    name = f"battgen-load-{uuid.uuid4().hex[:8]}"
    os.environ["AIIDA_PATH"] = str(root / "aiida")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    os.environ.update(env)
    sys.path.insert(0, str(HERE))

    from aiida import orm
    from aiida.engine import submit

    from aiida_battgen.tools.demo import build_demo_inputs
    from aiida_battgen.tools.profiles import (PostgresSettings, drop_postgres_database, ensure_battgen_code,
                                              ensure_localhost, ensure_profile)

    results: dict = {"discoveries": discoveries, "baseline_workchains": baseline, "workers": workers}
    ensure_profile(name, postgres=True)
    daemon_started = False
    try:
        computer = ensure_localhost()
        ensure_battgen_code(computer)
        lock_dir = root / "locks"
        lock_dir.mkdir()
        code = orm.InstalledCode(label="battgen-slots", computer=computer,
                                 filepath_executable=str(BIN / "battgen"),
                                 default_calc_job_plugin="battgen.mlip.relax",
                                 prepend_text=_slot_prepend_text(lock_dir, job_slots)).store()
        _run([str(BIN / "verdi"), "-p", name, "config", "set", "warnings.rabbitmq_version", "False"], env)
        _run([str(BIN / "verdi"), "-p", name, "daemon", "start", str(workers)], env, timeout=120)
        daemon_started = True

        # Phase 1: the aiida-core baseline.
        from _trivial_workchain import TrivialWorkChain

        mark = orm.QueryBuilder().append(orm.Node, project="id").order_by({orm.Node: {"id": "desc"}}).first()[0]
        started = time.perf_counter()
        pks = [submit(TrivialWorkChain, x=orm.Int(i), y=orm.Int(1), z=orm.Int(2)).pk for i in range(baseline)]
        _, complete = _wait(pks, timeout, "baseline")
        seconds = time.perf_counter() - started
        base = _process_stats(mark)
        _print_table("baseline (aiida-core TrivialWorkChain)", base)
        results["baseline"] = {**base, "seconds": seconds, "complete": complete}

        # Phase 2: the discoveries. Seeds are stored once; each run gets its own random seed.
        mark = orm.QueryBuilder().append(orm.Node, project="id").order_by({orm.Node: {"id": "desc"}}).first()[0]
        builders = []
        for index in range(discoveries):
            builder = build_demo_inputs(code, "fast", TINY_OVERRIDES, host_names=HOSTS)
            builder.seed = orm.Int(index)
            builder.metadata.label = f"daemon load {index}"
            builder.shortlist_group_label = orm.Str(f"battgen/daemon-load/{name}")
            builders.append(builder)
        started = time.perf_counter()
        pks = [submit(builder).pk for builder in builders]
        _, complete = _wait(pks, timeout, "discoveries")
        seconds = time.perf_counter() - started
        ours = _process_stats(mark)
        _print_table(f"ours ({discoveries} DiscoveryWorkChains)", ours)
        top = orm.QueryBuilder().append(orm.ProcessNode, filters={"id": {"in": pks}},
                                        project=["attributes.exit_status"]).all(flat=True)
        results["ours"] = {**ours, "seconds": seconds, "complete": complete,
                           "discoveries_ok": sum(1 for status in top if status == 0)}
    finally:
        if daemon_started:
            subprocess.run([str(BIN / "verdi"), "-p", name, "daemon", "stop"], env=env, capture_output=True,
                           timeout=180)
        from aiida.manage import get_manager

        get_manager().reset_profile()  # close the storage connections before the database is dropped
        drop_postgres_database(PostgresSettings(), f"aiida_{name}")
        shutil.rmtree(root, ignore_errors=True)
    return results


def summary_line(results: dict) -> str:
    ours, base = results["ours"], results["baseline"]
    step, row = slowest_step(ours)
    per_hour = ours["processes"] / ours["seconds"] * 3600
    return (
        f"processes={ours['processes']} seconds={ours['seconds']:.1f} per_hour={per_hour:.0f} "
        f"failed={ours['failed']} discoveries={results['discoveries']} discoveries_ok={ours['discoveries_ok']} "
        f"workers={results['workers']} s_per_process={ours['seconds'] / ours['processes']:.3f} "
        f"baseline_processes={base['processes']} baseline_seconds={base['seconds']:.1f} "
        f"baseline_s_per_process={base['seconds'] / max(base['processes'], 1):.3f} "
        f"baseline_failed={base['failed']} slowest_step={step} slowest_mean_s={row['mean_s']:.1f} "
        f"slowest_max_s={row['max_s']:.1f} complete={str(ours['complete'] and base['complete']).lower()}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--discoveries", type=int, default=50, help="DiscoveryWorkChains submitted at once")
    parser.add_argument("--baseline", type=int, default=100, help="aiida-core TrivialWorkChains submitted at once")
    parser.add_argument("--workers", type=int, default=4, help="daemon workers")
    parser.add_argument("--job-slots", type=int, default=2, help="battgen jobs allowed to run at the same time")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait per phase")
    args = parser.parse_args(argv)
    results = run_load(args.discoveries, args.baseline, args.workers, args.job_slots, args.timeout)
    print(summary_line(results))


if __name__ == "__main__":
    main()
