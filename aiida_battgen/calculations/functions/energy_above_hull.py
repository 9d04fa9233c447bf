"""``battgen.energy_above_hull``: annotate a batch with E_hull against a recorded reference hull.

The hull comes from exactly one of three inputs:

* ``reference`` — a batch with total energies ``energy_eV`` per row from the *same* MLIP as the
  candidates (elemental references + known phases): the MLIP route;
* ``reference_entries`` — Materials Project entries: a ``battgen.snapshot`` node (JSON lines after one
  header line, a ComputedStructureEntry dict under ``entry``), a ``SinglefileData`` with an entries
  JSON / JSON-lines file, a ``List`` of entry dicts or a ``JsonableData`` wrapping a list of entries;
* ``known_materials`` — the known-materials reference file (``battgen.known_materials``, MP2020
  energies): each row against the hull of its own chemical space, flagged ``hull_incomplete`` where that
  space holds no known compound, and ``relaxed_matches_known`` (MP id) where the relaxed structure is a
  known one.

The science lives in :mod:`battgen.stability.hull`; this function only moves nodes.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from aiida_battgen.data.batch import StructureBatchData
from battgen.stability.entries import EntriesFormatError, entries_from_bytes, entries_from_json
from battgen.stability.hull import (
    COMPATIBILITY_SCHEMES,
    MP2020,
    HullError,
    IncompleteHullError,
    ReferenceHull,
    annotate_batch,
)

ERROR_NO_ENERGIES = ExitCode(330, "no energies: {detail}", invalidates_cache=True)
ERROR_HULL_INCOMPLETE = ExitCode(331, "reference hull incomplete, missing elements: {elements}", invalidates_cache=True)
ERROR_NO_REFERENCE = ExitCode(332, "no usable reference: {detail}", invalidates_cache=True)
ERROR_INVALID_PARAMETERS = ExitCode(333, "invalid hull parameters: {detail}", invalidates_cache=True)

# Keys accepted in ``parameters`` (defaults in _settings: compatibility depends on the route).
PARAMETER_KEYS = ("compatibility", "candidate_compatibility", "label", "allow_outside_hull")
# The known-materials route: the stored energies are already MP2020; candidates are corrected (default).
KNOWN_MATERIALS_PARAMETER_KEYS = ("candidate_compatibility", "label")


def _read_entries(node: orm.Data) -> list:
    """Reference entries from whichever node type holds them; raises EntriesFormatError."""
    if isinstance(node, orm.List):
        return entries_from_json(node.get_list(), source=f"List<{node.pk}>")
    if isinstance(node, orm.JsonableData):
        return entries_from_json(node.obj, source=f"JsonableData<{node.pk}>")
    if isinstance(node, orm.SinglefileData):  # includes battgen.snapshot
        with node.open(mode="rb") as handle:
            return entries_from_bytes(handle.read(), source=f"{type(node).__name__}<{node.pk}>")
    names = [n for n in node.base.repository.list_object_names() if ".json" in n]
    if len(names) != 1:
        raise EntriesFormatError(f"{type(node).__name__}<{node.pk}> holds no single entries file ({names})")
    return entries_from_bytes(node.base.repository.get_object_content(names[0], mode="rb"), source=names[0])


def _settings(parameters: orm.Dict | None, route: str) -> dict[str, Any]:
    given = parameters.get_dict() if parameters is not None else {}
    unknown = sorted(set(given) - set(PARAMETER_KEYS))
    if unknown:
        raise ValueError(f"unknown keys {unknown}; allowed {list(PARAMETER_KEYS)}")
    # MP entries are corrected with MP2020 by default; MLIP references are used as computed.
    settings = {"compatibility": MP2020 if route == "entries" else None, "label": None, "allow_outside_hull": False}
    settings.update(given)
    settings.setdefault("candidate_compatibility", settings["compatibility"])
    for key in ("compatibility", "candidate_compatibility"):
        if settings[key] not in COMPATIBILITY_SCHEMES:
            raise ValueError(f"{key}={settings[key]!r}; use one of {list(COMPATIBILITY_SCHEMES)}")
    return settings


@calcfunction
def energy_above_hull(
    structures: StructureBatchData,
    parameters: orm.Dict | None = None,
    reference: StructureBatchData | None = None,
    reference_entries: orm.Data | None = None,
    known_materials: orm.SinglefileData | None = None,
):
    """Add E_hull (eV/atom), formation energy (eV/atom) and decomposition to every row of a batch.

    :param structures: candidates with the total energy ``energy_eV`` (eV) of each row's structure.
    :param parameters: ``compatibility`` (``MP2020`` or null; default MP2020 for reference_entries, null
        for reference), ``candidate_compatibility`` (default: compatibility; MP2020 corrects MLIP energies
        as MP-style GGA(+U) entries), ``label`` (names the hull), ``allow_outside_hull`` (default false:
        exit 331 if a candidate element has no reference; true: such rows get ``hull_error``).
    :param reference: MLIP route — references with total energies ``energy_eV`` (eV) per row, from the
        same MLIP as the candidates; must include every element.
    :param reference_entries: DFT route — a node with Materials Project computed entries (energies in
        eV), e.g. a ``battgen.snapshot``.
    :param known_materials: known-materials route — the reference file (MP2020 energies, eV/atom); adds
        ``hull_incomplete``, ``hull_n_competing_compounds``, ``nearest_known_compound`` and
        ``relaxed_matches_known`` columns; ``parameters`` may hold ``candidate_compatibility`` (default
        MP2020) and ``label``.
    :returns: ``structures`` (the annotated batch: ``e_above_hull_eV_per_atom``,
        ``formation_energy_per_atom_eV``, ``decomposition``, ``hull_label``, ``hull_energy_correction_eV``,
        ``hull_error``) and ``hull`` (Dict: label, compatibility, counts, elements, stable phases with
        formation energies in eV/atom).
    """
    if sum(node is not None for node in (reference, reference_entries, known_materials)) != 1:
        return ERROR_NO_REFERENCE.format(
            detail="give exactly one of 'reference', 'reference_entries' or 'known_materials'")
    if known_materials is not None:
        return _known_materials_route(structures, parameters, known_materials)
    route = "batch" if reference is not None else "entries"
    try:
        settings = _settings(parameters, route)
    except ValueError as exc:
        return ERROR_INVALID_PARAMETERS.format(detail=str(exc))

    candidates = structures.get_batch()
    if all(meta.get("energy_eV") is None for meta in candidates.meta):
        return ERROR_NO_ENERGIES.format(detail=f"none of the {len(candidates)} candidate rows has energy_eV")

    try:
        if route == "batch":
            references = reference.get_batch()
            if all(meta.get("energy_eV") is None for meta in references.meta):
                return ERROR_NO_ENERGIES.format(detail=f"none of the {len(references)} reference rows has energy_eV")
            label = settings["label"] or f"energy batch StructureBatchData<{reference.pk}>"
            hull = ReferenceHull.from_energy_batch(references, label, settings["compatibility"])
        else:
            try:
                entries = _read_entries(reference_entries)
            except EntriesFormatError as exc:
                return ERROR_NO_REFERENCE.format(detail=str(exc))
            label = settings["label"] or f"entries {type(reference_entries).__name__}<{reference_entries.pk}>"
            hull = ReferenceHull.from_entries(entries, label, settings["compatibility"], copy=False)
    except IncompleteHullError as exc:
        return ERROR_HULL_INCOMPLETE.format(elements=", ".join(exc.missing_elements))
    except HullError as exc:
        return ERROR_NO_REFERENCE.format(detail=str(exc))

    outside = sorted(set(structures.base.attributes.get("elements", [])) - set(hull.elements))
    if outside and not settings["allow_outside_hull"]:
        return ERROR_HULL_INCOMPLETE.format(
            elements=f"{', '.join(outside)} (candidates contain them, hull spans {'-'.join(hull.elements)})"
        )

    annotated = annotate_batch(candidates, hull, settings["candidate_compatibility"])
    description = hull.describe()
    description["candidate_compatibility"] = settings["candidate_compatibility"]
    return {"structures": StructureBatchData(annotated), "hull": orm.Dict(description)}


def _known_materials_route(structures, parameters, known_materials):
    from aiida_battgen.data.known_materials import load_known_materials
    from battgen.known_materials import KnownMaterialsFormatError, annotate_against_known

    given = parameters.get_dict() if parameters is not None else {}
    unknown = sorted(set(given) - set(KNOWN_MATERIALS_PARAMETER_KEYS))
    if unknown:
        return ERROR_INVALID_PARAMETERS.format(
            detail=f"unknown keys {unknown} for the known-materials hull; allowed {list(KNOWN_MATERIALS_PARAMETER_KEYS)}")
    candidate_compatibility = given.get("candidate_compatibility", MP2020)
    if candidate_compatibility not in COMPATIBILITY_SCHEMES:
        return ERROR_INVALID_PARAMETERS.format(detail=f"candidate_compatibility={candidate_compatibility!r}")
    candidates = structures.get_batch()
    if all(meta.get("energy_eV") is None for meta in candidates.meta):
        return ERROR_NO_ENERGIES.format(detail=f"none of the {len(candidates)} candidate rows has energy_eV")
    try:
        known = load_known_materials(known_materials)
    except KnownMaterialsFormatError as exc:
        return ERROR_NO_REFERENCE.format(detail=str(exc))
    annotated, description = annotate_against_known(candidates, known, candidate_compatibility,
                                                    match_relaxed=True)
    if given.get("label"):
        description["label"] = given["label"]
    description["reference_node"] = f"SinglefileData<{known_materials.pk}>"
    return {"structures": StructureBatchData(annotated), "hull": orm.Dict(description)}
