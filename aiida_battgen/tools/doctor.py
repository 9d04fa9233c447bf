"""Health check of a profile's daemon, broker and database (``aiida-battgen doctor``).

Two failures that AiiDA itself leaves silent:

* **Stuck processes.** After a PostgreSQL restart the daemon workers' sessions are left in a failed
  transaction (``PendingRollbackError`` in the daemon log only) and the workers drop the tasks of the
  processes they were running: those stay ``Waiting`` and never progress. A process is *alive* when a
  worker answers an RPC addressed to it (every process a worker holds subscribes one); an active process
  that nobody answers for and whose task is not waiting in the broker's queue is stuck. The repair is
  aiida-core's: stop the daemon (killed when the stop hangs), ``verdi process repair``, start it again.
* **The broker's consumer timeout.** RabbitMQ ≥ 3.8.15 closes a consumer's channel when a delivered task
  stays unacknowledged longer than ``consumer_timeout`` (default 30 min); AiiDA acknowledges a process's
  task only when the process ends, so every longer work chain loses its channel and its task is
  re-delivered. :func:`check_broker` reads the version and, where it can, the timeout, and says what to set.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

#: A consumer timeout shorter than this (ms) is reported: campaigns run overnight or longer.
MIN_CONSUMER_TIMEOUT_MS = 7 * 24 * 3600 * 1000
#: What the recipe suggests where ``undefined`` is not wanted: 7 days, in ms.
SUGGESTED_CONSUMER_TIMEOUT_MS = MIN_CONSUMER_TIMEOUT_MS
#: Daemon-log markers of a worker whose database session died (PostgreSQL restarted or unreachable).
DEAD_SESSION_MARKERS = ("PendingRollbackError", "server closed the connection unexpectedly",
                        "terminating connection due to administrator command", "connection to server at",
                        "Can't reconnect until invalid transaction is rolled back")
#: Daemon-log markers of a worker's channel closed under it (RabbitMQ's consumer timeout, seen here as
#: aiormq's ChannelInvalidStateError when the worker acknowledges or checkpoints a task).
CONSUMER_TIMEOUT_MARKERS = ("delivery acknowledgement on channel", "PRECONDITION_FAILED", "ChannelInvalidStateError")
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # the daemon log: "2026-12-02 16:33:39 [<worker pid>] | message"
LOG_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \[(\d+)\] \| ")


@dataclasses.dataclass
class BrokerReport:
    """What the broker is and whether its consumer timeout is safe for long work chains."""

    backend: str
    version: str | None = None
    consumer_timeout_ms: int | None = None  # None with ``timeout_known``: no timeout (``undefined``)
    timeout_known: bool = False
    timeout_source: str = ""  # "rabbitmqctl", "management API (queue policy)", ...
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def timeout_too_short(self) -> bool:
        return self.timeout_known and self.consumer_timeout_ms is not None and \
            self.consumer_timeout_ms < MIN_CONSUMER_TIMEOUT_MS

    @property
    def needs_attention(self) -> bool:
        """True when the timeout is too short, or unknown on a RabbitMQ version that has one."""
        if self.backend != "core.rabbitmq":
            return False
        return self.timeout_too_short or (not self.timeout_known and _has_consumer_timeout(self.version))


@dataclasses.dataclass
class ProcessReport:
    """Active processes cross-checked against the daemon workers and the broker's queue."""

    daemon_running: bool
    active: list[int] = dataclasses.field(default_factory=list)
    alive: list[int] = dataclasses.field(default_factory=list)  # answered by a daemon worker
    queued: list[int] = dataclasses.field(default_factory=list)  # task waiting in the broker queue
    stuck: list[int] = dataclasses.field(default_factory=list)
    no_task: list[int] = dataclasses.field(default_factory=list)  # held by no worker, no task in the broker
    broken_workers: list[int] = dataclasses.field(default_factory=list)  # running workers with a dead session
    orphans: list[int] = dataclasses.field(default_factory=list)  # active, but their caller has terminated
    dead_session_lines: list[str] = dataclasses.field(default_factory=list)
    consumer_timeout_lines: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not (self.stuck or self.orphans or self.dead_session_lines or self.consumer_timeout_lines)


