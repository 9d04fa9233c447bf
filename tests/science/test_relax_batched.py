"""battgen.mlip.batched: the batched relaxation engine against the ASE loop (battgen.mlip.relax).

The engine's bookkeeping (statuses, steps, checkpoint, resume, out-of-memory halving) is checked with ASE's
EMT wrapped in torch-sim's interface (cheap and deterministic: the same potential on both paths, so the
same FIRE trajectory step for step); the CHGNet wrapper is checked against CHGNet's ASE calculator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT
from pymatgen.core import Lattice, Structure

from battgen.batch import StructureBatch
from battgen.mlip.batched import (
    AseCalculatorModel,
    BatchedOutOfMemoryError,
    batched_model_for,
    relax_batch_batched,
    try_relax_batched,
)
from battgen.mlip.relax import RELAX_COLUMNS, read_relax_checkpoint, relax_batch, status_counts

EMT_ELEMENTS = {"Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O"}
SETTINGS = {"fmax": 0.02, "max_steps": 150}


def fcc(element: str, a: float, second: str | None = None) -> Structure:
    species = [element, second or element, element, second or element]
    return Structure(Lattice.cubic(a), species, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def shaken(structure: Structure, seed: int, amplitude: float = 0.08) -> Structure:
    rng = np.random.default_rng(seed)
    return Structure(structure.lattice, structure.species,
                     structure.cart_coords + rng.uniform(-amplitude, amplitude, (len(structure), 3)),
                     coords_are_cartesian=True)


def emt_batch() -> StructureBatch:
    """Converging cells of different sizes, a fixed-cell box, an exploding pair, a collapsing cell, LiCl (not in EMT)."""
    rows = [
        ("cu", shaken(fcc("Cu", 3.7), 0), {}),
        ("al", shaken(fcc("Al", 4.2), 1), {}),
        ("cuau", shaken(fcc("Cu", 3.9, "Au"), 2), {}),
        ("cu8", shaken(fcc("Cu", 3.55).make_supercell([2, 1, 1]), 3), {}),
        ("licl", Structure(Lattice.cubic(4.0), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]), {}),
        ("box", Structure(Lattice.cubic(8.0), ["Cu", "Cu"], [[0, 0, 0], [0.3, 0, 0]]), {"fixed_cell": True}),
        ("pair", Structure(Lattice.cubic(8.0), ["Cu", "Cu"], [[0, 0, 0], [0.0125, 0, 0]]), {}),  # 0.1 Å apart
        ("collapse", Structure(Lattice.cubic(1.2), ["Cu"], [[0, 0, 0]]), {}),  # volume ×4 within 4 steps
    ]
    return StructureBatch.from_structures([s for _, s, _ in rows], [{"row_id": r, **m} for r, _, m in rows])


@pytest.fixture(scope="module")
def sequential():
    return relax_batch(emt_batch(), calculator=EMT(), supported_elements=EMT_ELEMENTS, progress=False, **SETTINGS)


class CountingModel:
    """Wraps a torch-sim model: counts calls, raises ``error`` (an exception instance or a callable of the
    state returning one or None) instead of computing."""

    def __init__(self, inner, error=None):
        self.inner, self.error, self.calls, self.sizes = inner, error, 0, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, state, **kwargs):
        self.calls += 1
        self.sizes.append(state.n_systems)
        error = self.error(state) if callable(self.error) else self.error
        if error is not None:
            raise error
        return self.inner(state, **kwargs)


def test_batched_matches_sequential_on_emt(sequential):
    ref_batch, ref_records = sequential
    model = AseCalculatorModel(EMT())
    relaxed, records, stats = relax_batch_batched(emt_batch(), model, supported_elements=EMT_ELEMENTS,
                                                  max_atoms=12, **SETTINGS)
    assert status_counts(ref_records) == {"converged": 5, "not_converged": 0, "exploded": 2, "unsupported_element": 1}
    assert [r["relax_status"] for r in records] == [r["relax_status"] for r in ref_records]
    assert relaxed.row_ids == ref_batch.row_ids and [r["row_id"] for r in records] == ref_batch.row_ids
    for ours, ref in zip(records, ref_records):
        # Same FIRE, so the same steps until FIRE first decays its mixing parameter α: torch-sim 0.3.0's
        # ase_fire decays α before that step's velocity mixing, ASE after it; from there the trajectories
        # differ at the 1e-6 eV level and end a few steps apart.
        assert abs(ours["n_steps"] - ref["n_steps"]) <= 6, ours["row_id"]
        assert ours["relax_message"].split(" eV")[0] == ref["relax_message"].split(" eV")[0]
        if ref["energy_per_atom_eV"] is None:
            assert ours["energy_per_atom_eV"] is None
        else:
            # within 0.1 meV/atom (the issue asks for a 1 meV/atom median on MP-20 with CHGNet)
            assert ours["energy_per_atom_eV"] == pytest.approx(ref["energy_per_atom_eV"], abs=1e-4)
            assert ours["volume_change"] == pytest.approx(ref["volume_change"], rel=5e-3)  # a within 0.2 %
    assert set(RELAX_COLUMNS) <= set(relaxed.meta[0])
    assert relaxed.get("box")[1].volume == pytest.approx(512.0)  # fixed cell kept
    assert relaxed.get("pair")[1] == emt_batch().get("pair")[1]  # exploded: the starting structure
    assert relaxed.get("licl")[0]["unsupported_elements"] == ["Cl", "Li"]
    # EMT's fcc Cu minimum a ≈ 3.59 Å (as test_mlip_relax checks on the ASE path)
    assert relaxed.get("cu")[1].volume ** (1 / 3) == pytest.approx(3.59, abs=0.02)
    # Rows relax together: fewer model calls than evaluations (largest batch within the 12-atom budget).
    evaluations = sum(r["n_steps"] + 1 for r in records if r["relax_status"] != "unsupported_element")
    assert stats.model_calls < evaluations and 1 < stats.largest_batch <= 4


def test_not_converged_keeps_last_structure_and_counts_steps():
    batch = StructureBatch.from_structures([shaken(fcc("Cu", 3.7), 5)], [{"row_id": "cu"}])
    relaxed, records, _ = relax_batch_batched(batch, AseCalculatorModel(EMT()), supported_elements=EMT_ELEMENTS,
                                              fmax=1e-6, max_steps=3)
    _, ref = relax_batch(batch, calculator=EMT(), supported_elements=EMT_ELEMENTS, fmax=1e-6, max_steps=3, progress=False)
    assert records[0]["relax_status"] == ref[0]["relax_status"] == "not_converged"
    assert records[0]["n_steps"] == ref[0]["n_steps"] == 3
    assert "not converged to fmax=1e-06 eV/Å in 3 steps" in records[0]["relax_message"]
    assert relaxed.structures[0] != batch.structures[0]


def test_resume_after_a_kill_mid_batch(tmp_path, sequential):
    """A job killed while rows are in flight: the finished ones are in the checkpoint, a second job takes
    them over (no model call for them) and relaxes the rest; the result is the uninterrupted one."""
    checkpoint = tmp_path / "relax_checkpoint.jsonl"
    settings = {"mlip": "emt", **SETTINGS}
    killer = CountingModel(AseCalculatorModel(EMT()), error=lambda _: KeyboardInterrupt() if killer.calls > 25 else None)
    with pytest.raises(KeyboardInterrupt):
        relax_batch_batched(emt_batch(), killer, supported_elements=EMT_ELEMENTS, max_atoms=6,
                            checkpoint=checkpoint, checkpoint_settings=settings, **SETTINGS)
    finished = read_relax_checkpoint(checkpoint, settings)
    assert 0 < len(finished) < len(emt_batch())  # killed mid-batch
    second = CountingModel(AseCalculatorModel(EMT()))
    relaxed, records, _ = relax_batch_batched(emt_batch(), second, supported_elements=EMT_ELEMENTS, max_atoms=6,
                                              checkpoint=checkpoint, checkpoint_settings=settings, **SETTINGS)
    ref_batch, ref_records = sequential
    assert relaxed.row_ids == ref_batch.row_ids
    assert [r["relax_status"] for r in records] == [r["relax_status"] for r in ref_records]
    for row_id, (structure, row, record) in finished.items():  # taken over as written
        assert relaxed.get(row_id)[0]["energy_eV"] == row["energy_eV"]
    # the second job evaluated only the rows left (each at least once), not the finished ones again
    left = [r for r in ref_records if r["row_id"] not in finished and r["relax_status"] != "unsupported_element"]
    assert second.calls <= sum(r["n_steps"] + 1 for r in left)
    assert len(read_relax_checkpoint(checkpoint, settings)) == len(emt_batch())
    lines = checkpoint.read_text().splitlines()
    assert json.loads(lines[0]) == {"checkpoint_settings": json.loads(json.dumps(settings))}


def test_out_of_memory_halves_the_batch(sequential):
    """Batches of more than two structures run out of memory: the engine halves its budget (and parks rows
    with their optimiser state) until steps fit; results are the ones of the sequential loop."""
    too_big = CountingModel(AseCalculatorModel(EMT()),
                            error=lambda state: torch.OutOfMemoryError("CUDA out of memory (simulated)")
                            if state.n_systems > 2 else None)
    relaxed, records, stats = relax_batch_batched(emt_batch(), too_big, supported_elements=EMT_ELEMENTS,
                                                  max_atoms=40, **SETTINGS)
    assert stats.oom_halvings >= 1 and stats.max_atoms == 40
    assert sum(size > 2 for size in too_big.sizes) == stats.oom_halvings  # each failed call: one halving
    ref_batch, ref_records = sequential
    assert [r["relax_status"] for r in records] == [r["relax_status"] for r in ref_records]
    for ours, ref in zip(records, ref_records):
        assert abs(ours["n_steps"] - ref["n_steps"]) <= 6, ours["row_id"]
        if ref["energy_eV"] is not None:
            assert ours["energy_per_atom_eV"] == pytest.approx(ref["energy_per_atom_eV"], abs=1e-4)


def test_out_of_memory_with_one_structure_is_a_clear_error():
    always = CountingModel(AseCalculatorModel(EMT()), error=torch.OutOfMemoryError("CUDA out of memory (simulated)"))
    with pytest.raises(BatchedOutOfMemoryError, match="out of memory with one structure") as info:
        relax_batch_batched(emt_batch(), always, supported_elements=EMT_ELEMENTS, max_atoms=40, **SETTINGS)
    assert isinstance(info.value, MemoryError)
    assert len(always.sizes) >= 3 and always.sizes[-1] == 1  # halved down to a single structure first


def test_a_row_the_model_rejects_explodes_alone():
    """A geometry the model raises on (not out of memory) fails its row only, as on the ASE path."""
    picky = CountingModel(AseCalculatorModel(EMT()),
                          error=lambda state: ValueError("no neighbours") if 8 in state.n_atoms_per_system.tolist() else None)
    relaxed, records, stats = relax_batch_batched(emt_batch(), picky, supported_elements=EMT_ELEMENTS,
                                                  max_atoms=40, **SETTINGS)
    by_id = {r["row_id"]: r for r in records}
    assert by_id["cu8"]["relax_status"] == "exploded"
    assert by_id["cu8"]["relax_message"] == "calculator failed: ValueError: no neighbours"
    assert by_id["cu"]["relax_status"] == by_id["al"]["relax_status"] == "converged"


def test_engine_setting_falls_back_to_ase_where_there_is_no_batched_path():
    batch = StructureBatch.from_structures([shaken(fcc("Cu", 3.7), 0)], [{"row_id": "cu"}])
    report: dict = {}
    _, records = relax_batch(batch, calculator=EMT(), supported_elements=EMT_ELEMENTS, progress=False,
                             engine="batched", engine_report=report, **SETTINGS)
    assert report == {"engine": "ase", "fallback_reason": "EMT has no batched model interface"}
    assert records[0]["relax_status"] == "converged"
    assert batched_model_for(EMT()) is None
    for changes, fragment in [({"optimizer": "BFGS"}, "optimizer BFGS"), ({"cell_filter": "exp"}, "cell_filter 'exp'")]:
        kwargs = {"cell_filter": "frechet", "optimizer": "FIRE", **changes}
        report = {}
        assert try_relax_batched(batch, EMT(), supported_elements=EMT_ELEMENTS, fmax=0.05, max_steps=5, maxstep=0.2,
                                 report=report, **kwargs) is None
        assert fragment in report["fallback_reason"]


@pytest.fixture(scope="module")
def chgnet():
    from battgen.mlip.calculators import load_chgnet

    return load_chgnet()


def test_chgnet_batched_model_matches_its_calculator(chgnet):
    import torch_sim as ts

    calculator, _ = chgnet
    cells = [Structure(Lattice.from_parameters(3.84, 3.84, 3.84, 60, 60, 60), ["Si", "Si"], [[0, 0, 0], [0.26, 0.25, 0.24]]),
             Structure(Lattice.cubic(4.2), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.52, 0.5]])]
    model = batched_model_for(calculator)
    out = model(ts.io.structures_to_state(cells, "cpu", torch.float64))
    for i, structure in enumerate(cells):
        atoms = structure.to_ase_atoms()
        atoms.calc = calculator
        assert float(out["energy"][i]) == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
        np.testing.assert_allclose(out["forces"][2 * i:2 * i + 2].numpy(), atoms.get_forces(), atol=1e-4)
        np.testing.assert_allclose(out["stress"][i].numpy(), atoms.get_stress(voigt=False), atol=1e-5)
    assert out["energy"].dtype == torch.float64 and model.device == torch.device("cpu")


def test_battgen_relax_batched_engine_with_chgnet(tmp_path, chgnet):
    """``battgen relax`` with ``engine: batched``: CHGNet rows agree with the ASE engine within 1 meV/atom."""
    from battgen.cli import EXIT_OK, run_command

    si2 = Structure(Lattice.from_parameters(3.84, 3.84, 3.84, 60, 60, 60), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    licl = Structure(Lattice.from_parameters(3.63, 3.63, 3.63, 60, 60, 60), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    og = Structure(Lattice.cubic(4.0), ["Og"], [[0, 0, 0]])
    batch = StructureBatch.from_structures([si2, licl, og], [{"row_id": "si"}, {"row_id": "licl"}, {"row_id": "og"}])
    results = {}
    for engine in ("ase", "batched"):
        workdir = tmp_path / engine
        workdir.mkdir()
        batch.write(workdir / "structures.jsonl.gz")
        code, summary = run_command("relax", {"engine": engine, "max_steps": 100, "progress": False}, workdir)
        assert code == EXIT_OK, summary.get("error")
        results[engine] = (summary["outputs"], StructureBatch.read(workdir / "relaxed.jsonl.gz"))
    (ase_out, ase_batch), (ours_out, ours_batch) = results["ase"], results["batched"]
    assert ours_out["engine"]["engine"] == "batched" and ours_out["engine"]["torch_sim_atomistic"] == "0.3.0"
    assert ase_out["engine"] == {"engine": "ase"}
    assert ours_out["counts"] == ase_out["counts"] == {"converged": 2, "not_converged": 0, "exploded": 0,
                                                       "unsupported_element": 1}
    assert ours_out["model"] == ase_out["model"]  # name, version and hash recorded as before
    for row_id in ("si", "licl"):
        assert ours_batch.get(row_id)[0]["energy_per_atom_eV"] == pytest.approx(
            ase_batch.get(row_id)[0]["energy_per_atom_eV"], abs=1e-3)
    assert ours_batch.get("si")[0]["energy_per_atom_eV"] == pytest.approx(-5.31, abs=0.03)
