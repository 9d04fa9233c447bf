"""``aiida-battgen campaign``: run a campaign spec, follow it, report it, export it."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from aiida.cmdline.params import arguments, types
from aiida.cmdline.utils import echo

CAMPAIGN_NODE = types.WorkflowParamType(sub_classes=("aiida.node:process.workflow.workchain",))


def _campaign_node(node):
    if node.process_label != "CampaignWorkChain":
        echo.echo_critical(f"{node.process_label}<{node.pk}> is not a campaign (CampaignWorkChain)")
    return node


@click.group("campaign")
def cmd_campaign():
    """Campaigns: one YAML spec from a chemistry to ranked battery candidates (examples/*.yaml)."""


@cmd_campaign.command("run")
@click.argument("spec_file", metavar="SPEC", type=click.Path(exists=True, dir_okay=False))
@click.option("--daemon", is_flag=True, help="Submit to the daemon instead of running in this process.")
@click.option("--dry-run", is_flag=True, help="Validate and print stages, codes, model reuse and expected counts; "
                                             "store nothing.")
@click.pass_context
def cmd_run(ctx, spec_file, daemon, dry_run):
    """Validate SPEC, resolve its codes, models and source, and run the campaign."""
    from aiida.engine import run_get_node, submit

    from aiida_battgen.cli import _require_profile
    from aiida_battgen.tools.campaign import resolve_campaign
    from battgen.campaign.spec import CampaignSpecError

    _require_profile(ctx)
    try:
        plan = resolve_campaign(spec_file, dry_run=dry_run)
    except CampaignSpecError as exc:
        echo.echo_critical(str(exc))
    echo.echo(plan.as_text())
    if dry_run:
        echo.echo_success("dry run: the spec is valid; nothing was stored")
        return
    try:
        if daemon:
            node = submit(plan.builder)
            echo.echo_success(f"submitted CampaignWorkChain<{node.pk}>; follow it with "
                              f"`aiida-battgen campaign status {node.pk}`")
            return
        _, node = run_get_node(plan.builder)
    except ValueError as exc:  # input validation of the work chain
        echo.echo_critical(str(exc).splitlines()[0])
    _print_summary(node)
    sys.exit(0 if node.is_finished_ok else 1)


def _print_summary(node) -> None:
    from battgen.report import format_table

    echo.echo_report(f"CampaignWorkChain<{node.pk}> finished with exit status {node.exit_status}"
                     + (f": {node.exit_message}" if node.exit_message else ""))
    if "summary" not in node.outputs:
        return
    summary = node.outputs.summary.get_dict()
    echo.echo(format_table(summary["rounds"], ("round", "samples", "survivors", "new_survivors", "hit_rate_per_1000")))
    echo.echo(format_table(summary["candidates"], ("round", "rank", "reduced_formula", "generator",
                                                   "e_above_hull_eV_per_atom")) if summary["candidates"]
              else "no shortlisted candidate")
    echo.echo(f"shortlist group: {summary.get('shortlist_group')}; report: aiida-battgen campaign report {node.pk}")


@cmd_campaign.command("status")
@arguments.PROCESS("campaign", type=CAMPAIGN_NODE)
def cmd_campaign_status(campaign):
    """Stage reached, funnel so far and running jobs of CAMPAIGN (pk, UUID or label)."""
    from aiida import orm
    from aiida.common.links import LinkType

    from battgen.report import format_table

    node = _campaign_node(campaign)
    echo.echo(f"CampaignWorkChain<{node.pk}> {node.label}: {node.process_state.value if node.process_state else '?'}"
              + (f", exit status {node.exit_status}" if node.is_terminated else ""))
    children = sorted(node.called, key=lambda n: n.ctime)
    labels = {link.node.pk: link.link_label for link in node.base.links.get_outgoing(
        link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all()}
    if children:
        last = children[-1]
        echo.echo(f"stage reached: {labels.get(last.pk)} ({last.process_label}<{last.pk}>, "
                  f"{last.process_state.value if last.process_state else '?'})")
    for child in children:
        if child.process_label == "DiscoveryWorkChain":
            counts = child.outputs.funnel["counts"] if "funnel" in child.outputs else {}
            state = child.process_state.value if child.process_state else "?"
            echo.echo(f"{labels.get(child.pk)} ({state}): "
                      + (", ".join(f"{k}={v}" for k, v in counts.items()) or "funnel not yet computed"))
    running = []
    for descendant in node.called_descendants:
        if isinstance(descendant, orm.CalcJobNode) and not descendant.is_terminated:
            running.append({"pk": descendant.pk, "process": descendant.process_label,
                            "state": descendant.process_state.value if descendant.process_state else "?",
                            "computer": descendant.computer.label if descendant.computer else ""})
    echo.echo(format_table(running, ("pk", "process", "state", "computer")) if running else "no running jobs")


@cmd_campaign.command("report")
@arguments.PROCESS("campaign", type=CAMPAIGN_NODE)
@click.option("--output", "output_dir", default=None, help="Directory of the report (default campaign-<pk>-report).")
def cmd_campaign_report(campaign, output_dir):
    """Tables (CSV), figures (PNG/SVG) and a one-page HTML summary of a finished CAMPAIGN."""
    from battgen.campaign.report import write_report

    node = _campaign_node(campaign)
    if "summary" not in node.outputs:
        echo.echo_critical(f"CampaignWorkChain<{node.pk}> has no summary yet ({node.process_state.value})")
    summary = node.outputs.summary.get_dict()
    relaxed: dict[str, list] = {}
    for child in node.called:
        if child.process_label == "DiscoveryWorkChain" and "relaxed_structures" in child.outputs:
            for meta in child.outputs.relaxed_structures.get_batch().meta:
                relaxed.setdefault(meta.get("generator") or "none", []).append(meta)
    formats = node.inputs.spec.get_dict().get("report", {}).get("formats", ["csv", "png", "html"])
    output = Path(output_dir or f"campaign-{node.pk}-report")
    written = write_report(summary, output, relaxed, formats=formats, title=f"{node.label} <{node.pk}>")
    for kind, paths in written.items():
        for path in paths:
            echo.echo(f"{kind}: {path}")
    echo.echo_success(f"report of CampaignWorkChain<{node.pk}> in {output}")


@cmd_campaign.command("export")
@arguments.PROCESS("campaign", type=CAMPAIGN_NODE)
@click.argument("archive", type=click.Path(dir_okay=False))
def cmd_campaign_export(campaign, archive):
    """Write CAMPAIGN with its whole lineage to an AiiDA ARCHIVE (no API key, no POTCAR file bodies)."""
    from aiida_battgen.tools.campaign import export_campaign

    node = _campaign_node(campaign)
    try:
        result = export_campaign(node, archive)
    except (ValueError, FileExistsError) as exc:
        echo.echo_critical(str(exc))
    echo.echo_success(f"wrote {result['path']} ({result['n_nodes']} nodes; checked: no API key, "
                      f"no POTCAR file body)")
