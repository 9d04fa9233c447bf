"""``aiida-battgen status PROCESS``: the progress of every battgen job of a process, running or finished."""

from __future__ import annotations

import click
from aiida.cmdline.utils import echo


def _ensure_profile(ctx) -> None:
    """The root group's ``-p`` (or AiiDA's default) profile is loaded; a clear message when there is none."""
    from aiida.manage import get_manager

    if get_manager().get_profile() is not None:
        return
    from aiida_battgen.cli import _require_profile

    _require_profile(ctx)


@click.command("status")
@click.argument("process")
@click.option("--no-live", is_flag=True,
              help="Do not open a transport to read running jobs' remote progress files (use what the monitor saw).")
@click.pass_context
def cmd_status(ctx, process, no_live):
    """Progress of PROCESS (pk, UUID or label): rows done / total, current row and ETA of each of its jobs.

    Running jobs are read live from their remote folder; finished ones from their retrieved files.
    """
    from aiida.cmdline.params.types import ProcessParamType

    from aiida_battgen.tools.progress import job_line, workflow_progress

    _ensure_profile(ctx)
    node = ProcessParamType().convert(process, None, ctx)
    state = node.process_state.value if node.process_state else "created"
    exit_status = f", exit status {node.exit_status}" if node.exit_status is not None else ""
    echo.echo(f"{node.process_label}<{node.pk}> {node.label or ''} [{state}{exit_status}]".replace("  ", " "))
    jobs = workflow_progress(node, live=not no_live)
    if not jobs:
        echo.echo("  no battgen jobs launched yet")
        return
    for job, progress, source in jobs:
        echo.echo(f"  {job_line(job, progress, source)}")
