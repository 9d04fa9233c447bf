"""Soak: tiny discovery campaigns on a PostgreSQL + RabbitMQ daemon with a bounded fault schedule, next to the
same campaigns on a fault-free twin (issue 18, item 3). Not run by CI (hours of wall time).

Two independent set-ups (``tests/aiida/faults/services.py``: private PostgreSQL + RabbitMQ + profile +
daemon with 2 workers each; the machine's services are never touched), the same campaigns in the same order
(built-in host pairs, fixed seeds, localhost code). Every ``--fault-every-s`` one fault is injected into the
faulty set-up, in rotation:

* ``worker_sigkill``: SIGKILL the workers and the circus arbiter, ``verdi daemon start``;
* ``broker_restart``: daemon stopped (killed when the stop hangs), RabbitMQ restarted, daemon started;
* ``postgres_restart``: PostgreSQL restarted, then ``aiida-battgen doctor --repair``.

Not injected here (they need the SLURM cluster of ``.ci/slurm.sh``; covered by ``tests/aiida/test_faults.py``):
a deleted remote folder and a walltime kill. Recovery time = from the injection until ``aiida-battgen doctor``
reports no stuck process. Figures: campaigns and processes run, faults, each recovery, candidates lost
(campaigns not finished ok, or shortlist rows missing against the twin), CalcJobs beyond the twin's count
(duplicated), shortlists equal (formula, row id, energies within 2 meV/atom). Last line:
``hours=… faults=… lost=0 duplicated=0 shortlists_equal=true``.

    python benchmarks/soak.py --hours 2            # the real soak (≥ 2 h)
    python benchmarks/soak.py --hours 0.2 --fault-every-s 150   # smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "aiida"))

from faults.services import PrivateServices  # noqa: E402

HOST_SETS = [["LiCoO2", "Li2O"], ["Li2O", "Si"], ["LiCoO2", "Si"]]
FAULTS = ["worker_sigkill", "broker_restart", "postgres_restart"]
ENERGY_TOLERANCE_EV = 2e-3


def start(key: str) -> tuple[PrivateServices, str]:
    services = PrivateServices()
    services.start_postgres()
    services.add_broker(key, advanced_config="[{rabbit, [{consumer_timeout, undefined}]}].\n")
    profile = services.add_profile(key)
    result = services.verdi(profile, "daemon", "start", "2")
    if result.returncode:
        raise RuntimeError(result.stdout + result.stderr)
    return services, profile


def healthy(services: PrivateServices, profile: str) -> bool:
    node = services.brokers[next(iter(services.brokers))].name
    return services.battgen(profile, "doctor", "--rabbitmq-node", node).returncode in (0, 2)


def inject(fault: str, services: PrivateServices, profile: str) -> str:
    key = next(iter(services.brokers))
    if fault == "worker_sigkill":
        services._kill_daemon(profile)
        (services.root / "aiida" / ".aiida" / "daemon" / f"circus-{profile}.pid").unlink(missing_ok=True)
        services.verdi(profile, "daemon", "start", "2")
        return "workers + arbiter SIGKILLed, daemon started"
    if fault == "broker_restart":
        how = "daemon stopped"
        try:
            if services.verdi(profile, "daemon", "stop", timeout=90).returncode:
                how = "daemon stop failed: killed"
        except Exception:  # noqa: BLE001 - a hung stop
            how = "daemon stop hung: killed"
        services._kill_daemon(profile)
        (services.root / "aiida" / ".aiida" / "daemon" / f"circus-{profile}.pid").unlink(missing_ok=True)
        services.brokers[key].restart()
        services.verdi(profile, "daemon", "start", "2")
        return f"{how}, RabbitMQ restarted, daemon started"
    services.postgres.restart()
    time.sleep(10)  # let the workers hit the dead session
    result = services.battgen(profile, "doctor", "--rabbitmq-node", services.brokers[key].name, "--repair",
                              timeout=600)
    repaired = [line for line in result.stdout.splitlines() if "repair" in line]
    return "PostgreSQL restarted; doctor exit " + str(result.returncode) + ("; " + "; ".join(repaired)
                                                                           if repaired else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=2.0, help="Submitting window (h); then the runs drain.")
    parser.add_argument("--fault-every-s", type=float, default=600.0, help="Seconds between faults.")
    parser.add_argument("--max-active", type=int, default=2, help="Campaigns running at once per set-up.")
    parser.add_argument("--drain-timeout-s", type=float, default=1800.0)
    args = parser.parse_args()

    started = time.monotonic()
    faulty, faulty_profile = start("faulty")
    twin, twin_profile = start("twin")
    setups = {"faulty": (faulty, faulty_profile), "twin": (twin, twin_profile)}
    campaigns: dict[str, list[int]] = {"faulty": [], "twin": []}
    faults: list[dict] = []
    try:
        deadline = started + args.hours * 3600
        next_fault = time.monotonic() + args.fault_every_s
        while time.monotonic() < deadline:
            for key, (services, profile) in setups.items():
                active = [pk for pk in campaigns[key] if not services.describe(profile, pk)["terminated"]]
                while len(active) < args.max_active:
                    hosts = HOST_SETS[len(campaigns[key]) % len(HOST_SETS)]
                    pk = services.driver("submit", profile, {"kind": "discovery", "computer": "localhost",
                                                             "hosts": hosts})["pk"]
                    campaigns[key].append(pk)
                    active.append(pk)
            if time.monotonic() >= next_fault:
                fault = FAULTS[len(faults) % len(FAULTS)]
                injected = time.monotonic()
                how = inject(fault, faulty, faulty_profile)
                while not healthy(faulty, faulty_profile) and time.monotonic() - injected < 600:
                    time.sleep(5)
                faults.append({"fault": fault, "how": how, "recovery_s": time.monotonic() - injected})
                print(f"fault {len(faults)}: {fault}: {how}; healthy after {faults[-1]['recovery_s']:.0f} s",
                      flush=True)
                next_fault = time.monotonic() + args.fault_every_s
            time.sleep(10)
        # Drain: the campaigns submitted in both set-ups run to the end (one repair if the faulty one stalls).
        # Both set-ups get the same campaigns: the twin only those the faulty one also started.
        n = min(len(campaigns["faulty"]), len(campaigns["twin"]))
        drain_deadline = time.monotonic() + args.drain_timeout_s
        results: dict[str, list[dict]] = {}
        for key, (services, profile) in setups.items():
            results[key] = []
            for pk in campaigns[key][:n]:
                description, _ = services.wait_until(profile, pk, lambda d: d["terminated"],
                                                     max(10.0, drain_deadline - time.monotonic()), interval=5)
                results[key].append(description)
        hours = (time.monotonic() - started) / 3600
        lost = duplicated = 0
        equal = True
        print("| campaign | hosts | faulty: exit, CalcJobs | twin: exit, CalcJobs | shortlist equal |")
        print("|---|---|---|---|---|")
        for index, (run, ref) in enumerate(zip(results["faulty"], results["twin"])):
            same = run["exit_status"] == 0 and len(run["shortlist"]) == len(ref["shortlist"]) and all(
                a[:2] == b[:2] and all(abs(x - y) <= ENERGY_TOLERANCE_EV for x, y in zip(a[2:], b[2:]))
                for a, b in zip(run["shortlist"], ref["shortlist"]))
            if run["exit_status"] != 0:
                lost += len(ref["shortlist"])
            else:
                lost += max(0, len(ref["shortlist"]) - len(run["shortlist"]))
            duplicated += max(0, len(run["calcjobs"]) - len(ref["calcjobs"]))
            equal &= same
            print(f"| {index} | {','.join(HOST_SETS[index % len(HOST_SETS)])} | {run['exit_status']}, "
                  f"{len(run['calcjobs'])} | {ref['exit_status']}, {len(ref['calcjobs'])} | {same} |")
        processes = sum(sum(run["counts"].values()) for run in results["faulty"])
        print(f"\ncampaigns={n} processes={processes} " + " ".join(
            f"fault{i + 1}={f['fault']}:{f['recovery_s']:.0f}s" for i, f in enumerate(faults)))
        print(f"hours={hours:.2f} faults={len(faults)} lost={lost} duplicated={duplicated} "
              f"shortlists_equal={str(equal and n > 0).lower()}")
    finally:
        faulty.teardown()
        twin.teardown()


if __name__ == "__main__":
    main()
