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
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ase.filters import ExpCellFilter, FrechetCellFilter
from ase.optimize import BFGS, FIRE, LBFGS
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from battgen.batch import BatchFormatError, StructureBatch
from battgen.checkpoint import atomic_write_text
from battgen.columns import RELAX_COLUMNS
from battgen.contracts.relax import (CHECKPOINT_FILENAME, INPUT_FILENAME, OUTPUT_FILENAME, RECORDS_FILENAME,  # noqa: F401
                                     RELAX_STATUSES, RelaxSettings)
from battgen.errors import InvalidInputError
from battgen.mlip.calculators import MlipInfo, load_mlip, mlip_entry_point_name
# Shared with the batched engine (battgen.mlip.batched), which must not import this module.
from battgen.mlip.relax_rows import (EXPLODED_MAX_FORCE_EV_PER_A, EXPLODED_VOLUME_FACTOR,  # noqa: F401
                                     _append_checkpoint, _explosion_reason, _max_force, read_relax_checkpoint,
                                     write_relax_checkpoint)
from battgen.sources.files import read_input_batch
from battgen.progress import track

CELL_FILTERS = {"frechet": FrechetCellFilter, "exp": ExpCellFilter, None: None}
OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS, "LBFGS": LBFGS}
# Settings that change a row's result: a checkpoint written with other values is not continued.
CHECKPOINT_SETTINGS = ("mlip", "model_path", "fmax", "max_steps", "cell_filter", "optimizer", "maxstep")
# Columns added to each row, with their units in their names (converged is a bool, volume_change a ratio).
UNITS = {
    "energy_eV": "eV", "energy_per_atom_eV": "eV/atom", "max_force_eV_per_A": "eV/Å", "fmax": "eV/Å",
    "maxstep": "Å", "volume_change": "V_final/V_initial", "wall_time_s": "s",
}
# Settings of ``battgen relax`` with their defaults: declared once, in battgen.contracts.relax.RelaxSettings
# (``resume_from``: a checkpoint of an interrupted job; the AiiDA CalcJob links the parent's workdir as ``parent/``).
RELAX_DEFAULTS: dict[str, Any] = RelaxSettings.defaults()
# Which loader argument receives ``model_path`` for each MLIP.
_MODEL_PATH_ARGUMENT = {"battgen.chgnet": "model_path", "battgen.sevennet": "model", "battgen.sevennet_l3i5": "model",
                        "battgen.m3gnet": "model"}


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
    engine: str = "ase",
    batch_max_atoms: int | None = None,
    engine_report: dict[str, Any] | None = None,
) -> tuple[StructureBatch, list[dict[str, Any]]]:
    """Relax every row of ``batch`` with one MLIP calculator.

    Returns the relaxed batch (row ids and existing metadata kept, :data:`RELAX_COLUMNS` added), one
    record per row (``row_id`` + the relax columns + ``wall_time_s``). The model is loaded once (and
    cached per process, see :func:`load_relax_mlip`); pass ``calculator`` (with ``supported_elements``)
    to use an already loaded ASE calculator instead, e.g. a cheap one in tests. With ``checkpoint`` (a
    JSON-lines file) every finished row is appended to it, and rows already in it are taken from it
    instead of being relaxed again (see :func:`read_relax_checkpoint`). ``engine="batched"`` relaxes the
    rows in flight together (:mod:`battgen.mlip.batched`) where the potential and settings allow it and
    falls back to this loop otherwise; ``engine_report`` (a dict) receives which engine ran and its stats.
    """
    if cell_filter not in CELL_FILTERS:
        raise ValueError(f"cell_filter must be one of {list(CELL_FILTERS)}, got {cell_filter!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    supported = supported_elements
    if calculator is None:
        calculator, info = load_relax_mlip(mlip, model_path=model_path, device=device)
        supported = info.supported_elements
    if engine == "batched":
        from battgen.mlip.batched import try_relax_batched

        result = try_relax_batched(
            batch, calculator, supported_elements=supported, fmax=fmax, max_steps=max_steps, cell_filter=cell_filter,
            optimizer=optimizer, maxstep=maxstep, device=device, max_atoms=batch_max_atoms, progress=progress,
            checkpoint=checkpoint, checkpoint_settings=checkpoint_settings, report=engine_report, desc=f"relax ({mlip})",
        )
        if result is not None:
            return result
    elif engine_report is not None:
        engine_report["engine"] = "ase"

    done = read_relax_checkpoint(checkpoint, checkpoint_settings) if checkpoint is not None else {}
    structures, meta, records = [], [], []
    rows = track(batch, total=len(batch), desc=f"relax ({mlip})", unit="struct", disable=not progress,
                 label=lambda item: f"{item[0]['row_id']} ({item[1].composition.reduced_formula})")
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


def status_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """Rows per relax status (every status present, zeros included)."""
    counts = Counter(r["relax_status"] for r in records)
    return {status: int(counts.get(status, 0)) for status in RELAX_STATUSES}


def validate_relax_config(config: dict[str, Any]) -> dict[str, Any]:
    """Config with defaults filled in (:class:`~battgen.contracts.relax.RelaxSettings`); raises InvalidInputError
    naming the bad key and its allowed range."""
    return RelaxSettings.settings_dict(config)


def run_relax_command(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """``battgen relax``: relax the batch file ``input`` and write ``relaxed.jsonl.gz`` + ``relax_records.json``."""
    settings = validate_relax_config(config)
    workdir = Path(workdir)
    try:
        batch = read_input_batch(workdir / settings["input"])
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
    engine: dict[str, Any] = {}
    relaxed, records = relax_batch(
        batch, mlip=settings["mlip"], fmax=settings["fmax"], max_steps=settings["max_steps"],
        cell_filter=settings["cell_filter"], optimizer=settings["optimizer"], maxstep=settings["maxstep"],
        progress=bool(settings["progress"]), calculator=calculator, supported_elements=info.supported_elements,
        checkpoint=checkpoint, checkpoint_settings=checkpoint_settings, device=settings["device"],
        engine=settings["engine"], batch_max_atoms=settings["batch_max_atoms"], engine_report=engine,
    )
    wall_time = time.perf_counter() - started

    # Write to a temporary name and rename: a killed job never leaves a half file under the final name.
    tmp = workdir / (OUTPUT_FILENAME + ".tmp")
    relaxed.write(tmp)
    os.replace(tmp, workdir / OUTPUT_FILENAME)
    atomic_write_text(workdir / RECORDS_FILENAME, json.dumps({"units": UNITS, "records": records}, indent=1))

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
        "engine": engine,
        "units": UNITS,
    }
