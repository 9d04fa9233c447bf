"""Wall time per stage and nodes per candidate of the offline mini campaign at two sample sizes.

    .venv/bin/python benchmarks/campaign.py [--small 20 --large 200] [--iterations 1]

Runs ``examples/offline_mini.yaml`` (tiny CDVAE steps, few relaxations; substitution ``n`` set to
``--small`` / ``--large``) twice in a throwaway AiiDA profile and counts the nodes each run added. The
second run reuses the CDVAE trained by the first (same data and settings), so its training time is the
lookup's. Wall time per stage is read from the child processes' ctime/mtime: training, each round's
discovery (and within it generation, screening, relaxation), summary. The node count must not grow with the
number of samples beyond the shortlist. Last line: ``seconds=<large run> nodes=<large run>
nodes_per_shortlisted=<large run> nodes_small=<n> nodes_large=<n> samples_small=<n> samples_large=<n>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def spec_data(code_label: str, n: int, iterations: int) -> dict:
    data = yaml.safe_load((ROOT / "examples" / "offline_mini.yaml").read_text())
    data["codes"]["default"] = code_label
    data["generators"]["substitution"] = {"n": n, "conditions": {"threshold": 1e-5, "max_per_seed": 100_000,
                                                                 "max_substituted_species": 2}}
    data["generators"]["cdvae"]["n"] = 8
    data["generators"]["cdvae"]["train"]["hyperparameters"]["max_steps"] = 10
    data["relax"].update({"fmax_eV_per_A": 0.5, "max_steps": 30, "preselect_top_k": 4})
    data["hull"].update({"max_e_above_hull_eV_per_atom": 10.0, "shortlist_top_k": 3, "rank_hull_incomplete": True})
    data["loop"]["iterations"] = iterations
    return data


def count_nodes() -> int:
    from aiida import orm

    return orm.QueryBuilder().append(orm.Node).count()


def _call_label(process) -> str:
    from aiida.common.links import LinkType

    link = process.base.links.get_incoming(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).first()
    return link.link_label if link else process.process_label


def _group(label: str) -> str:
    for prefix, group in (("generate", "generate"), ("merge_generated", "generate"), ("screen", "screen"),
                          ("property_screen", "property_screen"), ("preselect", "preselect"), ("relax", "relax"),
                          ("energy_above_hull", "hull+shortlist"), ("shortlist", "hull+shortlist"),
                          ("extract", "hull+shortlist"), ("dft", "dft")):
        if label.startswith(prefix):
            return group
    return "other"


def stage_seconds(node) -> dict[str, float]:
    """Seconds per child process of the campaign, and per step group inside each round's discovery."""
    seconds: dict[str, float] = {}
    for child in sorted(node.called, key=lambda n: n.ctime):
        label = _call_label(child)
        seconds[label] = seconds.get(label, 0.0) + (child.mtime - child.ctime).total_seconds()
        if child.process_label == "DiscoveryWorkChain":
            for step in child.called:
                key = f"{label}.{_group(_call_label(step))}"
                seconds[key] = seconds.get(key, 0.0) + (step.mtime - step.ctime).total_seconds()
    return {key: round(value, 2) for key, value in seconds.items()}


def run(code, n: int, iterations: int) -> dict:
    from aiida.engine import run_get_node

    from aiida_battgen.tools.campaign import resolve_campaign
    from battgen.campaign.spec import parse_spec

    before = count_nodes()
    started = time.perf_counter()
    plan = resolve_campaign(parse_spec(spec_data(code.full_label, n, iterations)), base_dir=ROOT)
    _, node = run_get_node(plan.builder)
    seconds = time.perf_counter() - started
    summary = node.outputs.summary.get_dict() if "summary" in node.outputs else {}
    shortlisted = len(summary.get("candidates", []))
    result = {"n": n, "exit_status": node.exit_status, "seconds": round(seconds, 1), "nodes": count_nodes() - before,
              "samples": summary.get("totals", {}).get("samples"), "shortlisted": shortlisted,
              "stages_s": stage_seconds(node)}
    print(f"n={n}: {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--large", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from _throwaway_profile import throwaway_battgen_code

    code = throwaway_battgen_code("battgen-campaign-benchmark")
    small = run(code, args.small, args.iterations)
    large = run(code, args.large, args.iterations)
    per = round(large["nodes"] / large["shortlisted"], 1) if large["shortlisted"] else None
    print(f"seconds={large['seconds']} nodes={large['nodes']} nodes_per_shortlisted={per} "
          f"nodes_small={small['nodes']} nodes_large={large['nodes']} samples_small={small['samples']} "
          f"samples_large={large['samples']}")


if __name__ == "__main__":
    main()
