"""``aiida-battgen doctor`` (issue 17 item 9, issue 18 item 2): the broker's consumer timeout read and the
recipe printed; processes stuck after a PostgreSQL restart found and repaired.

The fault test runs a private PostgreSQL + RabbitMQ (``faults/services.py``) with a daemon: restarting them
never disturbs the machine's shared services."""

from __future__ import annotations

import re
import time

import pytest

from aiida_battgen.tools import doctor
from faults.services import PrivateServices, ServicesUnavailable


# --- pure logic ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("output, expected", [
    ("{ok,1800000}\n", (True, 1800000)),
    ("{ok,60000}", (True, 60000)),
    ("{ok,undefined}", (True, None)),
    ("undefined\n", (True, None)),
    ("Error: unable to perform an operation on node 'rabbit@x'", (False, None)),
    ("", (False, None)),
])
def test_rabbitmqctl_timeout_is_parsed(output, expected):
    assert doctor.parse_rabbitmqctl_timeout(output) == expected


def test_the_30_minute_default_gets_the_recipe():
    report = doctor.BrokerReport(backend="core.rabbitmq", version="3.10.8", consumer_timeout_ms=1_800_000,
                                 timeout_known=True, timeout_source="rabbitmqctl")
    recipe = "\n".join(doctor.consumer_timeout_recipe(report))
    assert report.needs_attention
    assert "consumer_timeout is 1800000 ms (30 min)" in recipe
    assert "[{rabbit, [{consumer_timeout, undefined}]}]." in recipe
    assert f"consumer_timeout = {doctor.SUGGESTED_CONSUMER_TIMEOUT_MS}" in recipe
    assert "set_policy" not in recipe  # per-queue timeouts need RabbitMQ >= 3.12
    assert "ZeroMQ" in recipe


def test_per_queue_policy_offered_from_3_12():
    report = doctor.BrokerReport(backend="core.rabbitmq", version="3.13.1", consumer_timeout_ms=1_800_000,
                                 timeout_known=True)
    assert "set_policy" in "\n".join(doctor.consumer_timeout_recipe(report))


@pytest.mark.parametrize("report", [
    doctor.BrokerReport(backend="core.rabbitmq", version="3.10.8", consumer_timeout_ms=None, timeout_known=True),
    doctor.BrokerReport(backend="core.rabbitmq", version="3.10.8", timeout_known=True,
                        consumer_timeout_ms=30 * 24 * 3600 * 1000),
    doctor.BrokerReport(backend="core.rabbitmq", version="3.8.9", timeout_known=False),  # before the timeout existed
    doctor.BrokerReport(backend="core.zeromq"),
], ids=["undefined", "30-days", "3.8.9", "zeromq"])
def test_no_recipe_when_long_work_chains_are_safe(report):
    assert doctor.consumer_timeout_recipe(report) == []


def test_unknown_timeout_on_a_recent_broker_is_reported():
    report = doctor.BrokerReport(backend="core.rabbitmq", version="3.10.8", timeout_known=False)
    assert report.needs_attention and "unknown" in doctor.consumer_timeout_recipe(report)[0]


def test_daemon_log_lines_are_taken_from_the_current_daemon_only(tmp_path):
    log = tmp_path / "aiida.log"
    log.write_text(  # the daemon log's format, as written by aiida-core 2.9's workers
        "2026-12-02 09:00:00 [11] | sqlalchemy.exc.PendingRollbackError: an older daemon's worker\n"
        "2026-12-02 11:00:00 [12] | Report: fine\n"
        "2026-12-02 11:00:05 [12] |   File \"session.py\", line 988, in _raise_for_prerequisite_state\n"
        "2026-12-02 11:00:05 [12] | sqlalchemy.exc.PendingRollbackError: Can't reconnect until invalid transaction\n")
    since = time.mktime(time.strptime("2026-12-02 10:00:00", doctor.LOG_TIME_FORMAT))
    lines = doctor._log_lines_since(log, since, doctor.DEAD_SESSION_MARKERS)
    assert lines == [(12, "sqlalchemy.exc.PendingRollbackError: Can't reconnect until invalid transaction")]