# --- the broker ------------------------------------------------------------------------------------------
def _has_consumer_timeout(version: str | None) -> bool:
    from packaging.version import parse

    return version is None or parse(version) >= parse("3.8.15")


def parse_rabbitmqctl_timeout(output: str) -> tuple[bool, int | None]:
    """``application:get_env(rabbit, consumer_timeout)`` as printed by ``rabbitmqctl eval``:
    ``{ok,1800000}`` → (True, 1800000); ``{ok,undefined}`` / ``undefined`` → (True, None) = no timeout."""
    text = output.strip().splitlines()[-1].strip() if output.strip() else ""
    match = re.fullmatch(r"\{ok,\s*(\d+)\}", text)
    if match:
        return True, int(match.group(1))
    if text in ("undefined", "{ok,undefined}", "{ok,infinity}"):
        return True, None
    return False, None


def read_timeout_rabbitmqctl(node: str | None = None, timeout: float = 30) -> tuple[bool, int | None, str]:
    """The broker node's ``consumer_timeout`` through ``rabbitmqctl eval`` (local node, needs its Erlang
    cookie: root or the rabbitmq user). Returns (known, ms or None, why unknown)."""
    executable = shutil.which("rabbitmqctl")
    if not executable:
        return False, None, "rabbitmqctl is not installed here"
    command = [executable, *(["-n", node] if node else []), "eval",
               "application:get_env(rabbit, consumer_timeout)."]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, None, "rabbitmqctl did not answer"
    known, value = parse_rabbitmqctl_timeout(result.stdout)
    if result.returncode or not known:
        reason = (result.stderr or result.stdout).strip().splitlines()
        return False, None, f"rabbitmqctl failed: {reason[0] if reason else result.returncode}"
    return True, value, ""


def read_management_api(url: str, username: str, password: str, vhost: str, queue: str,
                        timeout: float = 5) -> dict[str, Any]:
    """Version and the queue's own consumer timeout (argument ``x-consumer-timeout`` or a policy's
    ``consumer-timeout``, RabbitMQ ≥ 3.12) from the management plugin's HTTP API; {} when it is not enabled.
    The node-wide ``consumer_timeout`` is not exposed by that API."""
    from urllib.parse import quote

    manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    manager.add_password(None, url, username, password)
    opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(manager))
    try:
        with opener.open(f"{url}/api/overview", timeout=timeout) as response:
            overview = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    found: dict[str, Any] = {"version": overview.get("rabbitmq_version")}
    try:
        with opener.open(f"{url}/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}",
                         timeout=timeout) as response:
            details = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return found
    policy = details.get("effective_policy_definition") or {}
    for value in (details.get("arguments", {}).get("x-consumer-timeout"), policy.get("consumer-timeout")):
        if isinstance(value, int):
            found["queue_consumer_timeout_ms"] = value
    return found


def check_broker(profile, rabbitmq_node: str | None = None, management_port: int = 15672) -> BrokerReport:
    """Version and consumer timeout of ``profile``'s broker (loaded profile's manager is used)."""
    from aiida.manage import get_manager

    backend = profile.process_control_backend or "none"
    report = BrokerReport(backend=backend)
    if backend != "core.rabbitmq":
        report.timeout_known, report.timeout_source = backend != "none", f"{backend} has none"
        report.notes.append(f"broker {backend}: no consumer timeout, long work chains are not affected"
                            if backend != "none" else "no broker configured: processes cannot be submitted")
        return report
    config = profile.process_control_config
    broker = get_manager().get_broker()
    try:
        report.version = str(broker.get_rabbitmq_version())
    except Exception as exc:  # noqa: BLE001 - any connection failure: say so, keep checking what we can
        report.notes.append(f"RabbitMQ not reachable: {exc}")
    host = config.get("broker_host", "127.0.0.1")
    if host in ("127.0.0.1", "localhost", "::1"):
        known, value, why = read_timeout_rabbitmqctl(rabbitmq_node)
        if known:
            report.timeout_known, report.consumer_timeout_ms, report.timeout_source = True, value, "rabbitmqctl"
        else:
            report.notes.append(why)
    else:
        report.notes.append(f"the broker runs on {host}: rabbitmqctl can only ask a local node")
    from aiida.brokers.rabbitmq.utils import get_launch_queue_name

    api = read_management_api(f"http://{host}:{management_port}", config.get("broker_username", "guest"),
                              config.get("broker_password", "guest"), config.get("broker_virtual_host") or "/",
                              get_launch_queue_name(f"aiida-{profile.uuid}"))
    if not api:
        report.notes.append(f"management API not enabled on {host}:{management_port}")
    else:
        report.version = report.version or api.get("version")
        if "queue_consumer_timeout_ms" in api:  # a per-queue value overrides the node's
            report.timeout_known, report.consumer_timeout_ms = True, api["queue_consumer_timeout_ms"]
            report.timeout_source = "management API (queue argument / policy)"
    if not report.timeout_known and report.version and not _has_consumer_timeout(report.version):
        report.timeout_known, report.timeout_source = True, f"RabbitMQ {report.version} has no consumer timeout"
    if not report.timeout_known:
        report.notes.append("cannot read the consumer timeout here (no rabbitmqctl access, no management API): "
                            "ask the broker's administrator for `consumer_timeout`")
    return report


