"""Training frames for NequIP: seed 002's frame selection, units of every reader, the MP trajectory path."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write
from ase.optimize import BFGS
from ase.units import GPa

from battgen.mlip.frames import (
    drop_unphysical_frames,
    fetch_mp_trajectories,
    frames_from_mp_trajectory,
    make_frame,
    read_trajectories,
    select_frame_indices,
    select_frames,
    write_frames,
)

# Trajectory lengths of the synthetic file, and what seed 002 keeps of each (first three + last).
TRAJECTORY_LENGTHS = {"t0": 6, "t1": 2, "t2": 4, "t3": 1}
SEED002_KEPT = {"t0": [0, 1, 2, 5], "t1": [0, 1], "t2": [0, 1, 2, 3], "t3": [0]}


def _labelled_energy_eV(trajectory: int, step: int) -> float:
    return -10.0 * trajectory - 0.1 * step


@pytest.fixture
def multi_trajectory_extxyz(tmp_path):
    """Four trajectories in one extxyz, frames interleaved, energy encoding (trajectory, step)."""
    frames = []
    for t, (name, length) in enumerate(TRAJECTORY_LENGTHS.items()):
        for step in range(length):
            atoms = Atoms("Li2", positions=[[0, 0, 0], [1.5 + 0.01 * step, 1.5, 1.5]], cell=[3, 3, 3], pbc=True)
            forces = np.full((2, 3), 0.01 * step)
            frames.append(make_frame(atoms, _labelled_energy_eV(t, step), forces, trajectory_id=name, frame_index=step))
    # Interleave: a writer that appends trajectories step by step must still be read back per trajectory.
    order = sorted(range(len(frames)), key=lambda i: (frames[i].info["frame_index"], i))
    path = tmp_path / "relaxations.extxyz"
    write(path, [frames[i] for i in order])
    return path


def test_seed002_keeps_the_first_three_and_the_last_frame_of_each_trajectory(multi_trajectory_extxyz):
    trajectories = read_trajectories(multi_trajectory_extxyz)
    assert {t[0].info["trajectory_id"]: len(t) for t in trajectories} == TRAJECTORY_LENGTHS
    selected = select_frames(trajectories, "seed002")
    kept = {}
    for frame in selected:
        kept.setdefault(frame.info["trajectory_id"], []).append(frame.info["frame_index"])
    assert kept == SEED002_KEPT
    # The labels travel with the frames: energy encodes (trajectory, step).
    names = list(TRAJECTORY_LENGTHS)
    for frame in selected:
        t, step = names.index(frame.info["trajectory_id"]), frame.info["frame_index"]
        assert frame.get_potential_energy() == pytest.approx(_labelled_energy_eV(t, step))
        assert frame.get_forces()[0, 0] == pytest.approx(0.01 * step)


@pytest.mark.parametrize(
    ("n_frames", "selection", "every_n", "expected"),
    [
        (10, "seed002", None, [0, 1, 2, 9]),
        (3, "seed002", None, [0, 1, 2]),
        (4, "all", None, [0, 1, 2, 3]),
        (7, "every_n", 3, [0, 3, 6]),
        (8, "every_n", 3, [0, 3, 6, 7]),  # the relaxed end point is always kept
        (0, "seed002", None, []),
    ],
)
def test_frame_indices_per_selection(n_frames, selection, every_n, expected):
    assert select_frame_indices(n_frames, selection, every_n) == expected


@pytest.mark.parametrize(("selection", "every_n"), [("first_and_last", None), ("every_n", None), ("every_n", 0)])
def test_bad_frame_selection_is_rejected(selection, every_n):
    with pytest.raises(ValueError, match="frame_selection"):
        select_frame_indices(5, selection, every_n)


def _emt_relaxation(n_steps: int = 5, seed: int = 0) -> list[Atoms]:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.1, seed=seed)
    atoms.calc = EMT()
    optimizer = BFGS(atoms, logfile=None)
    frames = []
    for step in range(n_steps):
        frames.append(make_frame(atoms, atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(),
                                 trajectory_id=f"emt{seed}", frame_index=step))
        optimizer.step()
    return frames


def test_extxyz_round_trip_keeps_energy_forces_stress_and_hash(tmp_path):
    frames = _emt_relaxation()
    digest = write_frames(frames, tmp_path / "frames.extxyz")
    assert digest == hashlib.sha256((tmp_path / "frames.extxyz").read_bytes()).hexdigest()
    (trajectory,) = read_trajectories(tmp_path / "frames.extxyz")
    assert len(trajectory) == len(frames)
    for written, read_back in zip(frames, trajectory):
        assert read_back.get_potential_energy() == pytest.approx(written.get_potential_energy(), abs=1e-10)
        # ASE's extxyz writes per-atom arrays with 8 decimals: 1e-8 eV/Å is the file's resolution.
        np.testing.assert_allclose(read_back.get_forces(), written.get_forces(), atol=1e-8)
        np.testing.assert_allclose(read_back.get_stress(), written.get_stress(), atol=1e-10)


def test_unphysical_frames_are_dropped_by_largest_force():
    atoms = Atoms("Li2", positions=[[0, 0, 0], [1.5, 1.5, 1.5]], cell=[3, 3, 3], pbc=True)
    calm = make_frame(atoms, -3.0, [[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    blown_up = make_frame(atoms, 2.0e4, [[0.0, 0.0, 1.6e4], [0.0, 0.0, -1.6e4]])
    assert drop_unphysical_frames([calm, blown_up], 100.0) == ([calm], 1)
    assert drop_unphysical_frames([calm, blown_up], None) == ([calm, blown_up], 0)


# --- Materials Project trajectories, with the network replaced ------------------------------------
def _mp_trajectory_document(frames: list[Atoms], task_id: str) -> dict:
    """What ``MPRester().materials.tasks.get_trajectory`` returns: an emmet RelaxTrajectory dump (stress kbar,
    VASP sign), built through emmet's own schema so a field rename there breaks this test."""
    from emmet.core.trajectory import RelaxTrajectory

    return RelaxTrajectory(
        identifier=task_id,
        elements=[int(z) for z in frames[0].numbers],
        cart_coords=[f.positions.tolist() for f in frames],
        lattice=[f.cell.array.tolist() for f in frames],
        num_ionic_steps=len(frames),
        energy=[f.get_potential_energy() for f in frames],
        e_wo_entrp=[f.get_potential_energy() for f in frames],
        forces=[f.get_forces().tolist() for f in frames],
        stress=[(-f.get_stress(voigt=False) / (0.1 * GPa)).tolist() for f in frames],
    ).model_dump()


