"""Fixtures of the DFT tests: Debian's pw.x as a localhost code and its PBE UPFs as an aiida-pseudo family."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from aiida_battgen.tools.dft import DEBIAN_PSEUDO_DIR, DEFAULT_PW_EXECUTABLE

QE_FAMILY = "battgen-test-debian-pbe"


def qe_available() -> str | None:
    """Why QE tests cannot run here, or None."""
    if "qe" in os.environ.get("BATTGEN_TESTS_WITHOUT", "").split(","):
        return "Quantum ESPRESSO hidden by BATTGEN_TESTS_WITHOUT (the no-QE run of .ci/run)"
    if not Path(DEFAULT_PW_EXECUTABLE).is_file() and shutil.which("pw.x") is None:
        return "pw.x not found (apt-get install quantum-espresso)"
    if not (DEBIAN_PSEUDO_DIR / "Si.pbe-rrkj.UPF").is_file():
        return f"Debian pseudopotentials missing in {DEBIAN_PSEUDO_DIR} (apt-get install quantum-espresso-data)"
    return None


@pytest.fixture
def pw_code(aiida_localhost):
    reason = qe_available()
    if reason:
        pytest.skip(reason)
    from aiida_battgen.tools.dft import pw_code as make_code

    executable = DEFAULT_PW_EXECUTABLE if Path(DEFAULT_PW_EXECUTABLE).is_file() else shutil.which("pw.x")
    return make_code(aiida_localhost, executable=executable)


@pytest.fixture
def qe_family(aiida_profile):
    from aiida_battgen.tools.dft import install_debian_qe_family

    return install_debian_qe_family(QE_FAMILY)


# Small but sane settings for tiny cells in CI: cutoffs of the family, coarse k-points, one relax loop.
QE_FAST = {"quantumespresso": {"kpoints_distance": 0.5, "meta_convergence": False}}
SERIAL = {"resources": {"num_machines": 1, "num_mpiprocs_per_machine": 1}, "withmpi": False,
          "max_wallclock_seconds": 600}
