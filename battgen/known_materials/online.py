"""Known materials from the Materials Project itself, one fetch per chemical system.

With an API key (``MP_API_KEY`` or pymatgen's ``PMG_MAPI_KEY``; never written anywhere), the hull and the
post-relaxation novelty of a candidate come from every MP material of its chemical space: the candidate's
chemical system and all its sub-systems (Li-Fe-O needs Li-O, Fe-O, Li-Fe and the elements too). Each
system is fetched once (``materials.summary.search(chemsys=...)``) and cached by the caller per system and
MP database version; :func:`fetch_systems` fetches only the systems it is told are missing and returns
either all of them or raises — never a part.

Energies are MP's corrected ``energy_per_atom`` (MP2020 for the current database), so candidates are
placed on the hull with the same MLIP correction as for the embedded reference.
"""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Callable, Iterable
from typing import Any

from pymatgen.core import Composition, Structure

from battgen.known_materials import FORMAT, FORMAT_VERSION, KnownMaterials
from battgen.sources.materials_project import doc_value

SNAPSHOT_FIELDS = ("material_id", "formula_pretty", "structure", "energy_per_atom", "energy_above_hull")


class MaterialsProjectFetchError(RuntimeError):
    """A fetch failed part-way (network, rate limit, authentication): nothing was returned."""


def chemical_space(system: str) -> list[str]:
    """All chemical systems inside ``system`` (``"Fe-Li-O"`` → Fe, Li, O, Fe-Li, Fe-O, Li-O, Fe-Li-O)."""
    elements = sorted(system.split("-"))
    return ["-".join(combo) for k in range(1, len(elements) + 1) for combo in itertools.combinations(elements, k)]


def systems_to_fetch(candidate_systems: Iterable[str]) -> list[str]:
    """The union of the chemical spaces of the candidates' systems, sorted."""
    return sorted({sub for system in candidate_systems for sub in chemical_space(system)})


def _default_rester(api_key: str):
    from mp_api.client import MPRester

    return MPRester(api_key=api_key, mute_progress_bars=True)


def _record(doc: Any) -> dict[str, Any]:
    from battgen.batch import structure_to_row

    structure = doc_value(doc, "structure")
    if isinstance(structure, dict):
        structure = Structure.from_dict(structure)
    composition = structure.composition
    energy = doc_value(doc, "energy_per_atom")
    return {
        "material_id": str(doc_value(doc, "material_id")),
        "formula": composition.reduced_formula,
        "chemical_system": composition.chemical_system,
        "sources": ["materials_project"],
        "energy_per_atom_eV": None if energy is None else float(energy),
        "energy_source": "materials_project_summary",
        "e_above_hull_mp_eV_per_atom": doc_value(doc, "energy_above_hull"),
        "structure": structure_to_row(structure) if structure.is_ordered else None,
    }


def database_version(api_key: str, rester_factory: Callable[[str], Any] | None = None) -> str:
    try:
        with (rester_factory or _default_rester)(api_key) as rester:
            return str(rester.get_database_version())
    except Exception as exc:  # noqa: BLE001 - network / auth errors of any client
        raise MaterialsProjectFetchError(f"Materials Project database version query failed: {type(exc).__name__}") from None


def fetch_systems(systems: Iterable[str], api_key: str,
                  rester_factory: Callable[[str], Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Records of every MP material of each chemical system (one search per system), all or nothing."""
    fetched: dict[str, list[dict[str, Any]]] = {}
    try:
        with (rester_factory or _default_rester)(api_key) as rester:
            for system in systems:
                docs = rester.materials.summary.search(chemsys=system, fields=list(SNAPSHOT_FIELDS))
                fetched[system] = [_record(doc) for doc in docs]
    except Exception as exc:  # noqa: BLE001 - the message may hold the URL, never the key: name the type only
        done = len(fetched)
        raise MaterialsProjectFetchError(
            f"Materials Project fetch failed after {done} chemical system(s) ({type(exc).__name__}); nothing kept"
        ) from None
    return fetched


def snapshot_bytes(system: str, version: str, records: list[dict[str, Any]]) -> bytes:
    """One chemical system's records as a known-materials file (cached by the caller)."""
    return reference_bytes(records, name=f"Materials Project {system}", database_version=version,
                           chemical_systems=[system])


def reference_bytes(records: list[dict[str, Any]], name: str, database_version: str,
                    chemical_systems: list[str]) -> bytes:
    """Records as a ``battgen.known_materials`` file (gzipped JSON lines, deterministic bytes)."""
    unique = {record["material_id"]: record for record in records}
    ordered = [unique[key] for key in sorted(unique)]
    header = {
        "format": FORMAT, "version": FORMAT_VERSION, "name": name,
        "licence": "CC-BY-4.0 (Materials Project data: Jain et al., APL Mater. 1, 011002 (2013))",
        "energy_scheme": "Materials Project corrected energy_per_atom (MP2020), eV/atom",
        "database_version": database_version, "chemical_systems": sorted(chemical_systems),
        "n_records": len(ordered),
        "n_structures": sum(r["structure"] is not None for r in ordered),
        "n_energies": sum(r["energy_per_atom_eV"] is not None for r in ordered),
        "n_chemical_systems": len({r["chemical_system"] for r in ordered}),
    }
    lines = [json.dumps(header, separators=(",", ":"))] + [json.dumps(r, separators=(",", ":")) for r in ordered]
    return gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)


def merge_references(references: Iterable[KnownMaterials], database_version: str) -> bytes:
    """Several per-system references as one file (records by MP id)."""
    records, systems = [], []
    for known in references:
        records.extend(known.records)
        systems.extend(known.header.get("chemical_systems", []))
    return reference_bytes(records, name="Materials Project (fetched per chemical system)",
                           database_version=database_version, chemical_systems=systems)


def candidate_systems(structures: Iterable[Structure]) -> list[str]:
    return sorted({Composition(s.composition).chemical_system for s in structures})


__all__ = ["MaterialsProjectFetchError", "chemical_space", "database_version", "fetch_systems",
           "merge_references", "reference_bytes", "snapshot_bytes", "systems_to_fetch"]
