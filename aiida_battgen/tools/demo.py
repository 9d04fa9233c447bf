"""The demo discovery: built-in battery hosts → substitution → screening → CHGNet → E_hull shortlist."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiida import orm
from aiida.engine import run_get_node, submit

from battgen.report import format_table, plot_discovery_summary, write_csv

SHORTLIST_COLUMNS = (
    "rank", "row_id", "reduced_formula", "parent_row_id", "substitution", "energy_per_atom_eV",
    "e_above_hull_eV_per_atom", "formation_energy_per_atom_eV", "structure_pk",
)


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
        hull = workchain.outputs.hull.get_dict()
        print(f"\nE_hull reference: {hull.get('label')} ({hull.get('n_entries')} entries, "
              f"{len(hull.get('stable_phases', []))} stable phases, compatibility {hull.get('compatibility')}).")
        if hull.get("source") != "entries":
            print("Negative E_hull = below this hull: no competing compound of that chemistry is among the "
                  "references.\nFor E_hull against Materials Project, pass an MP snapshot as "
                  "`hull_reference_entries` (`battgen query-mp`).")
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


def run_demo(protocol: str = "fast", output_dir: str | Path = "battgen-demo-output", daemon: bool = False,
             overrides: dict | None = None, host_names: list[str] | None = None) -> orm.WorkChainNode:
    """Run the demo discovery in this process (default) or through the daemon, then report it."""
    from aiida_battgen.tools.profiles import ensure_battgen_code, ensure_localhost

    code = ensure_battgen_code(ensure_localhost())
    builder = build_demo_inputs(code, protocol, overrides, host_names)
    started = time.perf_counter()
    if daemon:
        node = submit(builder)
        print(f"Submitted DiscoveryWorkChain<{node.pk}>; waiting for the daemon ...")
        while not node.is_terminated:
            time.sleep(2)
    else:
        _, node = run_get_node(builder)
    print(f"DiscoveryWorkChain<{node.pk}> {node.process_state.value} (exit status {node.exit_status}) "
          f"in {time.perf_counter() - started:.0f} s")
    report_workchain(node, Path(output_dir))
    return node
