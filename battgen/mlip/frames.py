"""DFT training frames for interatomic potentials: read relaxation trajectories, pick frames, write extxyz.

Seed 002 trains NequIP on "the first three steps and the final step of the structural optimization
trajectories" of Materials Project crystals; :func:`select_frame_indices` with ``"seed002"`` does exactly
that for every trajectory (a trajectory with fewer than four frames keeps all of them, once each).

A frame is an :class:`ase.Atoms` with a ``SinglePointCalculator`` holding

* ``energy``: total energy, eV
* ``forces``: eV/Å, shape (n_atoms, 3)
* ``stress`` (when the source has it): **eV/Å³, ASE sign convention** (positive = tensile, Voigt order
  xx, yy, zz, yz, xz, xy). VASP reports kbar with the opposite sign, so ``stress_eV_A3 = -0.1 * GPa *
  stress_kbar``.

and ``atoms.info`` keys ``trajectory_id`` (str), ``frame_index`` (position in its trajectory),
``n_frames_in_trajectory`` and ``source`` (file name or ``mp:<task id>``).

What counts as a trajectory:

* a VASP ``vasprun.xml[.gz]`` or an ASE ``.traj`` file: one trajectory (its ionic steps);
* an extxyz file: frames grouped by their ``trajectory_id`` info key when present, otherwise the whole
  file is one trajectory (ASE's convention for a trajectory written to xyz);
* a Materials Project trajectory JSON (the dict ``MPRester().materials.tasks.get_trajectory`` returns):
  one trajectory per document;
* data sets of independent DFT frames (``mlearn`` JSON, ``li_al_mlip`` ``Data.json`` + ``poscars.zip``):
  every frame is its own one-frame trajectory, so every selection keeps all of them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import GPa

FRAME_SELECTIONS = ("seed002", "all", "every_n")
# Seed 002: "only the first three steps and the final step" of each relaxation.
SEED002_FIRST_STEPS = 3
# kbar -> eV/Å³ with VASP's sign flipped to ASE's (VASP: positive = compressive).
KBAR_TO_ASE_STRESS_EV_A3 = -0.1 * GPa
# VASP / mlearn Voigt order (xx, yy, zz, xy, yz, zx) -> ASE order (xx, yy, zz, yz, xz, xy)
_VASP_TO_ASE_VOIGT = [0, 1, 2, 4, 5, 3]


class FrameFormatError(ValueError):
    """A frame source cannot be read, or a frame lacks energy or forces."""


# --- building frames ------------------------------------------------------------------------------
def make_frame(
    atoms: Atoms,
    energy_eV: float,
    forces_eV_A: Any,
    stress_eV_A3: Any | None = None,
    **info: Any,
) -> Atoms:
    """A copy of ``atoms`` carrying DFT labels (stress in ASE Voigt order and sign) and ``info``."""
    frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    forces = np.asarray(forces_eV_A, dtype=float)
    if forces.shape != (len(frame), 3):
        raise FrameFormatError(f"forces have shape {forces.shape}, expected ({len(frame)}, 3)")
    results: dict[str, Any] = {"energy": float(energy_eV), "forces": forces}
    if stress_eV_A3 is not None:
        stress = np.asarray(stress_eV_A3, dtype=float)
        if stress.shape == (3, 3):
            stress = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        if stress.shape != (6,):
            raise FrameFormatError(f"stress has shape {stress.shape}, expected (6,) or (3, 3)")
        results["stress"] = stress
    frame.calc = SinglePointCalculator(frame, **results)
    frame.info.update(info)
    return frame


def _labelled(atoms: Atoms, source: str) -> Atoms:
    """An ASE-read frame (its calculator holds energy/forces/stress) re-labelled as a training frame."""
    results = atoms.calc.results if atoms.calc is not None else {}
    if "energy" not in results or "forces" not in results:
        raise FrameFormatError(f"{source}: a frame has no energy or no forces")
    info = {k: v for k, v in atoms.info.items() if k in ("trajectory_id", "frame_index", "source")}
    info.setdefault("source", source)
    return make_frame(atoms, results["energy"], results["forces"], results.get("stress"), **info)


def _number_trajectory(frames: list[Atoms], trajectory_id: str) -> list[Atoms]:
    for index, frame in enumerate(frames):
        frame.info.update(trajectory_id=trajectory_id, frame_index=index, n_frames_in_trajectory=len(frames))
    return frames


# --- readers --------------------------------------------------------------------------------------
def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_ase_trajectory(path: Path) -> list[list[Atoms]]:
    """A vasprun.xml / .traj file (one trajectory) or an extxyz file (grouped by ``trajectory_id``)."""
    from ase.io import read

    try:
        images = read(str(path), index=":")
    except Exception as exc:  # noqa: BLE001 - ASE raises many types for an unreadable file
        raise FrameFormatError(f"{path.name}: ASE cannot read it ({exc})") from exc
    frames = [_labelled(atoms, path.name) for atoms in images]
    if not frames:
        raise FrameFormatError(f"{path.name}: no frames")
    groups: dict[str, list[Atoms]] = {}
    for frame in frames:
        groups.setdefault(str(frame.info.get("trajectory_id", path.name)), []).append(frame)
    for frames_of_group in groups.values():
        # A file written by write_frames keeps its original frame_index: order by it, not by file position.
        if all("frame_index" in f.info for f in frames_of_group):
            frames_of_group.sort(key=lambda f: int(f.info["frame_index"]))
    return [_number_trajectory(group, trajectory_id) for trajectory_id, group in groups.items()]


def _is_mlearn_records(data: Any) -> bool:
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "outputs" in data[0]


def _is_mp_trajectory(data: Any) -> bool:
    return isinstance(data, dict) and "cart_coords" in data and "elements" in data


def read_mlearn_frames(records: list[dict[str, Any]], source: str) -> list[list[Atoms]]:
    """mlearn records: pymatgen structure, total energy (eV), forces (eV/Å), virial stress (kbar, VASP order)."""
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    trajectories = []
    for index, record in enumerate(records):
        atoms = AseAtomsAdaptor.get_atoms(Structure.from_dict(record["structure"]))
        outputs = record["outputs"]
        stress = outputs.get("virial_stress")
        if stress is not None:
            stress = np.asarray(stress, dtype=float)[_VASP_TO_ASE_VOIGT] * KBAR_TO_ASE_STRESS_EV_A3
        frame = make_frame(atoms, outputs["energy"], outputs["forces"], stress, source=source,
                           group=str(record.get("group", "")))
        trajectories.append(_number_trajectory([frame], f"{source}#{index}"))
    return trajectories


def read_li_al_mlip_frames(directory: Path) -> list[list[Atoms]]:
    """A li_al_mlip subset: ``Data.json`` (total energies eV, forces eV/Å, labels) + ``poscars.zip``."""
    from ase.io import read

    data = json.loads((directory / "Data.json").read_text(encoding="utf-8"))
    trajectories = []
    with zipfile.ZipFile(directory / "poscars.zip") as archive:
        for energy, forces, label, index in zip(data["Energies"], data["Forces"], data["Labels"], data["Index"]):
            text = archive.read(f"{index}.POSCAR.vasp").decode("utf-8")
            atoms = read(io.StringIO(text), format="vasp")
            source = f"{directory.parent.name}/{directory.name}"
            frame = make_frame(atoms, energy, forces, source=source, group=str(label))
            trajectories.append(_number_trajectory([frame], f"{source}#{index}"))
    return trajectories


def frames_from_mp_trajectory(document: dict[str, Any]) -> list[Atoms]:
    """One MP relaxation trajectory (an emmet ``RelaxTrajectory`` dict) as frames.

    Energies eV (``e_wo_entrp``, else ``energy``), forces eV/Å, stress 3x3 in kbar (VASP convention)
    converted to ASE eV/Å³.
    """
    numbers = np.asarray(document["elements"], dtype=int)
    coords = document["cart_coords"]
    lattices = document.get("lattice")
    # ``energy`` is VASP's e_0_energy, which some VASP versions write wrongly to vasprun.xml (0.0 in the
    # pymatgen Li fixture); e_wo_entrp is what ASE's vasprun reader returns, so both paths agree.
    energies = document.get("e_wo_entrp") or document.get("energy")
    forces, stresses = document.get("forces"), document.get("stress")
    if lattices is None or energies is None or forces is None:
        raise FrameFormatError(f"MP trajectory {document.get('identifier')}: no lattice, energy or forces")
    task_id = str(document.get("identifier") or "unknown")
    frames = []
    for step, positions in enumerate(coords):
        if positions is None:
            continue  # a step stored without geometry cannot be a training frame
        atoms = Atoms(numbers=numbers, positions=positions, cell=lattices[step], pbc=True)
        stress = None
        if stresses is not None and stresses[step] is not None:
            stress = np.asarray(stresses[step], dtype=float) * KBAR_TO_ASE_STRESS_EV_A3
        frames.append(make_frame(atoms, energies[step], forces[step], stress, source=f"mp:{task_id}"))
    return _number_trajectory(frames, f"mp:{task_id}")


def fetch_mp_trajectories(
    task_ids: Sequence[str],
    api_key: str | None = None,
    rester_factory: Callable[..., Any] | None = None,
) -> list[list[Atoms]]:
    """Relaxation trajectories of MP tasks, online.

    Call path: ``with MPRester(api_key) as rester: rester.materials.tasks.get_trajectory(task_id)``
    (mp-api >= 0.45; each call returns an emmet ``RelaxTrajectory`` dict; energies eV, forces eV/Å,
    stress kbar). Task ids of a material's relaxations come from ``rester.materials.search(material_ids=
    [...], fields=["calc_types"])`` (the ``Structure Optimization`` entries). ``rester_factory`` replaces
    ``MPRester`` (tests, caching proxies).
    """
    if rester_factory is None:
        from mp_api.client import MPRester

        from battgen.sources.materials_project import resolve_api_key

        api_key = resolve_api_key(api_key)
        rester_factory = MPRester
    kwargs = {"api_key": api_key} if api_key else {}
    trajectories = []
    with rester_factory(**kwargs) as rester:
        for task_id in task_ids:
            trajectories.append(frames_from_mp_trajectory(rester.materials.tasks.get_trajectory(str(task_id))))
    return trajectories


def read_trajectories(path: str | Path) -> list[list[Atoms]]:
    """Every trajectory in one source (see the module docstring for what a trajectory is)."""
    path = Path(path)
    if path.is_dir():
        if (path / "Data.json").is_file() and (path / "poscars.zip").is_file():
            return read_li_al_mlip_frames(path)
        raise FrameFormatError(f"{path}: a directory must hold Data.json + poscars.zip (li_al_mlip layout)")
    if not path.is_file():
        raise FrameFormatError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith((".json", ".json.gz")):
        with _open_text(path) as handle:
            data = json.load(handle)
        if _is_mlearn_records(data):
            return read_mlearn_frames(data, path.parent.name + "/" + path.name)
        documents = data if isinstance(data, list) else [data]
        if documents and all(_is_mp_trajectory(d) for d in documents):
            return [frames_from_mp_trajectory(d) for d in documents]
        raise FrameFormatError(f"{path.name}: JSON is neither mlearn records nor MP trajectories")
    if "vasprun" in name or name.endswith((".traj", ".xyz", ".extxyz", ".xyz.gz", ".extxyz.gz")):
        return read_ase_trajectory(path)
    raise FrameFormatError(
        f"{path.name}: unknown frame source (vasprun.xml[.gz], .traj, .xyz/.extxyz, mlearn or MP trajectory "
        ".json, li_al_mlip directory)"
    )


# --- selection, split, writing --------------------------------------------------------------------
def select_frame_indices(n_frames: int, selection: str = "seed002", every_n: int | None = None) -> list[int]:
    """Indices of the frames kept from one trajectory of ``n_frames`` frames, ascending."""
    if selection not in FRAME_SELECTIONS:
        raise ValueError(f"frame_selection must be one of {FRAME_SELECTIONS}, got {selection!r}")
    if n_frames <= 0:
        return []
    if selection == "all":
        return list(range(n_frames))
    if selection == "seed002":
        return sorted(set(range(min(SEED002_FIRST_STEPS, n_frames))) | {n_frames - 1})
    if isinstance(every_n, bool) or not isinstance(every_n, int) or every_n < 1:
        raise ValueError(f"frame_selection every_n needs a positive integer every_n, got {every_n!r}")
    # The relaxed end point is always kept: it is the one frame every relaxation must teach.
    return sorted(set(range(0, n_frames, every_n)) | {n_frames - 1})


def select_frames(
    trajectories: Iterable[list[Atoms]], selection: str = "seed002", every_n: int | None = None
) -> list[Atoms]:
    """The chosen frames of every trajectory, in trajectory order."""
    return [
        trajectory[index]
        for trajectory in trajectories
        for index in select_frame_indices(len(trajectory), selection, every_n)
    ]


def drop_unphysical_frames(frames: Sequence[Atoms], max_force_eV_A: float | None) -> tuple[list[Atoms], int]:
    """Frames whose largest force component is at most ``max_force_eV_A`` (None keeps all); and how many went.

    Real relaxations contain blown-up ionic steps (the chgnet NbOC fixture's step 1: +19858 eV, forces of
    16657 eV/Å), and the first steps are exactly the ones seed 002 keeps.
    """
    if max_force_eV_A is None:
        return list(frames), 0
    kept = [frame for frame in frames if float(np.abs(frame.get_forces()).max(initial=0.0)) <= max_force_eV_A]
    return kept, len(frames) - len(kept)


def write_frames(frames: Sequence[Atoms], path: str | Path) -> str:
    """Write frames as extxyz (energy eV, forces eV/Å, stress eV/Å³); returns the file's sha256."""
    from ase.io import write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(str(path), list(frames), format="extxyz")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chemical_species(frames: Iterable[Atoms]) -> list[str]:
    """Element symbols present in the frames, ordered by atomic number."""
    from ase.data import chemical_symbols

    return [chemical_symbols[z] for z in sorted({int(z) for frame in frames for z in frame.numbers})]
