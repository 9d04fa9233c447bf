"""The ``battgen md`` trajectory format: chunk files, the MD state (restart point) and reading frames back.

* ``traj/chunk_NNNN.npz``: frames of one chunk (``positions_A`` (unwrapped, as integrated), ``cell_A``,
  ``numbers``, ``phase``, ``phase_time_fs``, ``step``, ``temperature_K``, ``potential_energy_eV``,
  ``kinetic_energy_eV``, ``conserved_energy_eV``, ``pressure_GPa``), written atomically;
* ``md_state.json`` + ``md_state.npz`` (positions, momenta, cell at full precision).

Used by the MD run (:mod:`battgen.md.run`) and the diffusion analysis (:mod:`battgen.md.analysis`), which
therefore do not import each other for it. File names: :mod:`battgen.contracts.md`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from battgen.checkpoint import atomic_write_json, atomic_write_npz
from battgen.contracts.md import STATE_ARRAYS_FILENAME, STATE_FILENAME, TRAJ_DIRNAME


def chunk_path(workdir: Path, index: int) -> Path:
    return Path(workdir) / TRAJ_DIRNAME / f"chunk_{index:04d}.npz"


def list_chunks(workdir: Path) -> list[Path]:
    return sorted((Path(workdir) / TRAJ_DIRNAME).glob("chunk_[0-9][0-9][0-9][0-9].npz"))


def read_state(workdir: Path) -> tuple[dict[str, Any], Atoms] | None:
    """(state dict, atoms with positions/momenta/cell of the last complete chunk), or None without a state."""
    workdir = Path(workdir)
    if not (workdir / STATE_FILENAME).exists():
        return None
    state = json.loads((workdir / STATE_FILENAME).read_text(encoding="utf-8"))
    arrays = np.load(workdir / STATE_ARRAYS_FILENAME)
    atoms = Atoms(numbers=arrays["numbers"], positions=arrays["positions_A"], cell=arrays["cell_A"], pbc=arrays["pbc"])
    atoms.set_momenta(arrays["momenta"])
    return state, atoms


def write_state(workdir: Path, state: dict[str, Any], atoms: Atoms) -> None:
    # Arrays first: a state JSON always refers to arrays at least as new as itself.
    atomic_write_npz(
        Path(workdir) / STATE_ARRAYS_FILENAME, numbers=atoms.numbers, positions_A=atoms.get_positions(),
        momenta=atoms.get_momenta(), cell_A=np.array(atoms.get_cell()), pbc=atoms.pbc,
    )
    atomic_write_json(Path(workdir) / STATE_FILENAME, state)


def load_frames(workdir: Path, phase: str | None = None) -> dict[str, np.ndarray]:
    """All frames of the complete chunks (optionally of one phase), concatenated in time order."""
    columns: dict[str, list[np.ndarray]] = {}
    numbers = None
    for path in list_chunks(workdir):
        with np.load(path) as chunk:
            keep = np.ones(len(chunk["step"]), dtype=bool) if phase is None else chunk["phase"] == phase
            numbers = chunk["numbers"]
            for key in chunk.files:
                if key != "numbers":
                    columns.setdefault(key, []).append(chunk[key][keep])
    frames = {key: np.concatenate(values) for key, values in columns.items()}
    if numbers is not None:
        frames["numbers"] = numbers
    return frames
