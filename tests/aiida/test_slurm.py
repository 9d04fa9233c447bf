"""Our CalcJobs end to end through a real SLURM scheduler over SSH (issue 7, item 1).

The computer is ``core.ssh`` (paramiko, key-only login to root@localhost) + ``core.slurm`` on the
single-node cluster of ``.ci/slurm.sh``; the profile is ``core.psql_dos`` on a private PostgreSQL cluster with
a private RabbitMQ node, and two daemon workers run everything (see ``faults/cluster.py``). Skips with the
reason where SLURM, sshd, PostgreSQL or RabbitMQ are not there; the Quantum ESPRESSO test alone skips where
only pw.x is missing (the other jobs still run).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from faults.cluster import ServicesUnavailable, get_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.daemon]
TIMEOUT_S = 420
PW_EXECUTABLE = "/usr/bin/pw.x"  # where faults/driver.py looks for it when it sets up the pw@slurm code


@pytest.fixture(scope="module")
def cluster():
    try:
        return get_cluster()
    except ServicesUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def finished(cluster):
    """Every kind of process submitted at once (SLURM runs two jobs at a time on the 2-core node), then
    awaited: {kind: description}, plus the wall time of the whole batch."""
    started = time.monotonic()
    pks = {
        "relax": cluster.submit("relax", n_rows=3),
        "generate": cluster.submit("generate"),
        "md": cluster.submit("md"),
        "discovery": cluster.submit("discovery", hosts=["LiCoO2", "Li2O"]),
        "train": cluster.submit("train"),
    }
    if "pw" in cluster.slurm["codes"]:  # the pw@slurm code exists only where pw.x is installed
        pks["pw"] = cluster.submit("pw", code="pw")
    results = {kind: cluster.wait(pk, TIMEOUT_S) for kind, pk in pks.items()}
    results["_wall_time_s"] = time.monotonic() - started
    print(f"\nSLURM suite: {len(pks)} processes in {results['_wall_time_s']:.0f} s "
          f"(setup {cluster.setup_seconds:.0f} s)")
    return results


def _ok(description: dict) -> None:
    assert description["terminated"] and description["exit_status"] == 0, json.dumps(description, indent=1)[:4000]


def _ran_through_slurm(description: dict) -> None:
    """Every CalcJob has a SLURM job id and a work directory on the SSH computer."""
    assert description["calcjobs"], description
    for calcjob in description["calcjobs"]:
        assert calcjob["job_id"] and calcjob["job_id"].isdigit(), calcjob
        assert "/slurm-work/" in calcjob["remote_workdir"], calcjob


def test_the_computer_is_ssh_plus_slurm(cluster):
    out = cluster.verdi("computer", "show", "slurm")
    assert "core.ssh" in out and "core.slurm" in out, out
    assert cluster.slurm["sinfo"].startswith(("idle", "mix", "alloc")), cluster.slurm  # sinfo run over ssh


def test_batched_mlip_relaxation(finished):
    relax = finished["relax"]
    _ok(relax)
    _ran_through_slurm(relax)
    assert relax["output_parameters"]["counts"]["converged"] == 3
    assert relax["counts"] == {"MlipRelaxBaseWorkChain": 1, "MlipRelaxCalculation": 1}


def test_generation(finished):
    generate = finished["generate"]
    _ok(generate)
    _ran_through_slurm(generate)
    assert "generated_structures" in generate["outputs"]
    assert generate["output_parameters"]["n_generated"] > 0


def test_md(finished):
    md = finished["md"]
    _ok(md)
    _ran_through_slurm(md)
    assert md["output_parameters"]["md"]["steps_done"] == 60
    assert md["output_parameters"]["diffusivity_cm2_per_s"] > 0


def test_quantum_espresso_scf(finished):
    if "pw" not in finished:
        pytest.skip(f"Quantum ESPRESSO is not installed ({PW_EXECUTABLE} missing: apt-get install quantum-espresso)")
    pw = finished["pw"]
    _ok(pw)
    _ran_through_slurm(pw)
    # eV: Si2 with the Debian LDA pseudopotential (Si.pz-vbc) at 16 Ry, about -15.65 Ry = -213 eV
    energy = pw["output_parameters"]["energy"]
    assert -220 < energy < -205, energy


def test_discovery_with_relaxations_on_slurm(finished):
    discovery = finished["discovery"]
    _ok(discovery)
    _ran_through_slurm(discovery)
    assert discovery["counts"]["MlipRelaxCalculation"] == 2  # candidates + references, one job each
    assert 1 <= len(discovery["shortlist"]) <= 2


def test_predictor_training(finished):
    train = finished["train"]
    _ok(train)
    _ran_through_slurm(train)
    assert train["output_parameters"]["architecture"] == "magpie-cnn"


def test_jobs_left_the_queue(cluster, finished):
    queue = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True, timeout=30).stdout
    assert str(cluster.workdir) not in queue, queue
