"""Discovery seeded from your own structures: a CIF, a CSV with a CIF column, an extended XYZ, or a Materials
Project snapshot written by `battgen query-mp` (.jsonl[.gz]).

    python examples/discover_from_file.py my_host.cif --overrides examples/tiny.yaml

The file is stored once as a `battgen.snapshot` node (sha256, format, record count; an MP snapshot also keeps
its query and database version, never the API key); `batch_from_snapshot` turns it into the seed batch, so
every candidate's provenance leads back to that file. Exit status 0 when the discovery finished without error,
2 when the file is not a usable structure source, 1 when the discovery failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import add_discovery_options, battgen_code, load, overrides, parser, run_and_report


def main() -> int:
    cli = parser(__doc__.split("\n", 1)[0])
    add_discovery_options(cli)
    cli.add_argument("source", type=Path, help="structure file (.cif, .csv, .extxyz, .json, .jsonl[.gz])")
    args = cli.parse_args()
    from battgen.sources.files import SourceFormatError, describe_source_file

    try:  # before any profile is loaded: a bad file changes nothing
        if not args.source.is_file():
            raise SourceFormatError("no such file")
        describe_source_file(args.source)
    except SourceFormatError as exc:
        print(f"error: {args.source}: not a usable structure source: {exc}", file=sys.stderr)
        return 2
    load(args.profile)
    from aiida_battgen.data.snapshot import SourceSnapshotData
    from aiida_battgen.workchains.discovery import DiscoveryWorkChain

    snapshot = SourceSnapshotData.from_file(args.source.resolve())
    print(f"{args.source}: {snapshot.n_records} record(s), {snapshot.source_kind} ({snapshot.base.attributes.get('format')})")
    builder = DiscoveryWorkChain.get_builder_from_protocol(battgen_code(), snapshot=snapshot.store(),
                                                           protocol=args.protocol, overrides=overrides(args.overrides))
    builder.metadata.label = f"discovery from {args.source.name}"
    return run_and_report(builder, args.group)


if __name__ == "__main__":
    sys.exit(main())
