"""``aiida-battgen``: set up profiles, run the demo, query candidates and their lineage."""

from __future__ import annotations

import sys

import click
from aiida.cmdline.groups import VerdiCommandGroup
from aiida.cmdline.utils import echo


@click.group("aiida-battgen", cls=VerdiCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-p", "--profile", "profile_name", default=None,
              help="AiiDA profile (default: `battgen` if it exists, else AiiDA's default profile).")
@click.pass_context
def cmd_root(ctx, profile_name):
    """AI-driven discovery of battery materials with AiiDA provenance."""
    ctx.obj["battgen_profile"] = profile_name


def _load_existing_profile(ctx) -> None:
    """Load the requested profile; a clear message (no traceback) when there is none."""
    from aiida import load_profile
    from aiida.common.exceptions import ProfileConfigurationError
    from aiida.manage.configuration import get_config

    from aiida_battgen.tools.profiles import DEFAULT_PROFILE

    name = ctx.obj.get("battgen_profile")
    config = get_config(create=True)
    if name is None and DEFAULT_PROFILE in config.profile_names:
        name = DEFAULT_PROFILE
    try:
        load_profile(name, allow_switch=True)
    except ProfileConfigurationError as exc:
        echo.echo_critical(f"{exc}. Create one with `aiida-battgen setup`.")


def _load_or_create(profile_name: str | None, postgres: bool | None = None):
    """Load an existing profile of any storage, or create the embedded one."""
    from aiida_battgen.tools.profiles import DEFAULT_PROFILE, ServiceUnavailableError, setup_all

    try:
        return setup_all(profile_name or DEFAULT_PROFILE, postgres=postgres)
    except (ServiceUnavailableError, ValueError, FileNotFoundError) as exc:
        echo.echo_critical(str(exc))


@cmd_root.command("setup")
@click.option("--profile-name", default=None, help="Profile name (default: -p, else battgen / battgen-psql).")
@click.option("--postgres", is_flag=True, help="PostgreSQL storage + RabbitMQ broker instead of SQLite + ZeroMQ.")
@click.option("--db-host", default="127.0.0.1", show_default=True)
@click.option("--db-port", default=5432, show_default=True)
@click.option("--db-superuser", default="postgres", show_default=True)
@click.option("--broker-host", default="127.0.0.1", show_default=True)
@click.option("--broker-port", default=5672, show_default=True)
@click.pass_context
def cmd_setup(ctx, profile_name, postgres, db_host, db_port, db_superuser, broker_host, broker_port):
    """Create (or reuse) a profile, the localhost computer and the `battgen` code. Idempotent."""
    from aiida_battgen.tools.profiles import PostgresSettings, RabbitmqSettings, ServiceUnavailableError, setup_all

    name = profile_name or ctx.obj.get("battgen_profile") or ("battgen-psql" if postgres else "battgen")
    try:
        result = setup_all(
            name, postgres=postgres,
            postgres_settings=PostgresSettings(host=db_host, port=db_port, superuser=db_superuser),
            rabbitmq_settings=RabbitmqSettings(host=broker_host, port=broker_port),
        ) if postgres else setup_all(name)
    except (ServiceUnavailableError, ValueError, FileNotFoundError) as exc:
        echo.echo_critical(str(exc))
    profile = result["profile"]
    verb = "Created" if result["profile_created"] else "Reusing"
    echo.echo_success(f"{verb} profile `{profile.name}` ({profile.storage_backend}, broker {profile.process_control_backend})")
    echo.echo_success(f"Computer `{result['computer'].label}` and code `{result['code'].full_label}` ready")
    if postgres or profile.process_control_backend:
        echo.echo_report(f"Start the daemon with: verdi -p {profile.name} daemon start 2")


@cmd_root.command("demo")
@click.option("--protocol", type=click.Choice(["fast", "balanced", "stringent"]), default="fast", show_default=True)
@click.option("--output-dir", default="battgen-demo-output", show_default=True, help="Where the table and figure go.")
@click.option("--daemon", is_flag=True, help="Submit to the daemon instead of running in this process.")
@click.option("--hosts", default=None, help="Comma-separated built-in hosts to seed from (default: all).")
@click.option("--overrides", "overrides_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML file deep-merged into the protocol (unknown keys are rejected).")
@click.pass_context
def cmd_demo(ctx, protocol, output_dir, daemon, hosts, overrides_file):
    """Run the demo discovery on the built-in battery hosts and print the funnel and shortlist."""
    import yaml

    from aiida_battgen.tools.demo import run_demo
    from aiida_battgen.workchains.protocols.utils import UnknownProtocolKeyError

    overrides = None
    if overrides_file:
        with open(overrides_file, encoding="utf-8") as handle:
            overrides = yaml.safe_load(handle) or {}
    host_names = [h.strip() for h in hosts.split(",")] if hosts else None
    _load_or_create(ctx.obj.get("battgen_profile"))
    try:
        node = run_demo(protocol=protocol, output_dir=output_dir, daemon=daemon, overrides=overrides,
                        host_names=host_names)
    except (UnknownProtocolKeyError, ValueError) as exc:
        echo.echo_critical(str(exc))
    sys.exit(0 if node.is_finished_ok else 1)


@cmd_root.command("lineage")
@click.argument("candidate", type=int)
@click.pass_context
def cmd_lineage(ctx, candidate):
    """Print the provenance of a shortlisted candidate (pk of its StructureData) back to its sources."""
    from aiida.common.exceptions import NotExistent

    from aiida_battgen.tools.lineage import candidate_lineage

    _load_existing_profile(ctx)
    try:
        lineage = candidate_lineage(candidate)
    except NotExistent:
        echo.echo_critical(f"no node with pk {candidate}")
    echo.echo(lineage.as_text())
    missing = lineage.missing_steps()
    if missing:
        echo.echo_warning(f"not a complete discovery lineage; missing steps: {', '.join(missing)}")


@cmd_root.command("candidates")
@click.option("--max-ehull", type=float, default=None, help="Maximum energy above hull (eV/atom).")
@click.option("--element", "elements", multiple=True, help="Element that must be present (repeatable).")
@click.option("--generator", default=None, help="Only candidates made by this generator.")
@click.option("--group", "group_label", default=None, help="Only candidates in this group.")
@click.pass_context
def cmd_candidates(ctx, max_ehull, elements, generator, group_label):
    """List shortlisted candidates by criteria, most stable first."""
    _load_existing_profile(ctx)
    from aiida_battgen.tools.lineage import find_candidates
    from battgen.report import format_table

    rows = find_candidates(max_ehull, list(elements), generator, group_label)
    columns = ("structure_pk", "reduced_formula", "generator", "e_above_hull_eV_per_atom", "energy_per_atom_eV")
    echo.echo(format_table(rows, columns) if rows else "no candidates match")


@cmd_root.command("protocols")
def cmd_protocols():
    """List the protocols of the discovery work chain."""
    from aiida_battgen.workchains.protocols.utils import ProtocolMixin

    class _Discovery(ProtocolMixin):
        _protocol_file = "discovery.yaml"

    for name, info in _Discovery.get_available_protocols().items():
        echo.echo(f"{name:10s} {info['description']}")
