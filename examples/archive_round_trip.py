"""Export a shortlist group with its whole lineage, import it into another profile, and check it arrived whole.

    python examples/archive_round_trip.py --group examples/shortlist --target-profile battgen-copy run.aiida

The target profile is created when it does not exist (SQLite storage in the AiiDA config folder, no broker,
not made the default profile), so the import never lands in the profile the group came from.

In the target profile every candidate must come back with the same processes on its lineage (same call link
labels) and no step missing. Exit status 0 when that holds, 1 otherwise, 2 for an empty or unknown group.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import load, parser


def ensure_empty_profile(name: str, email: str) -> None:
    """A SQLite profile named ``name`` (created if absent; the default profile stays what it was)."""
    from aiida.manage.configuration import create_profile, get_config

    config = get_config()
    if name in config.profile_names:
        return
    storage = Path(config.dirpath) / "repository" / f"sqlite_dos_{name}"
    create_profile(config, storage_backend="core.sqlite_dos", storage_config={"filepath": str(storage)}, name=name,
                   email=email)
    config.store()
    print(f"created profile `{name}` (core.sqlite_dos in {storage})")


def main() -> int:
    cli = parser(__doc__.split("\n", 1)[0])
    cli.add_argument("--group", required=True, help="group of shortlisted StructureData to export")
    cli.add_argument("--target-profile", required=True, help="profile to import into (created, empty, if absent)")
    cli.add_argument("archive", type=Path, help="archive file to write (.aiida)")
    args = cli.parse_args()
    load(args.profile)
    from aiida import load_profile, orm
    from aiida.common.exceptions import NotExistent
    from aiida.tools.archive import create_archive, import_archive

    from aiida_battgen.tools.lineage import DISCOVERY_STEPS, candidate_lineage

    try:
        group = orm.load_group(args.group)
    except NotExistent:
        print(f"error: no group `{args.group}`", file=sys.stderr)
        return 2
    candidates = [node for node in group.nodes if isinstance(node, orm.StructureData)]
    if not candidates:
        print(f"error: group `{args.group}` holds no StructureData", file=sys.stderr)
        return 2
    expected = {node.uuid: candidate_lineage(node).process_labels for node in candidates}
    create_archive([group], filename=args.archive, overwrite=True)  # the default rules follow the lineage back
    print(f"exported {len(candidates)} candidate(s) with their lineage to {args.archive} "
          f"({args.archive.stat().st_size / 1e6:.2f} MB)")

    source = orm.User.collection.get_default().email
    if args.target_profile == load_profile().name:
        print("error: the target profile is the source profile", file=sys.stderr)
        return 2
    ensure_empty_profile(args.target_profile, email=source)
    load_profile(args.target_profile, allow_switch=True)
    import_archive(args.archive)
    problems = {}
    for uuid, labels in expected.items():
        lineage = candidate_lineage(orm.load_node(uuid))
        if lineage.process_labels != labels:
            problems[uuid] = f"lineage {lineage.process_labels} after import, {labels} before"
        elif lineage.missing_steps(DISCOVERY_STEPS):
            problems[uuid] = f"missing steps {lineage.missing_steps(DISCOVERY_STEPS)}"
    for uuid, problem in problems.items():
        print(f"{uuid}: {problem}", file=sys.stderr)
    print(f"imported into profile `{args.target_profile}`: {len(expected) - len(problems)} of {len(expected)} "
          "candidate(s) with the same lineage")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
