"""Shared fixtures: AiiDA's own plugin fixtures (temporary SQLite profile, localhost computer), the
``battgen`` code on localhost, small structures, and the shared real-data folder."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

pytest_plugins = ["aiida.tools.pytest_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def service_up(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on host:port (PostgreSQL 5432, RabbitMQ 5672)."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def shared_data_dir() -> Path:
    return Path(os.environ.get("BATTGEN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture
def require_postgres_rabbitmq() -> None:
    """Skip, with the reason, where PostgreSQL or RabbitMQ is not running on 127.0.0.1."""
    if not (service_up(5432) and service_up(5672)):
        pytest.skip("PostgreSQL (5432) or RabbitMQ (5672) is not running on 127.0.0.1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests that need it skip with the reason when it is absent."""
    path = shared_data_dir()
    if not (path / "SOURCES.md").exists():
        pytest.skip(f"shared data not found at {path} (set BATTGEN_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def battgen_executable() -> str:
    """The installed ``battgen`` CLI (next to the running interpreter in a venv)."""
    candidate = Path(sys.executable).parent / "battgen"
    found = str(candidate) if candidate.exists() else shutil.which("battgen")
    if not found:
        pytest.fail("the battgen console script is not installed (pip install -e .)")
    return found


@pytest.fixture
def battgen_code(aiida_localhost, battgen_executable):
    """An InstalledCode running the battgen CLI on localhost (no prepend text needed)."""
    from aiida import orm

    label = "battgen-test"
    try:
        return orm.load_code(f"{label}@{aiida_localhost.label}")
    except Exception:  # noqa: BLE001 - NotExistent or MultipleObjectsError: create it
        code = orm.InstalledCode(
            label=label,
            computer=aiida_localhost,
            filepath_executable=battgen_executable,
            default_calc_job_plugin="battgen.mlip.relax",
        )
        return code.store()


@pytest.fixture
def rocksalt_licl():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.13), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture
def small_batch(rocksalt_licl):
    """Four rows: LiCl, NaCl (substituted), a strained copy of LiCl, and Si."""
    from pymatgen.core import Lattice, Structure

    from battgen.batch import StructureBatch

    nacl = rocksalt_licl.copy()
    nacl.replace_species({"Li": "Na"})
    nacl.scale_lattice(nacl.volume * 1.3)
    strained = rocksalt_licl.copy()
    strained.apply_strain(0.01)
    si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    return StructureBatch.from_structures(
        [rocksalt_licl, nacl, strained, si],
        [{"row_id": "licl"}, {"row_id": "nacl"}, {"row_id": "licl-strained"}, {"row_id": "si"}],
    )


@pytest.fixture(autouse=True)
def _restore_torch_default_dtype():
    """NequIP's ASE/global-state setup switches torch's default dtype to float64 process-wide (and other
    libraries may too); put it back after each test so later models are built in float32 as in production,
    where every battgen command runs in its own process."""
    yield
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_default_dtype() != torch.float32:
        torch.set_default_dtype(torch.float32)
