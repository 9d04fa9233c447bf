"""A throwaway AiiDA profile (temporary SQLite storage) with localhost and this environment's battgen CLI."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def throwaway_battgen_code(name: str = "battgen-benchmark"):
    """Load a temporary profile ``name`` and return the stored ``battgen`` InstalledCode on localhost."""
    import aiida
    from aiida import orm
    from aiida.storage.sqlite_temp import SqliteTempBackend

    profile = SqliteTempBackend.create_profile(name, options={"runner.poll.interval": 0})
    aiida.load_profile(profile, allow_switch=True)
    computer = orm.Computer(
        label="localhost", hostname="localhost", transport_type="core.local", scheduler_type="core.direct",
        workdir=tempfile.mkdtemp(prefix=f"{name}-"),
    ).store()
    computer.configure()
    computer.set_minimum_job_poll_interval(0.0)
    return orm.InstalledCode(computer=computer, label="battgen",
                             filepath_executable=str(Path(sys.executable).parent / "battgen")).store()
