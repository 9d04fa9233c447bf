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


# --- Shared AiiDA fixtures (the aiida-quantumespresso conftest pattern) -------------------------------------
@pytest.fixture
def generate_calc_job(aiida_profile, tmp_path):
    """``prepare_for_submission`` of the CalcJob ``entry_point_name`` on ``inputs``, in a sandbox folder: returns
    ``(folder, calcinfo)`` without a scheduler, a transport or the command."""

    def _generate(entry_point_name: str, inputs: dict):
        from aiida.common.folders import Folder
        from aiida.engine.utils import instantiate_process
        from aiida.manage import get_manager
        from aiida.plugins import CalculationFactory

        process = instantiate_process(get_manager().get_runner(), CalculationFactory(entry_point_name), **inputs)
        (tmp_path / "sandbox").mkdir(exist_ok=True)
        folder = Folder(str(tmp_path / "sandbox"))
        return folder, process.prepare_for_submission(folder)

    return _generate


@pytest.fixture
def generate_calc_job_node(aiida_profile, aiida_localhost):
    """A stored, finished CalcJobNode of ``entry_point_name`` standing in for a child calculation: ``exit_code``
    (an ``ExitCode``, or None for success), ``outputs`` (link label -> unstored data node) and, with
    ``remote_path``, a ``remote_folder`` output; ``options`` are set as the node's metadata options. The node is
    sealed."""

    def _generate(entry_point_name: str, exit_code=None, outputs: dict | None = None, remote_path: str | None = None,
                  options: dict | None = None):
        from aiida import orm
        from aiida.common import LinkType
        from aiida.engine import ProcessState
        from aiida.plugins import CalculationFactory

        process_class = CalculationFactory(entry_point_name)
        node = orm.CalcJobNode(computer=aiida_localhost, process_type=f"aiida.calculations:{entry_point_name}")
        node.set_process_label(process_class.__name__)
        node.set_process_state(ProcessState.FINISHED)
        node.set_exit_status(exit_code.status if exit_code else 0)
        node.set_exit_message(exit_code.message if exit_code else None)
        for key, value in (options or {}).items():
            node.set_option(key, value)
        node.store()
        outputs = dict(outputs or {})
        if remote_path is not None:
            outputs["remote_folder"] = orm.RemoteData(computer=aiida_localhost, remote_path=remote_path)
        for label, output in outputs.items():
            output.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label=label)
            output.store()
        node.seal()  # finished and complete, as the engine leaves it
        return node

    return _generate


@pytest.fixture
def generate_workchain(aiida_profile):
    """An instantiated (not running) work chain of ``entry_point`` (an entry point name or the class) on
    ``inputs``; with ``setup`` its ``setup`` step has run, so handlers can be called on fake child nodes."""

    def _generate(entry_point, inputs: dict, setup: bool = True):
        from aiida.engine.utils import instantiate_process
        from aiida.manage import get_manager
        from aiida.plugins import WorkflowFactory

        process_class = WorkflowFactory(entry_point) if isinstance(entry_point, str) else entry_point
        process = instantiate_process(get_manager().get_runner(), process_class, **inputs)
        if setup:
            process.setup()
        return process

    return _generate
