"""The discovery through a real daemon: embedded (SQLite + ZeroMQ) and PostgreSQL + RabbitMQ profiles.

Everything runs through the console scripts a user would type, in a temporary AIIDA_PATH.
"""

import csv
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent
TINY = {
    "generation": {"n": 20, "conditions": {"max_per_seed": 6}},
    "preselection": {"top_k": 2},
    "relax": {"relax": {"parameters": {"max_steps": 30, "fmax": 0.2}}},
    "shortlist": {"top_k": 2, "max_values": {"e_above_hull_eV_per_atom": 2.0}},
}


@pytest.mark.daemon
@pytest.mark.slow
@pytest.mark.parametrize("postgres", [False, True], ids=["sqlite-zeromq", "postgres-rabbitmq"])
def test_discovery_through_the_daemon(tmp_path, postgres, request):
    if postgres:
        request.getfixturevalue("require_postgres_rabbitmq")
    env = {**os.environ, "AIIDA_PATH": str(tmp_path / "aiida"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    name = f"battgen-daemon-{uuid.uuid4().hex[:8]}"

    def run(*args, timeout=600):
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)
        assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    overrides = tmp_path / "tiny.yaml"
    overrides.write_text(yaml.safe_dump(TINY))
    run("aiida-battgen", "setup", "--profile-name", name, *(["--postgres"] if postgres else []))
    try:
        run("verdi", "-p", name, "daemon", "start", "1")
        out = run("aiida-battgen", "-p", name, "demo", "--daemon", "--hosts", "LiCoO2,Li2O,Si",
                  "--overrides", str(overrides), "--output-dir", "out")
        assert "Submitted DiscoveryWorkChain" in out and "finished (exit status 0)" in out, out
        rows = list(csv.DictReader(open(tmp_path / "out" / "shortlist.csv")))
        assert 1 <= len(rows) <= 2
        lineage = run("aiida-battgen", "-p", name, "lineage", rows[0]["structure_pk"])
        assert "MlipRelaxCalculation" in lineage and "generate_substitution" in lineage
        assert "missing steps" not in lineage
        assert (tmp_path / "out" / "discovery_summary.png").stat().st_size > 10_000
    finally:
        subprocess.run(["verdi", "-p", name, "daemon", "stop"], env=env, capture_output=True, timeout=120)
        if postgres:
            from aiida_battgen.tools.profiles import PostgresSettings, drop_postgres_database

            drop_postgres_database(PostgresSettings(), f"aiida_{name}")
