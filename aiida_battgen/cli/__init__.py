"""``aiida-battgen``: set up profiles, run the demo, query candidates and their lineage."""

from __future__ import annotations

import sys

import click
from aiida.cmdline.groups import VerdiCommandGroup
from aiida.cmdline.params import arguments, options, types
from aiida.cmdline.utils import echo


@click.group("aiida-battgen", cls=VerdiCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@options.PROFILE(type=types.ProfileParamType(load_profile=True), expose_value=False,
                 help="AiiDA profile to use (default: AiiDA's default profile, as for `verdi`).")
def cmd_root():
    """AI-driven discovery of battery materials with AiiDA provenance."""


def _profile_given(ctx) -> bool:
    """Whether `-p/--profile` was given on the command line (not AiiDA's default)."""
    from click.core import ParameterSource

    root = ctx.find_root()
    return root.get_parameter_source("profile") not in (None, ParameterSource.DEFAULT)


def _require_profile(ctx) -> None:
    """The profile of `-p` or AiiDA's default is loaded; a clear message (no traceback) when there is none."""
    if ctx.obj.profile is None:
        echo.echo_critical("no AiiDA profile: create one with `aiida-battgen setup` (or `verdi presto`), "
                           "or choose one with `aiida-battgen -p NAME ...`")


def _report_default(result, hint: str = "") -> None:
    """Say so when AiiDA's default profile changed (and, where there was one, how to keep the old one)."""
    if "default_changed_from" in result:
        previous = result["default_changed_from"]
        echo.echo_report(f"`{result['profile'].name}` is now AiiDA's default profile"
                         + (f" (was `{previous}`){hint}" if previous else ""))


def _load_or_create(ctx, postgres: bool | None = None):
    """The demo's profile: the one of `-p`, else `battgen` (created, embedded, when absent)."""
    from aiida.manage.configuration import get_config

    from aiida_battgen.tools.profiles import DEMO_PROFILE, ServiceUnavailableError, setup_all

    name = ctx.obj.profile.name if _profile_given(ctx) else DEMO_PROFILE
    try:  # a new `battgen` profile becomes the default only where there is none yet
        result = setup_all(name, postgres=postgres,
                           set_default=None if get_config().default_profile_name is None else False)
    except (ServiceUnavailableError, ValueError, FileNotFoundError) as exc:
        echo.echo_critical(str(exc))
    verb = "Created" if result["profile_created"] else "Using"
    echo.echo_report(f"{verb} profile `{name}`" + ("" if _profile_given(ctx) else
                     " (choose another with `aiida-battgen -p NAME demo`; query it with `verdi -p "
                     f"{name} ...` / `aiida-battgen -p {name} ...`)"))
    _report_default(result)
    return result


@cmd_root.command("setup")
@click.option("--profile-name", default=None, help="Profile name (default: battgen, or battgen-psql with --postgres).")
@click.option("--postgres", is_flag=True, help="PostgreSQL storage + RabbitMQ broker instead of SQLite + ZeroMQ.")
@click.option("--set-as-default/--no-set-as-default", "set_default", default=None,
              help="Make the profile AiiDA's default (default: yes for a new profile, no for an existing one).")
@click.option("--db-host", default="127.0.0.1", show_default=True)
@click.option("--db-port", default=5432, show_default=True)
@click.option("--db-superuser", default="postgres", show_default=True)
@click.option("--broker-host", default="127.0.0.1", show_default=True)
@click.option("--broker-port", default=5672, show_default=True)
def cmd_setup(profile_name, postgres, set_default, db_host, db_port, db_superuser, broker_host, broker_port):
    """Create (or reuse) a profile, the localhost computer and the `battgen` code. Idempotent."""
    from aiida_battgen.tools.profiles import PostgresSettings, RabbitmqSettings, ServiceUnavailableError, setup_all

    name = profile_name or ("battgen-psql" if postgres else "battgen")
    try:
        result = setup_all(
            name, postgres=postgres, set_default=set_default,
            postgres_settings=PostgresSettings(host=db_host, port=db_port, superuser=db_superuser),
            rabbitmq_settings=RabbitmqSettings(host=broker_host, port=broker_port),
        ) if postgres else setup_all(name, set_default=set_default)
    except (ServiceUnavailableError, ValueError, FileNotFoundError) as exc:
        echo.echo_critical(str(exc))
    profile = result["profile"]
    verb = "Created" if result["profile_created"] else "Reusing"
    echo.echo_success(f"{verb} profile `{profile.name}` ({profile.storage_backend}, broker {profile.process_control_backend})")
    echo.echo_success(f"Computer `{result['computer'].label}` and code `{result['code'].full_label}` ready")
    _report_default(result, hint="; keep the old default with --no-set-as-default")
    if postgres:  # a consumer timeout shorter than a campaign re-delivers its tasks (docs/cluster.md)
        from aiida_battgen.tools.doctor import broker_summary

        line, recipe = broker_summary(profile)
        echo.echo_report(line)
        for index, text in enumerate(recipe):
            (echo.echo_warning if index == 0 else echo.echo)(text)
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
    _load_or_create(ctx)
    try:
        node = run_demo(protocol=protocol, output_dir=output_dir, daemon=daemon, overrides=overrides,
                        host_names=host_names)
    except (UnknownProtocolKeyError, ValueError) as exc:
        echo.echo_critical(str(exc))
    sys.exit(0 if node.is_finished_ok else 1)


@cmd_root.command("lineage")
@arguments.NODE("candidate", type=types.DataParamType(sub_classes=("aiida.data:core.structure",)))
def cmd_lineage(candidate):
    """Print the provenance of a shortlisted candidate back to its sources.

    CANDIDATE: its StructureData by pk, UUID (also after an archive import) or label.
    """
    from aiida_battgen.tools.lineage import candidate_lineage

    lineage = candidate_lineage(candidate)
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
    _require_profile(ctx)
    from aiida_battgen.tools.lineage import find_candidates
    from battgen.report import format_table

    rows = find_candidates(max_ehull, list(elements), generator, group_label)
    columns = ("structure_pk", "reduced_formula", "generator", "e_above_hull_eV_per_atom", "energy_per_atom_eV")
    echo.echo(format_table(rows, columns) if rows else "no candidates match")


@cmd_root.command("protocols")
def cmd_protocols():
    """List the protocols of every `battgen.*` work chain (from the `aiida.workflows` entry points)."""
    from importlib.metadata import entry_points

    from aiida_battgen.workchains.protocols.utils import ProtocolMixin

    for entry_point in sorted(entry_points(group="aiida.workflows"), key=lambda ep: ep.name):
        if not entry_point.name.startswith("battgen."):
            continue
        try:
            chain = entry_point.load()
        except Exception as exc:  # noqa: BLE001 - an optional extra missing: say so, list the others
            echo.echo_warning(f"{entry_point.name}: cannot be loaded ({type(exc).__name__}: {exc})")
            continue
        if not (isinstance(chain, type) and issubclass(chain, ProtocolMixin) and chain._protocol_file):
            continue
        echo.echo(f"{entry_point.name} ({chain._protocol_file}, default {chain.get_default_protocol()}):")
        for name, info in chain.get_available_protocols().items():
            echo.echo(f"  {name:20s} {info['description']}")


@cmd_root.command("train")
@click.argument("kind", type=click.Choice(["generator", "predictor"]))
@click.argument("name")
@click.option("--structures", "structures", required=True,
              type=types.DataParamType(sub_classes=("aiida.data:battgen.structure_batch",)),
              help="The training StructureBatchData (pk, UUID or label).")
@click.option("--target", "targets", multiple=True, help="Predictor target column (repeatable), e.g. band_gap_eV.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML with hyperparameters / filter / split / seed (keys of the training CalcJob's parameters).")
@options.CODE(default=None, help="Code running the battgen CLI (pk, UUID or label; default: battgen@localhost).")
@click.option("--daemon", is_flag=True, help="Submit to the daemon instead of running in this process.")
@click.pass_context
def cmd_train(ctx, kind, name, structures, targets, config_file, code, daemon):
    """Train a generator (cdvae, llm) or a predictor (alignn, m3gnet, megnet, magpie-cnn, xrd-cnn, voltage-cgcnn)
    on a structure batch; the model becomes a battgen.model node."""
    import yaml
    from aiida import orm
    from aiida.engine import run_get_node, submit
    from aiida.plugins import WorkflowFactory

    _require_profile(ctx)
    settings = yaml.safe_load(open(config_file, encoding="utf-8")) if config_file else {}
    parameters = {**(settings or {}), kind: name}
    if kind == "predictor":
        parameters["targets"] = list(targets) or parameters.get("targets")
        if not parameters["targets"]:
            echo.echo_critical("a predictor needs at least one --target")
    workflow = WorkflowFactory(f"battgen.{kind}.train_base")
    builder = workflow.get_builder()
    try:
        builder.train.code = code or orm.load_code("battgen@localhost")
        builder.train.training_structures = structures
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

    _require_profile(ctx)
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


from aiida_battgen.cli.status import cmd_status  # noqa: E402 - registered after the root group exists

cmd_root.add_command(cmd_status)
from aiida_battgen.cli import doctor as _doctor  # noqa: E402,F401 - registers `aiida-battgen doctor`
from aiida_battgen.cli.campaign import cmd_campaign  # noqa: E402 - `aiida-battgen campaign`

cmd_root.add_command(cmd_campaign)
