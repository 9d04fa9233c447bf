"""Progress of battgen CalcJobs as users see it: read ``battgen-progress.json`` (written by the ``battgen``
CLI, :mod:`battgen.progress`) from a running job's remote folder, a finished job's retrieved files, or the
last state the ``battgen.progress`` monitor saw (node extra ``battgen_progress``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from aiida import orm

from battgen.progress import PROGRESS_FILENAME, format_progress

PROGRESS_EXTRA = "battgen_progress"
# Seconds between two looks of the monitor at the remote file (each look is one file copy over the transport).
DEFAULT_MONITOR_INTERVAL_S = 30


def progress_monitor_dict(interval_s: int = DEFAULT_MONITOR_INTERVAL_S) -> orm.Dict:
    """The ``monitors.progress`` input that reports a CalcJob's progress into its process report."""
    return orm.Dict({"entry_point": "battgen.progress", "minimum_poll_interval": int(interval_s)})


def add_progress_monitor(inputs: dict[str, Any], interval_s: int = DEFAULT_MONITOR_INTERVAL_S) -> None:
    """Give the CalcJob ``inputs`` (a restart work chain's ``ctx.inputs``) the ``monitors.progress`` input,
    unless the caller set one (a ``monitors.progress`` given by the user wins)."""
    monitors = dict(inputs.get("monitors", {}))
    if "progress" not in monitors:
        monitors["progress"] = progress_monitor_dict(interval_s)
        inputs["monitors"] = monitors


def _parse(text: str) -> dict[str, Any] | None:
    try:
        state = json.loads(text)
    except ValueError:
        return None
    return state if isinstance(state, dict) and "done" in state else None


def read_remote_progress(node: orm.CalcJobNode, transport) -> dict[str, Any] | None:
    """The progress file in the job's remote working directory (None when absent or unreadable)."""
    workdir = node.get_remote_workdir()
    if not workdir:
        return None
    path = f"{workdir}/{PROGRESS_FILENAME}"
    if not transport.isfile(path):
        return None
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / PROGRESS_FILENAME
        transport.getfile(path, str(local))
        return _parse(local.read_text(encoding="utf-8"))


def read_retrieved_progress(node: orm.CalcJobNode) -> dict[str, Any] | None:
    """The progress file among the retrieved files of a finished job."""
    retrieved = node.outputs.retrieved if "retrieved" in node.outputs else None
    if retrieved is None or PROGRESS_FILENAME not in retrieved.base.repository.list_object_names():
        return None
    return _parse(retrieved.base.repository.get_object_content(PROGRESS_FILENAME, mode="r"))


def calcjob_progress(node: orm.CalcJobNode, live: bool = True) -> tuple[dict[str, Any] | None, str]:
    """The latest known progress of ``node`` and where it came from (``remote`` / ``retrieved`` / ``monitor`` / ``none``).

    ``live``: for a job that has not terminated, open a transport and read the remote file.
    """
    if live and not node.is_terminated and node.get_remote_workdir():
        try:
            with node.get_authinfo().get_transport() as transport:
                state = read_remote_progress(node, transport)
            if state is not None:
                return state, "remote"
        except Exception:  # noqa: BLE001 - an unreachable computer must not break a status query
            pass
    state = read_retrieved_progress(node)
    if state is not None:
        return state, "retrieved"
    state = node.base.extras.get(PROGRESS_EXTRA, None)
    if state:
        return state, "monitor"
    return None, "none"


def workflow_progress(node: orm.ProcessNode, live: bool = True) -> list[tuple[orm.CalcJobNode, dict[str, Any] | None, str]]:
    """Every CalcJob of ``node`` (itself, or the ones it called at any depth), oldest first, with its progress."""
    if isinstance(node, orm.CalcJobNode):
        jobs = [node]
    else:
        jobs = sorted((n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)), key=lambda n: n.ctime)
    return [(job, *calcjob_progress(job, live=live)) for job in jobs]


def call_path(node: orm.ProcessNode) -> str:
    """The call link labels from the top process down to ``node``, e.g. ``relax_candidates/iteration_01``."""
    from aiida.common.links import LinkType

    labels = []
    while True:
        link = node.base.links.get_incoming(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).first()
        if link is None:
            break
        if link.link_label != "CALL":
            labels.append(link.link_label)
        node = link.node
    return "/".join(reversed(labels))


def job_line(job: orm.CalcJobNode, state: dict[str, Any] | None, source: str) -> str:
    """``MlipRelaxCalculation<12> relax_candidates/iteration_01 [running]: relax (chgnet): 3/10 struct ... (from remote)``."""
    label = call_path(job)
    process_state = job.process_state.value if job.process_state else "created"
    head = f"{job.process_label}<{job.pk}>{' ' + label if label else ''} [{process_state}]"
    if state is None:
        return f"{head}: no progress file yet"
    return f"{head}: {format_progress(state)} (from {source})"
