"""`aiida-battgen setup`: embedded and PostgreSQL profiles, idempotent, clear errors when services are down.

Each test runs the real console script in a subprocess with its own AIIDA_PATH, so the user's and the
test session's AiiDA configuration are never touched.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run_cli(args, aiida_path, check=True):
    env = {**os.environ, "AIIDA_PATH": str(aiida_path), "PATH": f"{BIN}:{os.environ['PATH']}"}
    result = subprocess.run([str(BIN / "aiida-battgen"), *args], capture_output=True, text=True, env=env, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"aiida-battgen {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_embedded_profile_is_created_once(tmp_path):
    first = run_cli(["setup"], tmp_path)
    assert "Created profile `battgen` (core.sqlite_dos, broker core.zeromq)" in first.stdout
    second = run_cli(["setup"], tmp_path)
    assert "Reusing profile `battgen`" in second.stdout
    assert "code `battgen@localhost` ready" in second.stdout
    env = {**os.environ, "AIIDA_PATH": str(tmp_path)}
    codes = subprocess.run([str(BIN / "verdi"), "-p", "battgen", "code", "list", "-r"], capture_output=True,
                           text=True, env=env, check=True).stdout
    assert codes.count("battgen@localhost") == 1


def test_unreachable_postgres_gives_clear_message_and_no_profile(tmp_path):
    result = run_cli(["setup", "--postgres", "--profile-name", "nope", "--db-port", "1"], tmp_path, check=False)
    assert result.returncode != 0
    assert "PostgreSQL is not reachable at 127.0.0.1:1" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    listing = subprocess.run([str(BIN / "verdi"), "profile", "list"], capture_output=True, text=True,
                             env={**os.environ, "AIIDA_PATH": str(tmp_path)})
    assert "nope" not in listing.stdout


def test_unreachable_rabbitmq_gives_clear_message(tmp_path):
    result = run_cli(["setup", "--postgres", "--profile-name", "nobroker", "--broker-port", "1"], tmp_path, check=False)
    assert result.returncode != 0 and "RabbitMQ is not reachable" in result.stderr + result.stdout


@pytest.mark.daemon
def test_postgres_profile(tmp_path, require_postgres_rabbitmq):
    name = f"battgen-test-{uuid.uuid4().hex[:8]}"
    try:
        first = run_cli(["setup", "--postgres", "--profile-name", name], tmp_path)
        assert f"Created profile `{name}` (core.psql_dos, broker core.rabbitmq)" in first.stdout
        assert "Reusing" in run_cli(["setup", "--postgres", "--profile-name", name], tmp_path).stdout
    finally:
        from aiida_battgen.tools.profiles import PostgresSettings, drop_postgres_database

        drop_postgres_database(PostgresSettings(), f"aiida_{name}")
