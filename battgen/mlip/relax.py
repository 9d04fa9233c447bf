"""Batched relaxation of a StructureBatch with a machine-learned potential (ASE optimiser + cell filter).

One calculator is loaded once and reused for every row. Each row ends in one of four states, stored in
its metadata as ``relax_status``:

* ``converged``: max force (and, with a cell filter, stress) below ``fmax`` within ``max_steps``;
* ``not_converged``: ``max_steps`` reached; the last structure is kept so a restart continues from it;
* ``exploded``: non-finite energy or forces, a force above 1000 eV/Å, or a volume change beyond ×3 or ÷3;
  the *starting* structure is kept (the trajectory is garbage) and energies are left empty;
* ``unsupported_element``: the model was not trained on an element of the row; not relaxed.

``run_relax_command`` is the ``battgen relax`` command run by the AiiDA ``MlipRelaxCalculation``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from ase.filters import ExpCellFilter, FrechetCellFilter
from ase.optimize import BFGS, FIRE, LBFGS
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from tqdm import tqdm

from battgen.batch import BatchFormatError, StructureBatch
from battgen.cli import InvalidInputError
from battgen.mlip.calculators import MlipInfo, load_mlip, mlip_entry_point_name

RELAX_STATUSES = ("converged", "not_converged", "exploded", "unsupported_element")
CELL_FILTERS = {"frechet": FrechetCellFilter, "exp": ExpCellFilter, None: None}
OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS, "LBFGS": LBFGS}
# Beyond these a relaxation has left physics: stop it and keep the starting structure.
EXPLODED_MAX_FORCE_EV_PER_A = 1.0e3
EXPLODED_VOLUME_FACTOR = 3.0

INPUT_FILENAME = "structures.jsonl.gz"
OUTPUT_FILENAME = "relaxed.jsonl.gz"
RECORDS_FILENAME = "relax_records.json"
# One JSON line per finished row, appended as rows finish: a job killed at the walltime (or on a dead
# node) is continued from it by a new job that finds it in its working directory.
CHECKPOINT_FILENAME = "relax_checkpoint.jsonl"
# Settings that change a row's result: a checkpoint written with other values is not continued.
CHECKPOINT_SETTINGS = ("mlip", "model_path", "fmax", "max_steps", "cell_filter", "optimizer", "maxstep")
# Columns added to each row, with their units in their names (converged is a bool, volume_change a ratio).
RELAX_COLUMNS = (
    "energy_eV", "energy_per_atom_eV", "max_force_eV_per_A", "n_steps", "converged", "relax_status",
    "volume_change", "relax_message",
)
UNITS = {
    "energy_eV": "eV", "energy_per_atom_eV": "eV/atom", "max_force_eV_per_A": "eV/Å", "fmax": "eV/Å",
    "maxstep": "Å", "volume_change": "V_final/V_initial", "wall_time_s": "s",
}
# Settings of ``battgen relax`` with their defaults (``input`` is the batch file in the working directory).
RELAX_DEFAULTS: dict[str, Any] = {
    "input": INPUT_FILENAME,
    "mlip": "chgnet",
    "fmax": 0.05,
    "max_steps": 500,
    "cell_filter": "frechet",
    "optimizer": "FIRE",
    "maxstep": 0.2,
    "model_path": None,
    "device": "cpu",
    "progress": True,
    "checkpoint": True,
    # A checkpoint of an interrupted job to continue from (relative to the workdir; may be missing: then
    # nothing had finished). The AiiDA CalcJob links the parent's work directory as ``parent/``.
    "resume_from": None,
}
# Which loader argument receives ``model_path`` for each MLIP.
_MODEL_PATH_ARGUMENT = {"battgen.chgnet": "model_path", "battgen.sevennet": "model", "battgen.m3gnet": "model"}


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


def load_relax_mlip(mlip: str = "chgnet", model_path: str | None = None, device: str = "cpu") -> tuple[Any, MlipInfo]:
    """Load (or take from the per-process cache) the MLIP ``mlip``, optionally from ``model_path``."""
    name = mlip_entry_point_name(mlip)
    kwargs: dict[str, Any] = {"device": device}
    if model_path:
        kwargs[_MODEL_PATH_ARGUMENT.get(name, "model_path")] = str(model_path)
    return load_mlip(name, **kwargs)


def relax_structure(
    structure: Structure,
    calculator: Any,
    *,
    supported_elements: set[str] | frozenset[str] | None = None,
    fmax: float = 0.05,
    max_steps: int = 500,
    cell_filter: str | None = "frechet",
    optimizer: str = "FIRE",
    maxstep: float = 0.2,
    max_volume_factor: float = EXPLODED_VOLUME_FACTOR,
) -> tuple[Structure, dict[str, Any]]:
    """Relax one structure with ``calculator``; returns (structure to keep, record of the relaxation).

    ``fmax`` in eV/Å, ``maxstep`` (largest step of the optimiser) in Å. A volume change beyond
    ``max_volume_factor`` (either way) counts as a blow-up; raise it where large changes are physical
    (delithiating Li15Si4 towards Si shrinks the cell about 3.8 times). The record holds the
    :data:`RELAX_COLUMNS`; energies are ``None`` when the row was not relaxed or exploded.
    """
    started = time.perf_counter()
    record: dict[str, Any] = {
        "energy_eV": None, "energy_per_atom_eV": None, "max_force_eV_per_A": None, "n_steps": 0,
        "converged": False, "volume_change": None, "relax_message": "",
    }
    symbols = {el.symbol for el in structure.composition.elements}
    missing = sorted(symbols - set(supported_elements)) if supported_elements is not None else []
    if missing:
        record.update(
            relax_status="unsupported_element", unsupported_elements=missing,
            relax_message=f"element(s) {', '.join(missing)} not supported by the model",
        )
        record["wall_time_s"] = round(time.perf_counter() - started, 4)
        return structure, record

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calculator
    initial_volume = atoms.get_volume()
    target = CELL_FILTERS[cell_filter](atoms) if cell_filter else atoms
    opt = OPTIMIZERS[optimizer](target, maxstep=maxstep, logfile=None)
    explosion = None
    converged = False
    try:
        # irun yields after every force evaluation: check for a blow-up before taking the next step.
        for converged in opt.irun(fmax=fmax, steps=max_steps):
            explosion = _explosion_reason(
                atoms.get_potential_energy(), atoms.get_forces(), atoms.get_volume() / initial_volume,
                max_volume_factor,
            )
            if explosion:
                break
    except (ValueError, RuntimeError, FloatingPointError, IndexError) as exc:
        # The model or the neighbour list gave up on the geometry: as useless as a blow-up.
        explosion = f"calculator failed: {type(exc).__name__}: {exc}"

    record["n_steps"] = int(opt.nsteps)
    if explosion:
        record.update(relax_status="exploded", relax_message=explosion)
        record["wall_time_s"] = round(time.perf_counter() - started, 4)
        return structure, record

    energy = float(atoms.get_potential_energy())
    record.update(
        energy_eV=energy,
        energy_per_atom_eV=energy / len(atoms),
        max_force_eV_per_A=_max_force(atoms.get_forces()),
        converged=bool(converged),
        relax_status="converged" if converged else "not_converged",
        volume_change=float(atoms.get_volume() / initial_volume),
    )
    if not converged:
        record["relax_message"] = f"not converged to fmax={fmax} eV/Å in {max_steps} steps"
    record["wall_time_s"] = round(time.perf_counter() - started, 4)
    # Site properties (magmoms ...) are not stored in batch files; the structure is what matters here.
    return AseAtomsAdaptor.get_structure(atoms), record


def relax_batch(
    batch: StructureBatch,
    mlip: str = "chgnet",
    fmax: float = 0.05,
    max_steps: int = 500,
    cell_filter: str | None = "frechet",
    optimizer: str = "FIRE",
    model_path: str | None = None,
    maxstep: float = 0.2,
    progress: bool = True,
    device: str = "cpu",
    calculator: Any = None,
    supported_elements: set[str] | None = None,
    checkpoint: Path | None = None,
    checkpoint_settings: dict[str, Any] | None = None,
) -> tuple[StructureBatch, list[dict[str, Any]]]:
    """Relax every row of ``batch`` with one MLIP calculator.

    Returns the relaxed batch (row ids and existing metadata kept, :data:`RELAX_COLUMNS` added), one
    record per row (``row_id`` + the relax columns + ``wall_time_s``). The model is loaded once (and
    cached per process, see :func:`load_relax_mlip`); pass ``calculator`` (with ``supported_elements``)
    to use an already loaded ASE calculator instead, e.g. a cheap one in tests. With ``checkpoint`` (a
    JSON-lines file) every finished row is appended to it, and rows already in it are taken from it
    instead of being relaxed again (see :func:`read_relax_checkpoint`).
    """
    if cell_filter not in CELL_FILTERS:
        raise ValueError(f"cell_filter must be one of {list(CELL_FILTERS)}, got {cell_filter!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    supported = supported_elements
    if calculator is None:
        calculator, info = load_relax_mlip(mlip, model_path=model_path, device=device)
        supported = info.supported_elements

    done = read_relax_checkpoint(checkpoint, checkpoint_settings) if checkpoint is not None else {}
    structures, meta, records = [], [], []
    rows = tqdm(batch, total=len(batch), desc=f"relax ({mlip})", unit="struct", disable=not progress)
    for row_meta, structure in rows:
        if row_meta["row_id"] in done:  # finished by an earlier, interrupted job
            relaxed, row, record = done[row_meta["row_id"]]
            structures.append(relaxed)
            meta.append(row)
            records.append(record)
            continue
        # Rows flagged fixed_cell (molecules in a vacuum box, e.g. O2 references) relax positions only:
        # a cell filter would shrink the box the molecule needs.
        relaxed, record = relax_structure(
            structure, calculator, supported_elements=supported, fmax=fmax, max_steps=max_steps,
            cell_filter=None if row_meta.get("fixed_cell") else cell_filter, optimizer=optimizer, maxstep=maxstep,
        )
        structures.append(relaxed)
        row = {**row_meta, **{key: record[key] for key in RELAX_COLUMNS}}
        row.pop("unsupported_elements", None)  # a stale flag from an earlier relaxation of this row
        if record.get("unsupported_elements"):
            row["unsupported_elements"] = record["unsupported_elements"]
        meta.append(row)
        records.append({"row_id": row_meta["row_id"], **record})
        if checkpoint is not None:
            _append_checkpoint(checkpoint, checkpoint_settings, relaxed, row, records[-1])
    return StructureBatch(structures, meta), records


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
    _atomic_write_text(Path(path), "\n".join(lines) + "\n")


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


def status_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """Rows per relax status (every status present, zeros included)."""
    counts = Counter(r["relax_status"] for r in records)
    return {status: int(counts.get(status, 0)) for status in RELAX_STATUSES}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def validate_relax_config(config: dict[str, Any]) -> dict[str, Any]:
    """Config with defaults filled in; raises InvalidInputError naming the bad key."""
    unknown = sorted(set(config) - set(RELAX_DEFAULTS))
    if unknown:
        raise InvalidInputError(f"unknown relax setting(s) {unknown}; allowed: {sorted(RELAX_DEFAULTS)}")
    settings = {**RELAX_DEFAULTS, **config}
    try:
        settings["mlip"] = mlip_entry_point_name(str(settings["mlip"])).removeprefix("battgen.")
    except KeyError as exc:
        raise InvalidInputError(exc.args[0]) from exc
    for key in ("fmax", "maxstep"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise InvalidInputError(f"{key} must be a positive number, got {value!r}")
        settings[key] = float(value)
    if isinstance(settings["max_steps"], bool) or not isinstance(settings["max_steps"], int) or settings["max_steps"] < 1:
        raise InvalidInputError(f"max_steps must be a positive integer, got {settings['max_steps']!r}")
    if settings["cell_filter"] not in CELL_FILTERS:
        raise InvalidInputError(f"cell_filter must be one of {list(CELL_FILTERS)}, got {settings['cell_filter']!r}")
    if settings["optimizer"] not in OPTIMIZERS:
        raise InvalidInputError(f"optimizer must be one of {list(OPTIMIZERS)}, got {settings['optimizer']!r}")
    if not isinstance(settings["checkpoint"], bool):
        raise InvalidInputError(f"checkpoint must be true or false, got {settings['checkpoint']!r}")
    if settings["resume_from"] is not None and not isinstance(settings["resume_from"], str):
        raise InvalidInputError(f"resume_from must be a path relative to the workdir, got {settings['resume_from']!r}")
    return settings


def run_relax_command(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """``battgen relax``: relax the batch file ``input`` and write ``relaxed.jsonl.gz`` + ``relax_records.json``."""
    settings = validate_relax_config(config)
    workdir = Path(workdir)
    try:
        batch = StructureBatch.read(workdir / settings["input"])
    except BatchFormatError as exc:
        raise InvalidInputError(f"cannot read the input batch: {exc}") from exc
    if settings["model_path"] and not Path(settings["model_path"]).expanduser().exists():
        raise InvalidInputError(f"model_path {settings['model_path']} does not exist")

    checkpoint = workdir / CHECKPOINT_FILENAME if settings["checkpoint"] else None
    checkpoint_settings = {key: settings[key] for key in CHECKPOINT_SETTINGS}
    resumed = 0
    if checkpoint is not None:
        source = workdir / settings["resume_from"] if settings["resume_from"] else checkpoint
        try:
            done = read_relax_checkpoint(source, checkpoint_settings)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc
        done = {row_id: value for row_id, value in done.items() if row_id in set(batch.row_ids)}
        write_relax_checkpoint(checkpoint, checkpoint_settings, done)
        resumed = len(done)

    started = time.perf_counter()
    calculator, info = load_relax_mlip(settings["mlip"], settings["model_path"], settings["device"])
    relaxed, records = relax_batch(
        batch, mlip=settings["mlip"], fmax=settings["fmax"], max_steps=settings["max_steps"],
        cell_filter=settings["cell_filter"], optimizer=settings["optimizer"], maxstep=settings["maxstep"],
        progress=bool(settings["progress"]), calculator=calculator, supported_elements=info.supported_elements,
        checkpoint=checkpoint, checkpoint_settings=checkpoint_settings,
    )
    wall_time = time.perf_counter() - started

    # Write to a temporary name and rename: a killed job never leaves a half file under the final name.
    tmp = workdir / (OUTPUT_FILENAME + ".tmp")
    relaxed.write(tmp)
    os.replace(tmp, workdir / OUTPUT_FILENAME)
    _atomic_write_text(workdir / RECORDS_FILENAME, json.dumps({"units": UNITS, "records": records}, indent=1))

    model = info.as_dict()
    model.pop("supported_elements")  # long and derivable from the model; the hash identifies it
    return {
        "files": {"relaxed": OUTPUT_FILENAME, "records": RECORDS_FILENAME},
        "n_rows": len(relaxed),
        "counts": status_counts(records),
        "unsupported_elements": sorted({el for r in records for el in r.get("unsupported_elements", [])}),
        "model": model,
        "settings": {k: settings[k] for k in ("mlip", "fmax", "max_steps", "cell_filter", "optimizer", "maxstep")},
        "relax_wall_time_s": round(wall_time, 3),
        "rows_from_checkpoint": resumed,
        "units": UNITS,
    }
