"""A daemon on private services without SLURM: one private PostgreSQL, one or more private RabbitMQ nodes
(each with its own rabbitmq.conf / advanced.config), one ``core.psql_dos`` profile per broker in a temporary
AIIDA_PATH. Used by the consumer-timeout and health-check tests; everything AiiDA runs in subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from faults.cluster import BIN, REPO, PrivatePostgres, PrivateRabbitMQ, ServicesUnavailable

BROKER_DRIVER = Path(__file__).with_name("broker_driver.py")


class PrivateServices:
    """Private PostgreSQL + named RabbitMQ nodes + one profile per node; ``teardown`` removes everything."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise ServicesUnavailable("private PostgreSQL/RabbitMQ instances are started as root")
        self.root = Path(tempfile.mkdtemp(prefix="battgen-services-"))
        os.chmod(self.root, 0o755)
        self.env = {**os.environ, "AIIDA_PATH": str(self.root / "aiida"), "PATH": f"{BIN}:{os.environ['PATH']}",
                    "OMP_NUM_THREADS": "1"}
        self.postgres: PrivatePostgres | None = None
        self.brokers: dict[str, PrivateRabbitMQ] = {}
        self.profiles: dict[str, str] = {}

    def start_postgres(self) -> None:
        self.postgres = PrivatePostgres(self.root / "postgres")
        self.postgres.start()

    def add_broker(self, key: str, extra_conf: str = "", advanced_config: str | None = None) -> PrivateRabbitMQ:
        broker = PrivateRabbitMQ(self.root / f"rabbitmq-{key}", extra_conf=extra_conf, advanced_config=advanced_config)
        broker.start()
        self.brokers[key] = broker
        return broker

    def add_profile(self, key: str) -> str:
        """A psql_dos profile on the private PostgreSQL and broker ``key``, with localhost and the battgen code."""
        name = f"battgen-{key}-{uuid.uuid4().hex[:6]}"
        self.driver("create-profile", name, {"pg_port": self.postgres.port, "rmq_port": self.brokers[key].port},
                    timeout=300)
        self.profiles[key] = name
        return name

    # --- commands ---------------------------------------------------------------------------------------
    def driver(self, command: str, profile: str, spec: dict | None = None, timeout: float = 300) -> dict:
        result = subprocess.run([sys.executable, str(BROKER_DRIVER), command, "--profile", profile,
                                 json.dumps(spec or {})], capture_output=True, text=True, env=self.env,
                                timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"driver {command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def run(self, *command: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(c) for c in command], capture_output=True, text=True, env={**self.env, **(env or {})},
                              timeout=timeout, cwd=self.root)

    def verdi(self, profile: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return self.run(BIN / "verdi", "-p", profile, *args, timeout=timeout)

    @staticmethod
    def battgen_executable() -> Path:
        return BIN / "aiida-battgen"

    def battgen(self, profile: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.run(BIN / "aiida-battgen", "-p", profile, *args, timeout=timeout)

    def describe(self, profile: str, pk: int) -> dict:
        return self.driver("describe", profile, {"pk": pk})

    def wait_until(self, profile: str, pk: int, predicate, timeout: float, interval: float = 2.0) -> tuple[dict, bool]:
        """Poll until ``predicate(description)`` or the process terminates; (last description, predicate met)."""
        deadline = time.monotonic() + timeout
        while True:
            description = self.describe(profile, pk)
            if predicate(description):
                return description, True
            if description["terminated"] or time.monotonic() > deadline:
                return description, False
            time.sleep(interval)

    def daemon_log(self, profile: str) -> str:
        path = self.root / "aiida" / ".aiida" / "daemon" / "log" / f"aiida-{profile}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def teardown(self) -> None:
        for profile in self.profiles.values():
            try:
                self.verdi(profile, "daemon", "stop", timeout=60)
            except subprocess.TimeoutExpired:
                pass
            self._kill_daemon(profile)
        for service in [*self.brokers.values(), self.postgres]:
            if service is not None:
                try:
                    service.stop()
                except Exception:  # noqa: BLE001 - best effort
                    pass
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_daemon(self, profile: str) -> None:
        import psutil

        pid_file = self.root / "aiida" / ".aiida" / "daemon" / f"circus-{profile}.pid"
        try:
            arbiter = psutil.Process(int(pid_file.read_text().strip()))
            for process in [*arbiter.children(recursive=True), arbiter]:
                process.kill()
        except (OSError, ValueError, psutil.NoSuchProcess):
            pass


__all__ = ["PrivateServices", "ServicesUnavailable", "REPO"]