def consumer_timeout_recipe(report: BrokerReport) -> list[str]:
    """What to set, per RabbitMQ version; empty when nothing needs doing."""
    if not report.needs_attention:
        return []
    from packaging.version import parse

    version = report.version or "unknown"
    current = (f"{report.consumer_timeout_ms} ms ({report.consumer_timeout_ms / 60000:.0f} min)"
               if report.timeout_too_short else "unknown")
    lines = [
        f"RabbitMQ {version}: consumer_timeout is {current}. AiiDA acknowledges a process's task only when the "
        "process ends, so a work chain that lives longer has its channel closed by the broker and its task "
        "re-delivered (steps run twice or the process hangs).",
        "Fix on the broker's machine (measured with RabbitMQ 3.10.8 and aiida-core 2.9), then restart RabbitMQ "
        "and the daemon (`verdi daemon restart`):",
        "  /etc/rabbitmq/advanced.config:  [{rabbit, [{consumer_timeout, undefined}]}].",
        f"  or /etc/rabbitmq/rabbitmq.conf:  consumer_timeout = {SUGGESTED_CONSUMER_TIMEOUT_MS}   "
        "(ms, 7 days: longer than the longest campaign)",
        "  until the next broker restart, without one:  rabbitmqctl eval "
        "'application:set_env(rabbit, consumer_timeout, undefined).'  (new channels only: restart the daemon)",
    ]
    if report.version and parse(report.version) >= parse("3.12"):
        lines.append("  RabbitMQ >= 3.12, per queue (needs the vhost's policymaker tag): rabbitmqctl set_policy "
                     "aiida-no-consumer-timeout '^aiida-.*' "
                     f"'{{\"consumer-timeout\": {SUGGESTED_CONSUMER_TIMEOUT_MS}}}' --apply-to queues")
    lines.append("Where the broker cannot be changed (a shared cluster broker): on a single machine use AiiDA's "
                 "ZeroMQ broker, which has no consumer timeout (`aiida-battgen setup` makes such a profile); see "
                 "docs/cluster.md.")
    return lines


