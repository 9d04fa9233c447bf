"""Node count of a discovery run does not grow with the number of generated candidates.

    .venv/bin/python benchmarks/node_scaling.py [--small 1000 --large 5000]

Runs DiscoveryWorkChain twice in a throwaway AiiDA profile on the built-in hosts (two-species
substitution gives ~10,000 distinct candidates), with the same preselection (4 structures relaxed with
CHGNet) and shortlist, and counts the nodes each run added. The two counts may differ only by the
shortlist (one extract_structure calcfunction + structure + properties per candidate) and by relaxation
restarts. Last line: ``nodes_small=<n> nodes_large=<n> shortlist_small=<k> shortlist_large=<k>
candidates_small=<n> candidates_large=<n> constant=<true|false>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def overrides(n: int) -> dict:
    return {
        "generation": {"n": n, "conditions": {"threshold": 1e-5, "max_per_seed": 100_000,
                                              "max_substituted_species": 2}},
        "preselection": {"top_k": 4},
        "relax": {"relax": {"parameters": {"fmax": 0.5, "max_steps": 100}}},
        "shortlist": {"top_k": 4, "max_values": {"e_above_hull_eV_per_atom": 10.0}},
    }


def count_nodes() -> int:
    from aiida import orm

    return orm.QueryBuilder().append(orm.Node).count()


def run(code, n: int) -> dict:
    from aiida.engine import run_get_node

    from aiida_battgen.tools.demo import build_demo_inputs

    before = count_nodes()
    started = time.perf_counter()
    _, node = run_get_node(build_demo_inputs(code, "fast", overrides(n)))
    counts = node.outputs.funnel["counts"]
    result = {"nodes": count_nodes() - before, "seconds": time.perf_counter() - started,
              "generated": counts["generated"], "shortlisted": counts.get("shortlisted", 0),
              "exit_status": node.exit_status}
    print(f"n={n}: {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=5000)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from _throwaway_profile import throwaway_battgen_code

    code = throwaway_battgen_code("battgen-node-scaling")
    small, large = run(code, args.small), run(code, args.large)
    # Each shortlisted candidate adds 3 nodes (extract_structure, structure, properties).
    constant = abs((large["nodes"] - 3 * large["shortlisted"]) - (small["nodes"] - 3 * small["shortlisted"])) == 0
    print(f"nodes_small={small['nodes']} nodes_large={large['nodes']} shortlist_small={small['shortlisted']} "
          f"shortlist_large={large['shortlisted']} candidates_small={small['generated']} "
          f"candidates_large={large['generated']} constant={str(constant).lower()}")


if __name__ == "__main__":
    main()
