"""The demo discovery: built-in battery hosts → substitution → screening → CHGNet → E_hull shortlist."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiida import orm
from aiida.engine import run_get_node, submit

from battgen.report import format_table, plot_discovery_summary, write_csv

SHORTLIST_COLUMNS = (
    "rank", "row_id", "reduced_formula", "parent_row_id", "substitution", "energy_per_atom_eV",
    "e_above_hull_eV_per_atom", "formation_energy_per_atom_eV", "nearest_known_compound", "structure_pk",
)


def reference_lines(hull: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """What novelty and E_hull were judged against, and its coverage of the shortlist's chemical systems."""
    if hull.get("source") != "known_materials":
        lines = [f"E_hull reference: {hull.get('label')} ({hull.get('n_entries')} entries, "
                 f"{len(hull.get('stable_phases', []))} stable phases, compatibility {hull.get('compatibility')})."]
        if hull.get("source") != "entries":
            lines.append("Negative E_hull = below this hull: no competing compound of that chemistry is among the "
                         "references.\nFor E_hull against Materials Project, pass an MP snapshot as "
                         "`hull_reference_entries` (`battgen query-mp`).")
        return lines
    systems = hull.get("coverage", {}).get("systems", {})
    shortlisted = sorted({"-".join(sorted(row.get("elements") or [])) for row in rows} & set(systems))
    covered = [system for system in shortlisted if systems[system]["n_competing_compounds"] > 0]
    lines = [
        f"Known materials (novelty and E_hull): {hull.get('name')}, version {hull.get('version')}, "
        f"{hull.get('n_records')} records ({hull.get('n_structures')} structures, {hull.get('n_energies')} "
        f"MP2020 energies), {hull.get('licence')}.",
        "E_hull against its MP2020 hull of each chemical system; MLIP energies " + (
            f"corrected with {hull['candidate_compatibility']} as MP-style GGA(+U) entries."
            if hull.get("candidate_compatibility") else
            "used as predicted (the MLIP learned MP2020-corrected energies)."),
        f"Coverage of the shortlist's chemical systems: {len(covered)} of {len(shortlisted)} have known "
        "competing compounds" + (": " + ", ".join(
            f"{system} ({systems[system]['n_competing_compounds']})" for system in shortlisted) if shortlisted else "."),
    ]
    return lines



def primitive_builtin_hosts(names: list[str] | None = None):
    """The built-in hosts as primitive cells: same crystals, up to 4x fewer atoms to relax."""
    from battgen.batch import StructureBatch
    from battgen.sources.builtin_hosts import builtin_hosts

    hosts = builtin_hosts(names)
    return StructureBatch([s.get_primitive_structure() for s in hosts.structures], hosts.meta)


def build_demo_inputs(code: orm.AbstractCode, protocol: str = "fast", overrides: dict | None = None,
                      host_names: list[str] | None = None):
    """A DiscoveryWorkChain builder on the built-in hosts (no network, no data files)."""
    from aiida_battgen.data.batch import StructureBatchData
    from aiida_battgen.workchains.discovery import DiscoveryWorkChain

    seeds = StructureBatchData(primitive_builtin_hosts(host_names))
    seeds.label = "built-in battery hosts (primitive cells)"
    builder = DiscoveryWorkChain.get_builder_from_protocol(code, seed_structures=seeds, protocol=protocol,
                                                           overrides=overrides)
    builder.shortlist_group_label = orm.Str("battgen/demo/shortlist")
    builder.metadata.label = f"battgen demo ({protocol})"
    return builder


def shortlist_rows(workchain: orm.WorkChainNode) -> list[dict[str, Any]]:
    """One row per shortlisted candidate: properties of its extract_structure call and the structure pk."""
    rows = []
    for label, structure in sorted(workchain.outputs.candidates.items()) if "candidates" in workchain.outputs else []:
        creator = structure.creator
        properties = creator.outputs.properties.get_dict()
        rows.append({**properties, "structure_pk": structure.pk, "output_label": label})
    return sorted(rows, key=lambda r: r.get("rank", 0))


def report_workchain(workchain: orm.WorkChainNode, output_dir: Path) -> dict[str, Any]:
    """Print funnel + shortlist, write shortlist.csv and discovery_summary.png; return what was written."""
    output_dir.mkdir(parents=True, exist_ok=True)
    funnel = workchain.outputs.funnel["counts"] if "funnel" in workchain.outputs else {}
    print("\nFunnel (structures left after each step):")
    print(format_table([{"stage": k, "structures": v} for k, v in funnel.items()], ("stage", "structures")))

    rows = shortlist_rows(workchain)
    print(f"\nShortlist ({len(rows)} candidates, E_hull in eV/atom):")
    print(format_table(rows, SHORTLIST_COLUMNS) if rows else "(empty)")
    if "hull" in workchain.outputs:
        print("\n" + "\n".join(reference_lines(workchain.outputs.hull.get_dict(), rows)))
    table = write_csv(rows, SHORTLIST_COLUMNS, output_dir / "shortlist.csv")

    e_hull = []
    if "relaxed_structures" in workchain.outputs:
        e_hull = workchain.outputs.relaxed_structures.get_batch().column("e_above_hull_eV_per_atom")
    shortlist_settings = workchain.inputs.shortlist.get_dict()
    threshold = shortlist_settings.get("max_values", {}).get("e_above_hull_eV_per_atom")
    hull_label = workchain.outputs.hull.get("label") if "hull" in workchain.outputs else "no hull"
    figure = plot_discovery_summary(funnel, e_hull, threshold, output_dir / "discovery_summary.png",
                                    title=f"{workchain.label} <{workchain.pk}> — hull: {hull_label}")
    print(f"\nWrote {table} and {figure}")
    return {"funnel": funnel, "shortlist": rows, "table": table, "figure": figure}