# --- stuck processes ---------------------------------------------------------------------------------------
def _log_lines_since(log_file: Path, since: float, markers: tuple[str, ...],
                     limit: int = 20) -> list[tuple[int, str]]:
    """(worker pid, line) of the daemon-log lines newer than ``since`` (epoch s) containing one of ``markers``."""
    if not log_file.exists():
        return []
    found = []
    with open(log_file, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = LOG_LINE.match(line)
            if not match or not any(marker in line for marker in markers):
                continue
            if datetime.strptime(match.group(1), LOG_TIME_FORMAT).timestamp() >= since:
                found.append((int(match.group(2)), line[match.end():].strip()[:300]))
    return found[-limit:]


def _worker_pids(client) -> list[int]:
    """The running daemon workers (children of the circus arbiter)."""
    import psutil

    pid = client.get_daemon_pid()
    try:
        children = psutil.Process(pid).children(recursive=True) if pid else []
        return [child.pid for child in children if "worker" in " ".join(child.cmdline())]
    except psutil.NoSuchProcess:
        return []


def _is_alive(controller, pk: int, timeout: float) -> bool:
    """Does a daemon worker hold ``pk``? Its RPC subscriber answers; nobody → ``UnroutableError``."""
    import kiwipy

    try:
        controller.get_status(pk).result(timeout=timeout)
        return True
    except kiwipy.UnroutableError:
        return False
    except Exception:  # noqa: BLE001 - a worker that holds it but is too busy to answer counts as alive
        return True


def _orphans(active: list[int]) -> list[int]:
    """Active processes whose calling work chain has terminated: a re-delivered task ran a step twice (seen
    with the consumer timeout: a CalcJob left `Running` under a finished work chain)."""
    from aiida import orm

    query = orm.QueryBuilder().append(orm.ProcessNode, filters={"id": {"in": active}}, project="id", tag="child")
    query.append(orm.ProcessNode, with_outgoing="child", project="attributes.process_state")
    return sorted({pk for pk, state in query.iterall() if state in ("finished", "excepted", "killed")})


def find_stuck_processes(profile, rpc_timeout: float = 10.0) -> ProcessReport:
    """Cross-check the active processes of the loaded ``profile`` with the daemon workers and the broker."""
    from aiida.engine.daemon.client import get_daemon_client
    from aiida.engine.processes.control import get_active_processes
    from aiida.manage import get_manager

    client = get_daemon_client(profile.name)
    report = ProcessReport(daemon_running=client.is_daemon_running)
    report.active = sorted(get_active_processes(project="id"))
    if report.daemon_running:
        since = Path(client.circus_pid_file).stat().st_mtime if Path(client.circus_pid_file).exists() else 0.0
        log_file = Path(client.daemon_log_file)
        dead = _log_lines_since(log_file, since, DEAD_SESSION_MARKERS)
        report.dead_session_lines = [line for _, line in dead]
        report.broken_workers = sorted({pid for pid, _ in dead} & set(_worker_pids(client)))
        report.consumer_timeout_lines = [line for _, line in _log_lines_since(log_file, since,
                                                                              CONSUMER_TIMEOUT_MARKERS)]
    if not report.active:
        return report
    report.orphans = _orphans(report.active)
    manager = get_manager()
    if not report.daemon_running:
        report.notes.append("the daemon is not running: no active process can progress")
        report.stuck = list(report.active)
        return report
    controller = manager.get_process_controller()
    report.alive = [pk for pk in report.active if _is_alive(controller, pk, rpc_timeout)]
    unanswered = [pk for pk in report.active if pk not in report.alive]
    if unanswered:  # a task may just wait for a free worker slot: read the queue (tasks are put back)
        from aiida.engine.processes.control import get_process_tasks

        queued = set(get_process_tasks(manager.get_broker()))
        report.queued = [pk for pk in unanswered if pk in queued]
        # A worker may have picked a task up meanwhile: ask once more before calling it stuck.
        report.no_task = [pk for pk in unanswered if pk not in queued and not _is_alive(controller, pk, rpc_timeout)]
    # A worker whose session died still answers RPCs but every database access fails: what it holds never
    # progresses. Which worker holds which process is not exposed, so with a broken worker every held
    # process counts (the repair restarts all workers; processes continue from their checkpoints).
    held_by_broken = report.alive if report.broken_workers else []
    report.stuck = sorted({*report.no_task, *held_by_broken})
    return report


def describe(processes: ProcessReport) -> list[str]:
    """What happened, in words, for the CLI."""
    lines = []
    if processes.dead_session_lines:
        lines.append(f"the daemon workers lost their database session ({len(processes.dead_session_lines)} log "
                     "line(s) since the daemon started, e.g. PostgreSQL was restarted): they drop the tasks of "
                     "the processes they run and do not recover by themselves")
        lines.append(f"  last: {processes.dead_session_lines[-1]}")
    if processes.consumer_timeout_lines:
        lines.append("RabbitMQ closed a worker's channel because a task stayed unacknowledged longer than its "
                     "consumer_timeout: tasks are re-delivered, steps may run twice")
        lines.append(f"  last: {processes.consumer_timeout_lines[-1]}")
    if processes.orphans:
        lines.append(f"active process(es) whose calling work chain has already terminated (a step ran twice after "
                     f"a re-delivered task; they will never be used): {processes.orphans} — `verdi process kill`")
    if processes.broken_workers:
        held = [pk for pk in processes.stuck if pk not in processes.no_task]
        lines.append(f"daemon worker(s) {processes.broken_workers} still run with a dead database session: the "
                     f"process(es) they hold cannot progress: {held}")
    if processes.no_task:
        lines.append(f"{len(processes.no_task)} active process(es) held by no daemon worker and with no task in "
                     f"the broker: they will never progress: {processes.no_task}")
    return lines


# --- the repair ----------------------------------------------------------------------------------------------
def _verdi(profile_name: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    verdi = shutil.which("verdi") or "verdi"
    return subprocess.run([verdi, "-p", profile_name, *args], capture_output=True, text=True, timeout=timeout)


def repair(profile, workers: int | None = None, stop_timeout: float = 60) -> list[str]:
    """Stop the daemon (kill it when the stop hangs: workers with a dead session do), run
    ``verdi process repair --force`` (re-creates the lost tasks; tasks the killed workers held go back to the
    queue by themselves), start the daemon again.
    Returns one line per step done."""
    import psutil
    from aiida.engine.daemon.client import get_daemon_client

    client = get_daemon_client(profile.name)
    steps = []
    if workers is None:
        try:
            workers = int(client.get_numprocesses(timeout=5)["numprocesses"])
        except Exception:  # noqa: BLE001 - a daemon that does not answer: fall back to the configured default
            from aiida.manage.configuration import get_config_option

            workers = int(get_config_option("daemon.default_workers"))
    if client.is_daemon_running:
        try:
            result = _verdi(profile.name, "daemon", "stop", timeout=stop_timeout)
            steps.append("`verdi daemon stop`" + ("" if result.returncode == 0 else f" (exit {result.returncode})"))
        except subprocess.TimeoutExpired:
            steps.append(f"`verdi daemon stop` hung for {stop_timeout:.0f} s: daemon killed")
        pid = client.get_daemon_pid()
        if pid and psutil.pid_exists(pid):  # whatever survived the stop
            arbiter = psutil.Process(pid)
            for process in [*arbiter.children(recursive=True), arbiter]:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs([arbiter], timeout=10)
        Path(client.circus_pid_file).unlink(missing_ok=True)  # else `verdi process repair` refuses to run
    from aiida.manage import get_manager

    # `verdi process repair --force` terminates every other connection of the profile: close ours first
    # (the next query opens a fresh one).
    get_manager().reset_profile_storage()
    result = _verdi(profile.name, "process", "repair", "--force", timeout=300)
    revived = re.findall(r"Revived process `(\d+)`", result.stdout + result.stderr)
    steps.append(f"`verdi process repair --force`: revived {len(revived)} process(es)"
                 + (f" {revived}" if revived else "") + ("" if result.returncode == 0 else
                                                          f" (exit {result.returncode}: {result.stderr[-300:]})"))
    result = _verdi(profile.name, "daemon", "start", str(workers), timeout=180)
    if result.returncode:
        raise RuntimeError(f"`verdi daemon start {workers}` failed: {result.stdout[-500:]} {result.stderr[-500:]}")
    steps.append(f"`verdi daemon start {workers}`")
    time.sleep(1.0)
    return steps


def broker_summary(profile, rabbitmq_node: str | None = None) -> tuple[str, list[str]]:
    """One line on the broker (version, consumer timeout) and the recipe when it needs changing
    (``aiida-battgen setup --postgres`` prints both)."""
    report = check_broker(profile, rabbitmq_node=rabbitmq_node)
    timeout = ("none (undefined)" if report.consumer_timeout_ms is None else f"{report.consumer_timeout_ms} ms") \
        if report.timeout_known else "unknown"
    line = f"broker: {report.backend} version {report.version or 'unknown'}, consumer_timeout {timeout}"
    return line, consumer_timeout_recipe(report)
