"""The known-materials reference file (``battgen.known_materials``) as one stored node per version.

The file is validated before anything is stored (a wrong format or version raises
:class:`~battgen.known_materials.KnownMaterialsFormatError`, nothing is stored), then stored once as a
``SinglefileData`` whose attributes name it (``known_materials_version``, ``sha256``, counts); later calls
return the stored node of the same bytes, so every discovery run of a profile links to the same node.
"""

from __future__ import annotations

from pathlib import Path

from aiida import orm

from battgen.known_materials import DEFAULT_PATH, KnownMaterials

SHA256_EXTRA = "battgen_known_materials_sha256"


def known_materials_node(path: str | Path | None = None) -> orm.SinglefileData:
    """The stored node of a known-materials file (default: the one embedded in battgen)."""
    path = Path(path) if path else DEFAULT_PATH
    known = KnownMaterials.load(path)  # raises before anything is stored
    query = orm.QueryBuilder().append(orm.SinglefileData, filters={f"extras.{SHA256_EXTRA}": known.sha256})
    existing = query.first(flat=True)
    if existing is not None:
        return existing
    node = orm.SinglefileData(file=str(path), filename=path.name)
    attributes = node.base.attributes
    attributes.set("known_materials_version", known.version)
    attributes.set("sha256", known.sha256)
    for key in ("n_records", "n_structures", "n_energies", "n_chemical_systems"):
        attributes.set(key, known.header.get(key))
    attributes.set("licence", known.header.get("licence"))
    node.label = known.label
    node.description = "Materials-Project-derived reference of known materials (CC-BY 4.0), battgen.known_materials"
    node.store()
    node.base.extras.set(SHA256_EXTRA, known.sha256)
    return node


def load_known_materials(node: orm.SinglefileData, cache: bool = True) -> KnownMaterials:
    """The reference held by a node; raises KnownMaterialsFormatError for another kind of file."""
    with node.open(mode="rb") as handle:
        payload = handle.read()
    if not cache:
        return KnownMaterials.from_bytes(payload, source=f"SinglefileData<{node.pk}>")
    return _from_bytes_cached(payload, f"SinglefileData<{node.pk}>")


# --- Materials Project snapshots, one node per chemical system and database version -------------------
SNAPSHOT_SYSTEM_EXTRA = "battgen_mp_chemical_system"
SNAPSHOT_VERSION_EXTRA = "battgen_mp_database_version"


def find_mp_snapshot(system: str, database_version: str) -> orm.SinglefileData | None:
    """The stored snapshot of one chemical system for one MP database version, if any."""
    query = orm.QueryBuilder().append(orm.SinglefileData, filters={
        f"extras.{SNAPSHOT_SYSTEM_EXTRA}": system, f"extras.{SNAPSHOT_VERSION_EXTRA}": database_version})
    return query.first(flat=True)


def store_mp_snapshot(system: str, database_version: str, payload: bytes) -> orm.SinglefileData:
    """Store one chemical system's MP records (a known-materials file, validated first); never a key."""
    import io

    known = KnownMaterials.from_bytes(payload, source=f"MP snapshot {system}")
    node = orm.SinglefileData(io.BytesIO(payload), filename=f"mp_{system}_{database_version}.jsonl.gz")
    attributes = node.base.attributes
    attributes.set("source_kind", "materials_project")
    attributes.set("chemical_system", system)
    attributes.set("database_version", database_version)
    attributes.set("n_records", known.header["n_records"])
    attributes.set("sha256", known.sha256)
    node.label = f"Materials Project {system} ({database_version})"
    node.store()
    node.base.extras.set_many({SNAPSHOT_SYSTEM_EXTRA: system, SNAPSHOT_VERSION_EXTRA: database_version})
    return node


_CACHE: dict[str, KnownMaterials] = {}


def _from_bytes_cached(payload: bytes, source: str) -> KnownMaterials:
    import hashlib

    digest = hashlib.sha256(payload).hexdigest()
    if digest not in _CACHE:
        _CACHE.clear()  # one reference at a time: a few tens of MB parsed
        _CACHE[digest] = KnownMaterials.from_bytes(payload, source=source)
    return _CACHE[digest]
