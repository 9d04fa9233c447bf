"""CalcJob monitors shared by the battgen CalcJobs (``aiida.calculations.monitors`` entry points)."""

from __future__ import annotations

from aiida import orm

from aiida_battgen.tools.progress import PROGRESS_EXTRA, read_remote_progress
from battgen.progress import format_progress


def progress_monitor(node: orm.CalcJobNode, transport) -> None:
    """CalcJob monitor ``battgen.progress``: put the job's progress into its process report when it moved.

    Never stops the job (returns None). The last state reported is kept in the node extra
    ``battgen_progress`` so ``aiida-battgen status`` can show it without a transport.
    """
    try:
        state = read_remote_progress(node, transport)
    except OSError:
        return None  # the computer is briefly unreachable: look again at the next poll
    if state is not None:
        report_progress(node, state)
    return None


def report_progress(node: orm.CalcJobNode, state: dict) -> bool:
    """Report ``state`` into the process report of ``node`` if it moved since the last report; True if it did."""
    previous = node.base.extras.get(PROGRESS_EXTRA, None) or {}
    if all(state.get(key) == previous.get(key) for key in ("stage", "done", "status")):
        return False
    node.base.extras.set(PROGRESS_EXTRA, state)
    node.logger.report(f"progress: {format_progress(state)}")
    return True