# Routine REPORT lines of the restart work chains that say nothing a progress line does not say better.
ROUTINE_REPORTS = (
    re.compile(r"launching \w+<\d+> iteration #1$"),
    re.compile(r"work chain completed after 1 iterations$"),
    re.compile(r"remote folders will not be cleaned$"),
    # aiida-core's engine, when a job leaves the scheduler between two looks of its monitors: harmless.
    re.compile(r"^CalcJob<\d+> already marked as `CalcJobState\.(STASHING|RETRIEVING)`, skipping task_monitor_job$"),
)
PROGRESS_PREFIX = "progress: "


class DemoConsoleFilter(logging.Filter):
    """On a console handler: show the ``battgen.progress`` monitor's lines as ``<step>: <progress>`` (step = the
    call link label under the top process, e.g. ``relax_candidates``) and drop :data:`ROUTINE_REPORTS`.

    The record itself is never changed (the file and database handlers see the original)."""

    def __init__(self, handler: logging.Handler):
        super().__init__("battgen-demo")
        self.handler = handler
        self._steps: dict[int, str] = {}

    def _step(self, pk: int | None) -> str:
        from aiida_battgen.tools.progress import call_path

        if pk is None:
            return "job"
        if pk not in self._steps:
            node = orm.load_node(pk)
            self._steps[pk] = call_path(node).split("/")[0] or f"{node.process_label}<{pk}>"
        return self._steps[pk]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(PROGRESS_PREFIX):
            line = logging.makeLogRecord({**record.__dict__, "args": (),
                                          "msg": f"{self._step(getattr(record, 'dbnode_id', None))}: "
                                                 f"{message[len(PROGRESS_PREFIX):]}"})
            self.handler.emit(line)
            return False
        return not any(pattern.search(message) for pattern in ROUTINE_REPORTS)


@contextlib.contextmanager
def demo_console() -> Iterator[None]:
    """While the demo runs: progress lines instead of routine reports on the console; known-harmless library
    warnings silenced (by message, see :mod:`battgen.known_warnings`). Log files keep everything."""
    import warnings

    from battgen.known_warnings import ignore_known_warnings

    handlers = [h for h in logging.getLogger("aiida").handlers if not isinstance(h, logging.FileHandler)]
    filters = [(h, DemoConsoleFilter(h)) for h in handlers]
    with warnings.catch_warnings():
        ignore_known_warnings()
        for handler, console_filter in filters:
            handler.addFilter(console_filter)
        try:
            yield
        finally:
            for handler, console_filter in filters:
                handler.removeFilter(console_filter)


def print_progress_changes(node: orm.ProcessNode, shown: dict[int, str], live: bool = True) -> list[str]:
    """Print the progress line of each job of ``node`` that changed since the last call (``shown``: pk → line)."""
    from aiida_battgen.tools.progress import call_path, workflow_progress
    from battgen.progress import format_progress

    printed = []
    for job, state, _source in workflow_progress(node, live=live):
        if state is None:
            continue
        line = f"{call_path(job).split('/')[0] or job.process_label}: {format_progress(state)}"
        if shown.get(job.pk) != line:
            shown[job.pk] = line
            print(line, flush=True)
            printed.append(line)
    return printed


def run_demo(protocol: str = "fast", output_dir: str | Path = "battgen-demo-output", daemon: bool = False,
             overrides: dict | None = None, host_names: list[str] | None = None) -> orm.WorkChainNode:
    """Run the demo discovery in this process (default) or through the daemon, then report it."""
    from aiida_battgen.tools.profiles import ensure_battgen_code, ensure_localhost

    code = ensure_battgen_code(ensure_localhost())
    builder = build_demo_inputs(code, protocol, overrides, host_names)
    started = time.perf_counter()
    if daemon:
        node = submit(builder)
        print(f"Submitted DiscoveryWorkChain<{node.pk}>; waiting for the daemon "
              f"(progress: `aiida-battgen status {node.pk}`) ...")
        shown: dict[int, str] = {}
        while not node.is_terminated:
            print_progress_changes(node, shown)
            time.sleep(5)
        print_progress_changes(node, shown)
    else:
        with demo_console():
            _, node = run_get_node(builder)
    print(f"DiscoveryWorkChain<{node.pk}> {node.process_state.value} (exit status {node.exit_status}) "
          f"in {time.perf_counter() - started:.0f} s")
    report_workchain(node, Path(output_dir))
    return node
