"""Test-side plumbing of the SLURM-over-SSH and fault-injection suites.

One :class:`Cluster` per pytest process (:func:`get_cluster`): a private PostgreSQL cluster and a private
RabbitMQ node on free ports (so restarting them never disturbs anyone else's services on the machine), a
temporary AIIDA_PATH with a ``core.psql_dos`` + RabbitMQ profile, the ``slurm`` computer (core.ssh +
core.slurm on localhost, set up beforehand by ``.ci/slurm.sh``, never by the tests) and a daemon. Everything AiiDA runs in subprocesses
(``driver.py``, ``verdi``), so the pytest process never switches profile.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
DRIVER = Path(__file__).with_name("driver.py")
BIN = Path(sys.executable).parent
SLURM_ENV_FILE = Path(os.environ.get("BATTGEN_SLURM_STATE_DIR", "/var/lib/battgen-ci")) / "slurm-ssh.env"
PG_BIN = Path("/usr/lib/postgresql")


class ServicesUnavailable(RuntimeError):
    """Why the suite cannot run here (the tests skip with this message)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise ServicesUnavailable(f"{what} did not happen within {timeout:.0f} s")


def read_slurm_env() -> dict[str, str]:
    """Settings written by ``.ci/slurm.sh``. The tests never run it (it installs packages, starts daemons and
    opens an SSH login): CI runs it before the cluster tests; elsewhere they skip with this reason.
    ``BATTGEN_TESTS_WITHOUT=slurm`` hides a SLURM that is there (the no-SLURM run of ``.ci/run``)."""
    if "slurm" in os.environ.get("BATTGEN_TESTS_WITHOUT", "").split(","):
        raise ServicesUnavailable("SLURM hidden by BATTGEN_TESTS_WITHOUT (the no-SLURM run of .ci/run)")
    if not SLURM_ENV_FILE.exists():
        raise ServicesUnavailable(f"no SLURM + sshd set up on this machine ({SLURM_ENV_FILE} missing; CI provisions "
                                  "them with `bash .ci/slurm.sh` as root, which installs packages and opens a "
                                  "root SSH login on localhost)")
    settings = dict(line.split("=", 1) for line in SLURM_ENV_FILE.read_text().split() if "=" in line)
    try:
        probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServicesUnavailable(f"sinfo does not run: {exc} (re-run `bash .ci/slurm.sh` as root)") from exc
    if probe.returncode != 0 or not any(s.startswith(("idle", "mix", "alloc")) for s in probe.stdout.split()):
        raise ServicesUnavailable(f"the SLURM node is not usable: sinfo says {probe.stdout.strip() or probe.stderr.strip()!r} "
                                  "(re-run `bash .ci/slurm.sh` as root)")
    return settings


class PrivatePostgres:
    """A throw-away PostgreSQL cluster (trust auth) in ``root`` on a free port, run as the postgres user."""

    def __init__(self, root: Path) -> None:
        versions = sorted(PG_BIN.glob("*/bin/initdb")) if PG_BIN.exists() else []
        if not versions:
            raise ServicesUnavailable("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.bin = versions[-1].parent
        self.root, self.port = root, _free_port()
        self.data = root / "data"

    def _as_postgres(self, *args: str) -> subprocess.CompletedProcess:
        command = [str(a) for a in args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        if not self.data.exists():
            result = self._as_postgres(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                                       "-E", "UTF8", "--locale=C.UTF-8")
            if result.returncode:
                raise ServicesUnavailable(f"initdb failed: {result.stderr[-500:]}")
        result = self._as_postgres(
            self.bin / "pg_ctl", "-D", self.data, "-l", self.root / "log", "-w", "-t", "60", "start", "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200")
        if result.returncode:
            raise ServicesUnavailable(f"PostgreSQL does not start: {result.stderr[-500:]}")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()


class PrivateRabbitMQ:
    """A RabbitMQ node of its own (name, ports, data, no plugins) next to the machine's one."""

    def __init__(self, root: Path, extra_conf: str = "", advanced_config: str | None = None) -> None:
        """``extra_conf``: lines added to its rabbitmq.conf; ``advanced_config``: its advanced.config (Erlang terms)."""
        if not shutil.which("rabbitmq-server"):
            raise ServicesUnavailable("rabbitmq-server is not installed")
        self.extra_conf, self.advanced_config = extra_conf, advanced_config
        self.root, self.port = root, _free_port()
        self.name = f"battgen{uuid.uuid4().hex[:6]}@localhost"
        self.pid_file = root / "beam.pid"

    def start(self) -> None:
        (self.root / "mnesia").mkdir(parents=True, exist_ok=True)
        (self.root / "log").mkdir(exist_ok=True)
        (self.root / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n{self.extra_conf}")
        # always a private advanced.config: the default path (/etc/rabbitmq/advanced.config, which .ci/services.sh
        # writes) would otherwise override this node's rabbitmq.conf
        (self.root / "advanced.config").write_text(self.advanced_config if self.advanced_config is not None else "[].\n")
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq-env.conf").write_text("")
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.root)], check=False)
        env = {**os.environ, "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
               "RABBITMQ_NODENAME": self.name, "RABBITMQ_NODE_PORT": str(self.port),
               "RABBITMQ_DIST_PORT": str(_free_port()), "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
               "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
               "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"), "RABBITMQ_LOG_BASE": str(self.root / "log"),
               "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
               "RABBITMQ_PID_FILE": str(self.pid_file), "ERL_EPMD_ADDRESS": "127.0.0.1"}
        with open(self.root / "server.out", "ab") as out:
            subprocess.Popen(["rabbitmq-server"], env=env, stdout=out, stderr=out, start_new_session=True)
        _wait_for(lambda: port_open(self.port) and self.pid_file.exists(), 90, f"RabbitMQ on port {self.port}")

    def stop(self) -> None:
        if not self.pid_file.exists():
            return
        pid = int(self.pid_file.read_text().strip())
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        _wait_for(lambda: not Path(f"/proc/{pid}").exists(), 60, "RabbitMQ shutdown")

    def restart(self) -> None:
        self.stop()
        self.start()


