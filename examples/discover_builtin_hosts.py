"""Discovery on the built-in battery hosts (no network, no data files): the demo, as a script to adapt.

    python examples/discover_builtin_hosts.py --hosts LiCoO2,Li2O,LiCl,Si --overrides examples/tiny.yaml

Exit status 0 when the discovery finished without error, 1 otherwise.
"""

from __future__ import annotations

import sys

from _common import add_discovery_options, battgen_code, load, overrides, parser, run_and_report


def main() -> int:
    cli = parser(__doc__.split("\n", 1)[0])
    add_discovery_options(cli)
    cli.add_argument("--hosts", default=None, help="comma-separated built-in hosts (default: all)")
    args = cli.parse_args()
    load(args.profile)
    from aiida_battgen.tools.demo import build_demo_inputs

    hosts = args.hosts.split(",") if args.hosts else None
    builder = build_demo_inputs(battgen_code(), args.protocol, overrides(args.overrides), hosts)
    return run_and_report(builder, args.group)


if __name__ == "__main__":
    sys.exit(main())
