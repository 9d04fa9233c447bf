"""``battgen hull --config x.yaml``: the command plumbing (config keys, files, summary) around
:mod:`battgen.stability.hull`; the known-materials route goes through :mod:`battgen.known_materials`, which
builds on the hull module (so the physics module never imports it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from battgen.batch import BatchFormatError, StructureBatch
from battgen.sources.files import read_input_batch
from battgen.stability.hull import (
    DEFAULT_OUTPUT,
    HULL_DESCRIPTION_FILE,
    MP2020,
    HullError,
    ReferenceHull,
    _check_scheme,
    annotate_batch,
)

def _resolve(workdir: Path, value: Any, key: str) -> Path:
    from battgen.errors import InvalidInputError

    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"config key {key!r} must be a file path")
    path = Path(value)
    return path if path.is_absolute() else workdir / path


def hull_from_config(config: dict[str, Any], workdir: Path) -> ReferenceHull:
    """The reference hull a ``battgen hull`` config asks for (``reference_batch`` or ``reference_entries``)."""
    from battgen.errors import InvalidInputError

    from battgen.stability.entries import EntriesFormatError, load_entries

    has_batch, has_entries = "reference_batch" in config, "reference_entries" in config
    if has_batch == has_entries:
        raise InvalidInputError("give exactly one of 'reference_batch' (MLIP energies) or 'reference_entries'")
    try:
        if has_batch:
            path = _resolve(workdir, config["reference_batch"], "reference_batch")
            compatibility = config.get("compatibility")
            _check_scheme(compatibility)
            label = config.get("label") or f"energy batch {path.name}"
            return ReferenceHull.from_energy_batch(read_input_batch(path), label, compatibility)
        path = _resolve(workdir, config["reference_entries"], "reference_entries")
        compatibility = config.get("compatibility", MP2020)
        _check_scheme(compatibility)
        label = config.get("label") or f"entries {path.name} ({compatibility or 'as stored'})"
        return ReferenceHull.from_entries(load_entries(path), label, compatibility, copy=False)
    except (HullError, BatchFormatError, EntriesFormatError) as exc:
        raise InvalidInputError(str(exc)) from exc


_HULL_CONFIG_KEYS = {"structures", "reference_batch", "reference_entries", "known_materials", "label",
                     "compatibility", "candidate_compatibility", "output"}


def run_hull_command(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """``battgen hull``: annotate a batch with energies against a reference hull.

    Config: ``structures`` (batch file with ``energy_eV`` per row), one of ``reference_batch`` (batch
    file with ``energy_eV``: the MLIP route) or ``reference_entries`` (``.json[.gz]`` entries or
    ``.jsonl[.gz]`` snapshot), optional ``label``, ``compatibility`` (``MP2020`` or null; default MP2020
    for entries, null for a reference batch), ``candidate_compatibility`` (default: ``compatibility``)
    and ``output`` (default ``annotated.jsonl.gz``). Writes the annotated batch and ``hull.json``.

    Without ``reference_batch`` / ``reference_entries`` the hull is the known-materials reference
    (``known_materials``: ``embedded`` — the default, battgen's MP-derived MP2020 energies — or a file
    path): each row against the hull of its own chemical space, MLIP energies corrected with MP2020
    (``candidate_compatibility``), flagged ``hull_incomplete`` where that space holds no known compound.
    """
    from battgen.errors import InvalidInputError

    unknown = sorted(set(config) - _HULL_CONFIG_KEYS)
    if unknown:
        raise InvalidInputError(f"unknown config key(s) {unknown}; allowed: {sorted(_HULL_CONFIG_KEYS)}")
    if "structures" not in config:
        raise InvalidInputError("config needs 'structures': the batch file with energy_eV per row")
    try:
        batch = read_input_batch(_resolve(workdir, config["structures"], "structures"))
    except BatchFormatError as exc:
        raise InvalidInputError(str(exc)) from exc
    if all(meta.get("energy_eV") is None for meta in batch.meta):
        raise InvalidInputError(f"none of the {len(batch)} rows of {config['structures']} has an energy_eV")
    if "reference_batch" not in config and "reference_entries" not in config \
            and config.get("known_materials", "embedded") is not None:
        return _known_materials_hull_command(config, batch, workdir)
    hull = hull_from_config(config, workdir)
    candidate_compatibility = config.get("candidate_compatibility", hull.compatibility)
    try:
        _check_scheme(candidate_compatibility)
    except HullError as exc:
        raise InvalidInputError(str(exc)) from exc

    annotated = annotate_batch(batch, hull, candidate_compatibility)
    output = config.get("output", DEFAULT_OUTPUT)
    annotated.write(workdir / output)
    description = hull.describe()
    (workdir / HULL_DESCRIPTION_FILE).write_text(json.dumps(description, indent=1), encoding="utf-8")
    e_hull = [v for v in annotated.column("e_above_hull_eV_per_atom") if v is not None]
    return {
        "annotated": output,
        "hull_description": HULL_DESCRIPTION_FILE,
        "hull_label": hull.label,
        "candidate_compatibility": candidate_compatibility,
        "n_rows": len(annotated),
        "n_annotated": len(e_hull),
        "n_errors": sum(v is not None for v in annotated.column("hull_error")),
        "n_on_or_below_hull": sum(v <= 1e-8 for v in e_hull),
        "units": {"e_above_hull_eV_per_atom": "eV/atom", "formation_energy_per_atom_eV": "eV/atom"},
    }


def _known_materials_hull_command(config: dict[str, Any], batch: StructureBatch, workdir: Path) -> dict[str, Any]:
    from battgen.errors import InvalidInputError
    from battgen.known_materials import KnownMaterials, KnownMaterialsFormatError, annotate_against_known

    value = config.get("known_materials", "embedded")
    for key in ("compatibility",):
        if key in config:
            raise InvalidInputError(f"{key!r} does not apply to the known-materials hull (its energies are MP2020)")
    candidate_compatibility = config.get("candidate_compatibility", MP2020)
    try:
        _check_scheme(candidate_compatibility)
        known = KnownMaterials.load(None if value == "embedded" else _resolve(workdir, value, "known_materials"))
    except (HullError, KnownMaterialsFormatError) as exc:
        raise InvalidInputError(str(exc)) from exc
    annotated, description = annotate_against_known(batch, known, candidate_compatibility, match_relaxed=True)
    if config.get("label"):
        description["label"] = config["label"]
    output = config.get("output", DEFAULT_OUTPUT)
    annotated.write(workdir / output)
    (workdir / HULL_DESCRIPTION_FILE).write_text(json.dumps(description, indent=1), encoding="utf-8")
    e_hull = [v for v in annotated.column("e_above_hull_eV_per_atom") if v is not None]
    return {
        "annotated": output,
        "hull_description": HULL_DESCRIPTION_FILE,
        "hull_label": description["label"],
        "known_materials_version": known.version,
        "candidate_compatibility": candidate_compatibility,
        "n_rows": len(annotated),
        "n_annotated": len(e_hull),
        "n_errors": sum(v is not None for v in annotated.column("hull_error")),
        "n_hull_incomplete": sum(bool(v) for v in annotated.column("hull_incomplete")),
        "n_relaxed_matches_known": sum(v is not None for v in annotated.column("relaxed_matches_known")),
        "n_on_or_below_hull": sum(v <= 1e-8 for v in e_hull),
        "units": {"e_above_hull_eV_per_atom": "eV/atom", "formation_energy_per_atom_eV": "eV/atom"},
    }


__all__ = ["hull_from_config", "run_hull_command"]
