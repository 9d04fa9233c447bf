"""``aiida-battgen doctor``: find processes that will never progress and a broker that will drop long ones."""

from __future__ import annotations

import sys
import time

import click
from aiida.cmdline.utils import echo

from aiida_battgen.cli import cmd_root

EXIT_HEALTHY, EXIT_PROBLEM, EXIT_BROKER_WARNING = 0, 1, 2


@cmd_root.command("doctor")
@click.option("--repair", is_flag=True,
              help="Repair stuck processes: stop the daemon (kill it if the stop hangs), `verdi process repair`, "
                   "start the daemon with as many workers as before.")
@click.option("--rabbitmq-node", default=None,
              help="RabbitMQ node name for `rabbitmqctl -n` (default: rabbitmqctl's own, the machine's broker).")
@click.option("--management-port", default=15672, show_default=True, help="RabbitMQ management API port.")
@click.option("--wait", "wait_s", default=60.0, show_default=True,
              help="After --repair: how long (s) to wait for every revived process to be held by a worker.")
@click.pass_context
def cmd_doctor(ctx, repair, rabbitmq_node, management_port, wait_s):
    """Check the daemon, the broker and the database of a profile; say what is wrong and how to repair it.

    Exit 0: healthy; 1: stuck processes or dead database sessions (not repaired, or the repair failed);
    2: only the broker's consumer timeout needs changing (long work chains would be re-delivered)."""
    from aiida.manage import get_manager

    from aiida_battgen.cli import _require_profile
    from aiida_battgen.tools import doctor

    _require_profile(ctx)
    profile = get_manager().get_profile()
    echo.echo_report(f"profile `{profile.name}`: storage {profile.storage_backend}, "
                     f"broker {profile.process_control_backend}")

    broker = doctor.check_broker(profile, rabbitmq_node=rabbitmq_node, management_port=management_port)
    timeout = ("none (undefined)" if broker.consumer_timeout_ms is None else f"{broker.consumer_timeout_ms} ms") \
        if broker.timeout_known else "unknown"
    echo.echo_report(f"broker: {broker.backend} version {broker.version or 'unknown'}, consumer_timeout {timeout}"
                     + (f" (from {broker.timeout_source})" if broker.timeout_source else ""))
    for note in broker.notes:
        echo.echo_report(f"  {note}")
    recipe = doctor.consumer_timeout_recipe(broker)
    for index, line in enumerate(recipe):
        (echo.echo_warning if index == 0 else echo.echo)(line)

    if profile.process_control_backend is None:
        sys.exit(EXIT_BROKER_WARNING if recipe else EXIT_HEALTHY)
    processes = doctor.find_stuck_processes(profile)
    echo.echo_report(f"daemon {'running' if processes.daemon_running else 'not running'}; "
                     f"{len(processes.active)} active process(es), {len(processes.alive)} held by a worker, "
                     f"{len(processes.queued)} queued")
    for note in processes.notes:
        echo.echo_report(f"  {note}")
    problems = doctor.describe(processes)
    for line in problems:
        (echo.echo if line.startswith("  ") else echo.echo_error)(line)
    if processes.healthy:
        echo.echo_success("no stuck process")
        sys.exit(EXIT_BROKER_WARNING if recipe else EXIT_HEALTHY)
    if not (processes.stuck or processes.dead_session_lines):  # re-delivered tasks: the broker needs the fix
        echo.echo_report("fix the broker's consumer_timeout (recipe above), then `verdi daemon restart`; "
                         "check the results of work chains that ran meanwhile (`verdi process report`)")
        sys.exit(EXIT_PROBLEM)
    if not repair:
        echo.echo_report("repair: `aiida-battgen doctor --repair`, i.e. `verdi daemon stop` (kill the daemon if it "
                         "hangs), `verdi process repair`, `verdi daemon start`")
        sys.exit(EXIT_PROBLEM)

    try:
        steps = doctor.repair(profile)
    except RuntimeError as exc:
        echo.echo_critical(str(exc))
    for step in steps:
        echo.echo_report(f"repair: {step}")
    deadline = time.monotonic() + wait_s
    while True:  # the restarted workers need a moment to pick the revived tasks up
        after = doctor.find_stuck_processes(profile)
        if not after.stuck or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    if after.stuck:
        echo.echo_error(f"still stuck after the repair: {after.stuck}")
        sys.exit(EXIT_PROBLEM)
    echo.echo_success(f"repaired: {len(after.active)} active process(es), all held by a worker")
    sys.exit(EXIT_BROKER_WARNING if recipe else EXIT_HEALTHY)