class Cluster:
    """Private services + profile + SLURM computer + daemon; torn down at interpreter exit."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="battgen-cluster-"))
        os.chmod(self.root, 0o755)
        self.profile = f"battgen-slurm-{uuid.uuid4().hex[:6]}"
        self.env = {**os.environ, "AIIDA_PATH": str(self.root / "aiida"), "PATH": f"{BIN}:{os.environ['PATH']}",
                    "OMP_NUM_THREADS": "1"}
        self.postgres = self.rabbitmq = None
        self.slurm_env: dict[str, str] = {}
        self.workdir = self.root / "slurm-work"
        self.setup_seconds = 0.0

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        started = time.monotonic()
        self.slurm_env = read_slurm_env()
        self.postgres = PrivatePostgres(self.root / "postgres")
        self.postgres.start()
        self.rabbitmq = PrivateRabbitMQ(self.root / "rabbitmq")
        self.rabbitmq.start()
        self.driver("create-profile", {"pg_port": self.postgres.port, "rmq_port": self.rabbitmq.port}, timeout=300)
        self.workdir.mkdir()
        self.slurm = self.driver("setup-slurm", {
            "ssh_port": self.slurm_env.get("BATTGEN_SSH_PORT", "22"), "ssh_key": self.slurm_env["BATTGEN_SSH_KEY"],
            "ssh_user": self.slurm_env.get("BATTGEN_SSH_USER", "root"), "host": self.slurm_env.get("BATTGEN_SSH_HOST"),
            "workdir": str(self.workdir)}, timeout=300)
        self.start_daemon()
        self.setup_seconds = time.monotonic() - started

    def teardown(self) -> None:
        try:
            self.verdi("daemon", "stop", check=False, timeout=120)
        except Exception:  # noqa: BLE001 - best effort, then make sure nothing of ours keeps running
            pass
        self.kill_daemon(check=False)
        self.cancel_jobs()
        for service in (self.rabbitmq, self.postgres):
            if service is not None:
                try:
                    service.stop()
                except Exception:  # noqa: BLE001
                    pass
        shutil.rmtree(self.root, ignore_errors=True)

    # --- commands -----------------------------------------------------------------------------------
    def driver(self, command: str, spec: dict | None = None, timeout: float = 600) -> dict:
        command_line = [sys.executable, str(DRIVER), command, "--profile", self.profile, json.dumps(spec or {})]
        result = subprocess.run(command_line, capture_output=True, text=True, env=self.env, timeout=timeout,
                                cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"driver {command} {spec} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def verdi(self, *args: str, check: bool = True, timeout: float = 180) -> str:
        result = subprocess.run(["verdi", "-p", self.profile, *args], capture_output=True, text=True, env=self.env,
                                timeout=timeout, cwd=self.root)
        if check and result.returncode != 0:
            raise RuntimeError(f"verdi {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return result.stdout + result.stderr

    def submit(self, kind: str, **spec) -> int:
        return self.driver("submit", {"kind": kind, **spec})["pk"]

    def wait(self, pk: int, timeout: float) -> dict:
        return self.driver("wait", {"pk": pk, "timeout": timeout}, timeout=timeout + 120)

    def describe(self, pk: int) -> dict:
        return self.driver("describe", {"pk": pk})

    def wait_until(self, pk: int, predicate, timeout: float, what: str, interval: float = 1.0) -> dict:
        """Poll ``describe(pk)`` until ``predicate(description)``; fails with the last state after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            description = self.describe(pk)
            if predicate(description):
                return description
            if description["terminated"] or time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {timeout:.0f} s: {json.dumps(description)[:3000]}")
            time.sleep(interval)

    # --- daemon -----------------------------------------------------------------------------------
    def start_daemon(self, workers: int = 2) -> None:
        self.verdi("daemon", "start", str(workers), timeout=180)

    def restart_daemon(self, workers: int = 2, repair: bool = False) -> str:
        """``verdi daemon stop`` + start; when the stop times out (workers hung), kill the daemon instead.
        With ``repair``, ``verdi process repair --force`` in between: it re-creates the broker tasks of active
        processes that lost theirs (and closes this profile's leftover database connections: nothing else of
        the test may be connected then). Returns what was done."""
        how = "`verdi daemon stop`"
        try:
            self.verdi("daemon", "stop", timeout=90)
        except (RuntimeError, subprocess.TimeoutExpired):
            how = "`verdi daemon stop` timed out, daemon killed"
        self.kill_daemon(check=False)  # whatever survived the stop
        if repair:
            out = self.verdi("process", "repair", "--force", timeout=180)
            revived = [line.split("`")[1] for line in out.splitlines() if "Revived process" in line]
            how += f", `verdi process repair` revived {len(revived)} process(es) without a broker task"
        self.start_daemon(workers)
        return how

    def restart_daemon_around(self, action) -> str:
        """Stop the daemon (killing it if the stop hangs), run ``action`` (e.g. start the broker), start it."""
        how = "daemon stopped"
        try:
            self.verdi("daemon", "stop", timeout=90)
        except (RuntimeError, subprocess.TimeoutExpired):
            how = "daemon stop timed out: killed"
        self.kill_daemon(check=False)
        action()
        self.start_daemon()
        return how

    def daemon_pids(self) -> tuple[int | None, list[int]]:
        """(circus arbiter pid, worker pids) of this profile's daemon."""
        import psutil

        pid_file = self._pid_file()
        if not pid_file.exists():
            return None, []
        try:
            arbiter = psutil.Process(int(pid_file.read_text().strip()))
            children = arbiter.children(recursive=True)
            self._daemon_children = [child.pid for child in children]  # workers, circus stats
            workers = [child.pid for child in children if "worker" in " ".join(child.cmdline())]
        except (psutil.NoSuchProcess, ValueError):
            return None, []
        return arbiter.pid, workers

    def kill_daemon(self, check: bool = True) -> list[int]:
        """SIGKILL the workers, then the circus arbiter (so nothing respawns them): a crashed daemon."""
        arbiter, workers = self.daemon_pids()
        if check:
            assert workers, "no daemon worker to kill"
        others = [pid for pid in getattr(self, "_daemon_children", []) if pid not in workers]
        for pid in [*workers, *([arbiter] if arbiter else []), *others]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if arbiter:  # a crashed daemon leaves its PID file; `verdi process repair` would refuse to run
            self._pid_file().unlink(missing_ok=True)
        return workers

    def _pid_file(self) -> Path:
        return self.root / "aiida" / ".aiida" / "daemon" / f"circus-{self.profile}.pid"

    def cancel_jobs(self) -> None:
        """scancel the SLURM jobs that run in this cluster's work directory."""
        if not shutil.which("squeue"):  # no SLURM here: no job of ours either
            return
        result = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True, timeout=30)
        for line in result.stdout.splitlines():
            job_id, _, workdir = line.partition(" ")
            if workdir.startswith(str(self.workdir)):
                subprocess.run(["scancel", job_id], capture_output=True, timeout=30)


_CLUSTER: Cluster | None = None
_FAILURE: str | None = None


def get_cluster() -> Cluster:
    """The process-wide cluster, started on first use; raises ServicesUnavailable with the reason."""
    global _CLUSTER, _FAILURE
    if _FAILURE:
        raise ServicesUnavailable(_FAILURE)
    if _CLUSTER is None:
        if os.geteuid() != 0:
            _FAILURE = "the SLURM/fault suites start private PostgreSQL/RabbitMQ and daemons as root"
            raise ServicesUnavailable(_FAILURE)
        cluster = Cluster()
        try:
            cluster.start()
        except ServicesUnavailable as exc:
            _FAILURE = str(exc)
            cluster.teardown()  # whatever of it did start
            raise
        except BaseException:
            cluster.teardown()
            raise
        atexit.register(cluster.teardown)
        _CLUSTER = cluster
    return _CLUSTER
