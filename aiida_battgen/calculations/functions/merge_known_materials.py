"""``battgen.merge_known_materials``: per-chemical-system Materials Project snapshots → one reference file."""

from __future__ import annotations

import io

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from battgen.known_materials import KnownMaterialsFormatError

ERROR_INVALID_SNAPSHOT = ExitCode(334, "invalid Materials Project snapshot: {detail}", invalidates_cache=True)
ERROR_MIXED_VERSIONS = ExitCode(335, "snapshots of different MP database versions: {versions}", invalidates_cache=True)


@calcfunction
def merge_known_materials(**snapshots: orm.SinglefileData):
    """One ``battgen.known_materials`` file from snapshots of one MP database version (one per chemical
    system, each a known-materials file with ``database_version`` in its header; energies eV/atom).

    :returns: ``known_materials`` (SinglefileData), for ``energy_above_hull``.
    """
    from aiida_battgen.data.known_materials import load_known_materials
    from battgen.known_materials.online import merge_references

    references = []
    for label, node in sorted(snapshots.items()):
        if not isinstance(node, orm.SinglefileData):  # the dynamic namespace accepts any Data
            return ERROR_INVALID_SNAPSHOT.format(
                detail=f"{label} is {type(node).__name__}, not of the right type (SinglefileData)")
        try:
            references.append(load_known_materials(node, cache=False))
        except KnownMaterialsFormatError as exc:
            return ERROR_INVALID_SNAPSHOT.format(detail=f"{label}: {exc}")
    versions = sorted({str(known.header.get("database_version")) for known in references})
    if len(versions) != 1:
        return ERROR_MIXED_VERSIONS.format(versions=", ".join(versions))
    payload = merge_references(references, versions[0])
    return orm.SinglefileData(io.BytesIO(payload), filename=f"materials_project_{versions[0]}.jsonl.gz")
