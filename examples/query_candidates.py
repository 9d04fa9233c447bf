"""Query shortlisted candidates by E_hull and elements, and print one candidate's lineage back to its source.

    python examples/query_candidates.py --max-ehull 0.1 --element Li --group examples/shortlist

Exit status 0 with at least one match, 3 (a warning: nothing to show) when no candidate matches.
"""

from __future__ import annotations

import sys

from _common import load, parser

COLUMNS = ("structure_pk", "reduced_formula", "e_above_hull_eV_per_atom", "generator")


def main() -> int:
    cli = parser(__doc__.split("\n", 1)[0])
    cli.add_argument("--max-ehull", type=float, default=None, help="upper bound on E_hull (eV/atom)")
    cli.add_argument("--element", action="append", default=[], help="element every match contains (repeatable)")
    cli.add_argument("--group", default=None, help="only candidates in this group")
    args = cli.parse_args()
    load(args.profile)
    from aiida_battgen.tools.lineage import candidate_lineage, find_candidates

    rows = find_candidates(max_e_above_hull=args.max_ehull, elements=args.element or None, group_label=args.group)
    if not rows:
        print("no candidate matches", file=sys.stderr)
        return 3
    print("  ".join(COLUMNS))
    for row in rows:
        print("  ".join(str(row.get(column, "")) for column in COLUMNS))
    best = rows[0]["structure_pk"]
    print(f"\nlineage of StructureData<{best}> (most stable match):")
    print(candidate_lineage(best).as_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