# --- the PostgreSQL restart -----------------------------------------------------------------------------------
JOB_SLEEP_S = 45  # the CalcJob's job outlives the restart, so its worker polls it on a dead session


@pytest.fixture(scope="module")
def services():
    try:
        services = PrivateServices()
        services.start_postgres()
        services.add_broker("main")
        services.add_profile("main")
    except ServicesUnavailable as exc:
        pytest.skip(str(exc))
    yield services
    services.teardown()


@pytest.mark.daemon
def test_setup_postgres_prints_the_recipe_on_the_30_minute_default(services):
    """`setup --postgres` on a RabbitMQ 3.10 node with its default consumer timeout; rabbitmqctl finds the
    private node through RABBITMQ_NODENAME, as it would any node."""
    name = "battgen-setup-check"
    result = services.run(services.battgen_executable(), "setup", "--postgres", "--profile-name", name,
                          "--db-port", str(services.postgres.port), "--broker-port", str(services.brokers["main"].port),
                          env={"RABBITMQ_NODENAME": services.brokers["main"].name})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"broker: core.rabbitmq version 3\.\d+\.\d+, consumer_timeout 1800000 ms", output), output
    assert "consumer_timeout is 1800000 ms (30 min)" in output
    assert "[{rabbit, [{consumer_timeout, undefined}]}]." in output and "docs/cluster.md" in output


def _job_running(description: dict) -> bool:
    return any(c["job_id"] for c in description["calcjobs"])


@pytest.mark.faults
@pytest.mark.daemon
def test_doctor_finds_and_repairs_processes_stuck_after_a_postgres_restart(services):
    profile = services.profiles["main"]
    node = services.brokers["main"].name
    assert services.verdi(profile, "daemon", "start", "1").returncode == 0

    healthy = services.battgen(profile, "doctor", "--rabbitmq-node", node)
    assert "no stuck process" in healthy.stdout, healthy.stdout + healthy.stderr
    assert "consumer_timeout 1800000 ms (from rabbitmqctl)" in healthy.stdout  # a private 3.10 node, default
    assert healthy.returncode == 2, healthy.stdout  # only the broker warning
    assert "[{rabbit, [{consumer_timeout, undefined}]}]." in healthy.stdout

    pk = services.driver("submit-long", profile, {"sleep_s": JOB_SLEEP_S})["pk"]
    description, running = services.wait_until(profile, pk, _job_running, 180)
    assert running, description
    services.postgres.restart()
    time.sleep(8)  # the worker polls its job (1 s poll interval) and hits the dead session

    deadline, found = time.monotonic() + 90, None
    while time.monotonic() < deadline:  # the worker drops its tasks once its session fails
        found = services.battgen(profile, "doctor", "--rabbitmq-node", node)
        if found.returncode == 1 and str(pk) in found.stdout + found.stderr:
            break
        time.sleep(5)
    output = found.stdout + found.stderr
    assert found.returncode == 1, output
    assert "lost their database session" in output, output
    # Seen here: the worker keeps the processes (it answers RPCs) but every database access fails; in the
    # SLURM fault suite the workers dropped their tasks instead. Either way the work chain is named.
    assert f"cannot progress: [{pk}" in output or f"will never progress: [{pk}" in output, output
    assert "aiida-battgen doctor --repair" in output

    started = time.monotonic()
    repaired = services.battgen(profile, "doctor", "--rabbitmq-node", node, "--repair", timeout=600)
    output = repaired.stdout + repaired.stderr
    assert "verdi process repair --force`: revived" in output, output
    assert "repaired:" in output and repaired.returncode == 2, output  # healthy, the broker warning remains
    description, _ = services.wait_until(profile, pk, lambda d: d["terminated"], 240)
    assert description["exit_status"] == 0, description
    assert len(description["calcjobs"]) == 1 and description["calcjobs"][0]["exit_status"] == 0, description
    census = services.driver("census", profile)
    assert sum(census["ArithmeticAddCalculation"].values()) == 1, census  # the job was not run twice
    print("\n--- doctor after the restart ---\n" + found.stdout + "--- doctor --repair ---\n" + repaired.stdout)
    print(f"\nPostgreSQL restart: doctor found {pk} stuck; repair + finish took {time.monotonic() - started:.0f} s; "
          f"census {census}")
