"""What both relaxation engines (the ASE loop in :mod:`battgen.mlip.relax`, the batched one in
:mod:`battgen.mlip.batched`) share about a row: when a relaxation has left physics ("exploded"), and the
checkpoint of finished rows (JSON lines: a settings header, then one finished row per line)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from battgen.checkpoint import atomic_write_text

# Beyond these a relaxation has left physics: stop it and keep the starting structure.
EXPLODED_MAX_FORCE_EV_PER_A = 1.0e3
EXPLODED_VOLUME_FACTOR = 3.0


def _max_force(forces: np.ndarray) -> float:
    return float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0


def _explosion_reason(energy: float, forces: np.ndarray, volume_ratio: float,
                      max_volume_factor: float = EXPLODED_VOLUME_FACTOR) -> str | None:
    if not math.isfinite(energy) or not np.all(np.isfinite(forces)):
        return "non-finite energy or forces"
    if _max_force(forces) > EXPLODED_MAX_FORCE_EV_PER_A:
        return f"max force {_max_force(forces):.3g} eV/Å above {EXPLODED_MAX_FORCE_EV_PER_A:g} eV/Å"
    if not (1.0 / max_volume_factor <= volume_ratio <= max_volume_factor):
        return f"volume changed by a factor {volume_ratio:.3g} (limit ×{max_volume_factor:g} / ÷{max_volume_factor:g})"
    return None


def _checkpoint_line(structure: Structure, row: dict[str, Any], record: dict[str, Any]) -> str:
    return json.dumps({"row": row, "record": record, "structure": structure.as_dict()}, default=str)


def _append_checkpoint(path: Path, settings: dict[str, Any] | None, structure: Structure, row: dict[str, Any],
                       record: dict[str, Any]) -> None:
    """Append one finished row (flushed and synced: the job may be killed right after)."""
    lines = []
    if not path.exists() or path.stat().st_size == 0:
        lines.append(json.dumps({"checkpoint_settings": settings or {}}))
    lines.append(_checkpoint_line(structure, row, record))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_relax_checkpoint(path: Path, settings: dict[str, Any] | None,
                           done: dict[str, tuple[Structure, dict[str, Any], dict[str, Any]]]) -> None:
    """Write a clean checkpoint holding ``done`` (drops a torn last line before new rows are appended)."""
    lines = [json.dumps({"checkpoint_settings": settings or {}})]
    lines += [_checkpoint_line(structure, row, record) for structure, row, record in done.values()]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def read_relax_checkpoint(path: Path, settings: dict[str, Any] | None = None
                          ) -> dict[str, tuple[Structure, dict[str, Any], dict[str, Any]]]:
    """Rows finished by an earlier job: ``{row_id: (relaxed structure, row metadata, record)}``.

    A missing file means nothing was finished. A torn last line (the job was killed while writing it) is
    ignored. Raises ``ValueError`` when the checkpoint was written with other result-changing settings.
    """
    path = Path(path)
    if not path.exists():
        return {}
    done: dict[str, tuple[Structure, dict[str, Any], dict[str, Any]]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn line of a killed job: that row is relaxed again
        if number == 0:
            written = entry.get("checkpoint_settings", {})
            if settings is not None and written != json.loads(json.dumps(settings)):
                raise ValueError(f"checkpoint {path.name} was written with other settings {written}, not {settings}")
            continue
        done[entry["row"]["row_id"]] = (Structure.from_dict(entry["structure"]), entry["row"], entry["record"])
    return done