class _TasksStandIn:
    def __init__(self, documents: dict[str, dict]) -> None:
        self.documents = documents
        self.requested: list[str] = []

    def get_trajectory(self, task_id: str) -> dict:
        self.requested.append(task_id)
        return self.documents[task_id]


class _MPResterStandIn:
    """Replaces ``mp_api.client.MPRester``: same context manager and ``materials.tasks`` path, no network."""

    last: _MPResterStandIn | None = None

    def __init__(self, documents: dict[str, dict], api_key: str | None = None) -> None:
        self.api_key = api_key
        self.materials = type("Materials", (), {})()
        self.materials.tasks = _TasksStandIn(documents)
        _MPResterStandIn.last = self

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def test_mp_trajectory_path_with_the_network_replaced():
    relaxation = _emt_relaxation(n_steps=6, seed=3)
    documents = {"mp-30": _mp_trajectory_document(relaxation, "mp-30")}
    (trajectory,) = fetch_mp_trajectories(
        ["mp-30"], api_key="not-a-real-key", rester_factory=lambda **kw: _MPResterStandIn(documents, **kw)
    )
    assert _MPResterStandIn.last.api_key == "not-a-real-key"
    assert _MPResterStandIn.last.materials.tasks.requested == ["mp-30"]
    assert [f.info["frame_index"] for f in trajectory] == list(range(6))
    assert {f.info["source"] for f in trajectory} == {"mp:mp-30"}
    for expected, frame in zip(relaxation, trajectory):
        assert frame.get_potential_energy() == pytest.approx(expected.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(frame.get_forces(), expected.get_forces(), atol=1e-9)
        # kbar (VASP sign) back to ASE eV/Å³ gives EMT's own stress.
        np.testing.assert_allclose(frame.get_stress(), expected.get_stress(), atol=1e-9)
    assert [f.info["frame_index"] for f in select_frames([trajectory])] == [0, 1, 2, 5]


def test_mp_trajectory_without_forces_is_rejected():
    document = _mp_trajectory_document(_emt_relaxation(n_steps=2), "mp-1")
    document["forces"] = None
    with pytest.raises(ValueError, match="no lattice, energy or forces"):
        frames_from_mp_trajectory(document)


# --- shared real data -----------------------------------------------------------------------------
@pytest.mark.shared_data
def test_mlearn_li_frames_carry_dft_energy_forces_and_stress_in_ase_units(shared_data):
    trajectories = read_trajectories(shared_data / "mlearn" / "Li" / "training.json")
    assert len(trajectories) == 241  # independent frames: one-frame trajectories
    frame = trajectories[0][0]
    assert len(frame) == 53
    assert frame.get_potential_energy() == pytest.approx(-98.30410711)  # eV, total
    assert frame.info["group"] == "Vacancy"
    # virial_stress kbar, VASP order (xx yy zz xy yz zx) = (2.028..., ..., -0.0521, -0.2908, 0.6097), VASP sign
    kbar = 0.1 * GPa
    assert frame.get_stress()[0] == pytest.approx(-2.02804759 * kbar)
    assert frame.get_stress()[3] == pytest.approx(0.29082961 * kbar)  # yz
    assert frame.get_stress()[5] == pytest.approx(0.05211401 * kbar)  # xy
    assert frame.get_stress()[0] == pytest.approx(-1.26578e-3, rel=1e-4)  # eV/Å³
    assert len(select_frames(trajectories, "seed002")) == 241


@pytest.mark.shared_data
def test_li_al_mlip_frames_read_with_energies_and_forces(shared_data):
    trajectories = read_trajectories(shared_data / "li_al_mlip" / "Validation")
    assert len(trajectories) == 66
    frame = trajectories[0][0]
    assert len(frame) == 108 and frame.get_forces().shape == (108, 3)
    assert frame.get_potential_energy() == pytest.approx(-396.02443427)


@pytest.mark.shared_data
def test_vasprun_and_mp_trajectory_paths_agree_on_a_real_relaxation(shared_data):
    """The chgnet NbOC relaxation (49 ionic steps) read by ASE and through emmet's RelaxTrajectory schema."""
    from emmet.core.trajectory import RelaxTrajectory
    from pymatgen.io.vasp import Vasprun

    path = shared_data / "vasp_fixtures_chgnet" / "NbOC_relax_isif3" / "vasprun.xml.gz"
    (from_ase,) = read_trajectories(path)
    document = RelaxTrajectory.from_vasprun(Vasprun(str(path)), identifier="mp-0").model_dump()
    from_mp = frames_from_mp_trajectory(document)
    assert len(from_ase) == len(from_mp) == 49
    assert from_ase[-1].get_potential_energy() == pytest.approx(-253.79850545)
    for a, b in zip(from_ase, from_mp):
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-6)
        np.testing.assert_allclose(a.get_stress(), b.get_stress(), atol=1e-8)
    selected = select_frames([from_ase], "seed002")
    assert [f.info["frame_index"] for f in selected] == [0, 1, 2, 48]
    # Step 1 of this real run blew up (+19858 eV): the force cut removes it and nothing else.
    kept, n_dropped = drop_unphysical_frames(selected, 100.0)
    assert n_dropped == 1 and [f.info["frame_index"] for f in kept] == [0, 2, 48]
