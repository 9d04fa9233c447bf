"""The test suite never changes the machine (issue 17, item 0): no package installs, no servers set up from
scratch, no SSH keys or logins. Provisioning is `.ci/run`'s job (`.ci/system-packages.sh`, `.ci/slurm.sh`);
where it has not run, the tests that need it skip with the reason."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from faults import cluster as cluster_module

TESTS = Path(__file__).resolve().parents[1]
# What provisioning looks like in Python source: running a .ci script, apt, pip, ssh-keygen, writing SSH logins.
PROVISIONING = re.compile(r"""["']\.ci["']\s*/\s*["'][\w-]+\.sh|\.ci/[\w-]+\.sh["']|\[\s*["'](apt-get|apt|pip|ssh-keygen)["']|"""
                          r"""["']-m["'],\s*["']pip["']|authorized_keys""")


def test_no_test_file_provisions_the_machine():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PROVISIONING.search(line):
                offenders.append(f"{path.relative_to(TESTS)}:{number}: {line.strip()}")
    assert not offenders, "tests that provision the machine (move it to .ci/run):\n" + "\n".join(offenders)


def test_the_pattern_catches_what_the_suite_used_to_do():
    # The line that ran .ci/slurm.sh from pytest before issue 17, and other forms of the same.
    for line in ('subprocess.run(["bash", str(REPO / ".ci" / "slurm.sh")], capture_output=True)',
                 'subprocess.run(["apt-get", "install", "-y", "slurm-wlm"])',
                 'subprocess.run([sys.executable, "-m", "pip", "install", "x"])',
                 'Path("~/.ssh/authorized_keys").write_text(key)'):
        assert PROVISIONING.search(line), line
    assert not PROVISIONING.search('return "pw.x not found (apt-get install quantum-espresso)"')
    assert not PROVISIONING.search('assert command in (ROOT / ".ci" / "run").read_text()')


def test_missing_slurm_skips_with_the_reason_and_runs_nothing(tmp_path, monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"the SLURM check ran a command: {args}")

    monkeypatch.delenv("BATTGEN_TESTS_WITHOUT", raising=False)  # CI's first run hides SLURM on purpose
    monkeypatch.setattr(cluster_module, "SLURM_ENV_FILE", tmp_path / "slurm-ssh.env")
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    with pytest.raises(cluster_module.ServicesUnavailable, match=r"slurm-ssh.env missing; CI provisions"):
        cluster_module.read_slurm_env()


def test_a_dead_slurm_is_reported_not_repaired(tmp_path, monkeypatch):
    env_file = tmp_path / "slurm-ssh.env"
    env_file.write_text("BATTGEN_SSH_KEY=/nonexistent\n")
    commands = []
    monkeypatch.delenv("BATTGEN_TESTS_WITHOUT", raising=False)

    def fake_sinfo(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="slurm_load_partitions: Unable to contact")

    monkeypatch.setattr(cluster_module, "SLURM_ENV_FILE", env_file)
    monkeypatch.setattr(subprocess, "run", fake_sinfo)
    with pytest.raises(cluster_module.ServicesUnavailable, match="not usable.*Unable to contact"):
        cluster_module.read_slurm_env()
    assert commands == [["sinfo", "-h", "-o", "%T"]]  # asked, never re-provisioned


def test_ci_can_hide_slurm_and_qe(monkeypatch):
    """`.ci/run` proves the README's test command on a machine without QE/SLURM even after it provisioned them."""
    import importlib.util

    monkeypatch.setenv("BATTGEN_TESTS_WITHOUT", "qe,slurm")
    with pytest.raises(cluster_module.ServicesUnavailable, match="hidden by BATTGEN_TESTS_WITHOUT"):
        cluster_module.read_slurm_env()
    spec = importlib.util.spec_from_file_location("dft_fixtures", TESTS / "aiida" / "dft" / "battgen_dft_fixtures.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    assert "hidden by BATTGEN_TESTS_WITHOUT" in fixtures.qe_available()
