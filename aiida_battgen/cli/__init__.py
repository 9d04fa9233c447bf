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
    """List the protocols of the discovery and property-screen work chains."""
    from aiida_battgen.workchains.protocols.utils import ProtocolMixin

    for title, filename in (("battgen.discovery", "discovery.yaml"), ("battgen.property_screen", "property_screen.yaml")):
        chain = type("_Protocols", (ProtocolMixin,), {"_protocol_file": filename})
        echo.echo(f"{title}:")
        for name, info in chain.get_available_protocols().items():
            echo.echo(f"  {name:20s} {info['description']}")


@cmd_root.command("train")
@click.argument("kind", type=click.Choice(["generator", "predictor"]))
@click.argument("name")
@click.option("--structures", "structures_pk", type=int, required=True, help="pk of the training StructureBatchData.")
@click.option("--target", "targets", multiple=True, help="Predictor target column (repeatable), e.g. band_gap_eV.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML with hyperparameters / filter / split / seed (keys of the training CalcJob's parameters).")
@click.option("--code", "code_label", default=None, help="Code running the battgen CLI (default: battgen@localhost).")
@click.option("--daemon", is_flag=True, help="Submit to the daemon instead of running in this process.")
@click.pass_context
def cmd_train(ctx, kind, name, structures_pk, targets, config_file, code_label, daemon):
    """Train a generator (cdvae, llm) or a predictor (alignn, m3gnet, megnet, magpie-cnn, xrd-cnn, voltage-cgcnn)
    on a structure batch; the model becomes a battgen.model node."""
    import yaml
    from aiida import orm
    from aiida.engine import run_get_node, submit
    from aiida.plugins import WorkflowFactory

    _load_existing_profile(ctx)
    settings = yaml.safe_load(open(config_file, encoding="utf-8")) if config_file else {}
    parameters = {**(settings or {}), kind: name}
    if kind == "predictor":
        parameters["targets"] = list(targets) or parameters.get("targets")
        if not parameters["targets"]:
            echo.echo_critical("a predictor needs at least one --target")
    workflow = WorkflowFactory(f"battgen.{kind}.train_base")
    builder = workflow.get_builder()
    try:
        builder.train.code = orm.load_code(code_label or "battgen@localhost")
        builder.train.training_structures = orm.load_node(structures_pk)
        builder.train.parameters = orm.Dict(parameters)
    except (ValueError, Exception) as exc:  # noqa: BLE001 - NotExistent, wrong type, invalid parameters
        echo.echo_critical(f"invalid input: {exc}")
    if daemon:
        node = submit(builder)
        echo.echo_success(f"submitted {workflow.__name__}<{node.pk}>")
        return
    results, node = run_get_node(builder)
    if not node.is_finished_ok:
        echo.echo_critical(f"{workflow.__name__}<{node.pk}> failed: {node.exit_message}")
    echo.echo_success(f"trained {name}: battgen.model<{results['model'].pk}> sha256 {results['model'].content_sha256[:12]}")


@cmd_root.command("models")
@click.option("--kind", type=click.Choice(["generator", "predictor", "potential"]), default=None)
@click.pass_context
def cmd_models(ctx, kind):
    """List trained models (battgen.model nodes) with what trained them and their held-out metrics."""
    from aiida import orm

    from aiida_battgen.data.model import ModelData
    from battgen.report import format_table

    _load_existing_profile(ctx)
    query = orm.QueryBuilder().append(ModelData, filters={"attributes.kind": kind} if kind else {}, tag="model")
    rows = []
    for (model,) in query.iterall():
        training = model.base.attributes.get("training") or {}
        metrics = model.base.attributes.get("metrics") or {}
        headline = next((f"{k}={v:.4g}" for k, v in sorted(metrics.items())
                         if k.startswith(("test_mae", "val_loss", "val_")) and isinstance(v, int | float)), "")
        rows.append({"pk": model.pk, "kind": model.kind, "architecture": model.architecture,
                     "sha256": model.content_sha256[:12], "n_train": training.get("n_train"),
                     "creator": f"{model.creator.process_label}<{model.creator.pk}>" if model.creator else "imported",
                     "metric": headline})
    columns = ("pk", "kind", "architecture", "sha256", "n_train", "creator", "metric")
    echo.echo(format_table(rows, columns) if rows else "no models")
