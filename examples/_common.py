"""What the example scripts share: the profile, the localhost `battgen` code, protocol overrides."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml


def parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-p", "--profile", default=None, help="AiiDA profile (default: AiiDA's default profile)")
    return parser


def add_discovery_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", default="fast", choices=("fast", "balanced", "stringent"))
    parser.add_argument("--overrides", type=Path, default=None,
                        help="YAML deep-merged into the protocol (e.g. examples/tiny.yaml)")
    parser.add_argument("--group", default="examples/shortlist", help="group the shortlisted structures go in")


def load(profile: str | None):
    from aiida import load_profile

    return load_profile(profile, allow_switch=True)


def overrides(path: Path | None) -> dict | None:
    if path is None:
        return None
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: protocol overrides must be a YAML mapping")
    return data


def battgen_code():
    """The `battgen` CLI of this environment as a code on localhost (created once)."""
    from aiida_battgen.tools.profiles import ensure_battgen_code, ensure_localhost

    return ensure_battgen_code(ensure_localhost())


def run_and_report(builder, group: str) -> int:
    """Run the discovery in this process; print the funnel and the shortlist; exit status of the run."""
    from aiida import orm
    from aiida.engine import run_get_node

    builder.shortlist_group_label = orm.Str(group)
    _, node = run_get_node(builder)
    print(f"DiscoveryWorkChain<{node.pk}> {node.process_state.value}, exit status {node.exit_status}"
          + (f": {node.exit_message}" if node.exit_message else ""))
    if "funnel" in node.outputs:
        counts = node.outputs.funnel["counts"]
        print("funnel: " + " -> ".join(f"{step} {count}" for step, count in counts.items()))
    for label, structure in sorted(node.outputs.candidates.items()) if "candidates" in node.outputs else []:
        print(f"  {label}: {structure.get_formula()} StructureData<{structure.pk}>")
    print(f"shortlist in group `{group}`")
    return 0 if node.is_finished_ok else 1
