"""benchmarks/daemon_load.py works: 3 discoveries + 3 baseline work chains through a PostgreSQL + RabbitMQ daemon.

The benchmark sets AIIDA_PATH before AiiDA is imported, so it runs in its own process, exactly as a user runs it.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "daemon_load.py"
LAST_LINE = re.compile(r"^processes=(\d+) seconds=([\d.]+) per_hour=(\d+) failed=(\d+)( \w+=\S+)*$")


@pytest.mark.daemon
@pytest.mark.slow
def test_daemon_load_benchmark_runs(require_postgres_rabbitmq):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--discoveries", "3", "--baseline", "3", "--workers", "2", "--timeout", "600"],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    match = LAST_LINE.match(last)
    assert match, last
    fields = dict(item.split("=", 1) for item in last.split())
    # 3 discoveries of ~17 processes each (generation, 4 screens, 2 relaxations, hull, shortlist ...), none failed.
    assert int(fields["processes"]) >= 3 * 12 and int(fields["failed"]) == 0, last
    assert fields["discoveries_ok"] == "3" and fields["complete"] == "true", last
    assert int(fields["baseline_processes"]) == 9 and fields["baseline_failed"] == "0", last
    assert fields["slowest_step"] == "MlipRelaxCalculation", last  # a CHGNet job, not AiiDA bookkeeping
    assert "MlipRelaxCalculation" in result.stdout and "DiscoveryWorkChain" in result.stdout
