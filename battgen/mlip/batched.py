"""Batched relaxation: many structures per model call (torch-sim's batched FIRE), same results as the ASE loop.

:func:`battgen.mlip.relax.relax_batch` relaxes one structure after another through an ASE calculator (one
model call per structure per step). Here the rows in flight are stacked into one torch-sim ``SimState``
and every optimiser step is **one** model call for all of them:

* the optimiser is torch-sim's FIRE in its ``ase_fire`` flavour (ASE's update rules and defaults:
  ``dt=0.1``, ``dtmax=1``, ``Nmin=5``, ``finc=1.1``, ``fdec=0.5``, ``astart=0.1``, ``fa=0.99``, ``maxstep``),
  with the Fréchet cell filter (ASE's ``FrechetCellFilter``: log-parametrised cell, ``exp_cell_factor`` =
  number of atoms) or positions only (``cell_filter=None`` and rows flagged ``fixed_cell``);
* convergence is judged per structure as ASE does (largest row norm of the filter's generalised forces
  below ``fmax``), and so are the blow-up checks and ``max_steps``: a row leaves the batch when it is
  converged, exploded or out of steps, and the next pending row takes its place (in-flight batching);
* the statuses, record columns and checkpoint lines are those of the ASE path (see
  :mod:`battgen.mlip.relax`); a finished row is appended to the checkpoint as soon as it leaves.

Batch size: rows are added while the atoms in flight stay within ``max_atoms`` (a setting; on CUDA by
default sized from the free memory and a measured per-atom cost). Out of memory in a step → the step is
undone, the budget halved and half of the rows parked (optimiser state kept) until there is room; with
a single row left in flight it is :class:`BatchedOutOfMemoryError` (a ``MemoryError``, whose message the
AiiDA parsers map to the out-of-memory exit code).

Models: CHGNet (:class:`CHGNetBatchedModel`, its batched-graph prediction with one backward pass for
forces and stress) and SevenNet (:class:`SevenNetBatchedModel`, a batched ``AtomGraphData``; torch-sim
0.3.0's own SevenNet wrapper imports a name sevenn 0.13 no longer has). Any other ASE calculator runs
through :class:`AseCalculatorModel` (one ASE call per structure: the engine's logic without its speed,
used in tests) or, in ``relax_batch``, through the ASE path.
"""

from __future__ import annotations

import copy
import math
import time
from collections import deque
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from battgen.batch import StructureBatch
from battgen.columns import RELAX_COLUMNS
from battgen.contracts.relax import DEFAULT_CPU_BATCH_MAX_ATOMS
from battgen.progress import Bar

# torch-sim is imported lazily (it pulls h5py and tables): only a batched relaxation needs it.

# Cell filters and optimisers the batched engine reproduces; others run through the ASE path.
BATCHED_CELL_FILTERS = ("frechet", None)
BATCHED_OPTIMIZERS = ("FIRE",)
# Fraction of the free GPU memory the batch may fill (the rest: fragmentation, neighbour lists).
GPU_MEMORY_FRACTION = 0.6
EV_PER_A3_PER_GPA = 1.0 / 160.21766208


class BatchedOutOfMemoryError(MemoryError):
    """Out of memory even with one structure in flight (the message names it: 'out of memory')."""


def torch_sim_version() -> str:
    return metadata.version("torch-sim-atomistic")


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


# --- models in torch-sim's interface ------------------------------------------------------------
def _model_interface():
    from torch_sim.models.interface import ModelInterface

    return ModelInterface


def _structures_of_state(state) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(row-vector cell, cartesian positions, atomic numbers) of each system, as float64/int numpy arrays."""
    cells = state.row_vector_cell.detach().cpu().double().numpy()
    positions = state.positions.detach().cpu().double().numpy()
    numbers = state.atomic_numbers.detach().cpu().numpy()
    owners = state.system_idx.detach().cpu().numpy()
    bounds = np.searchsorted(owners, np.arange(state.n_systems + 1))
    return [(cells[i], positions[bounds[i]:bounds[i + 1]], numbers[bounds[i]:bounds[i + 1]])
            for i in range(state.n_systems)]


class _BatchedModelBase:
    """What every wrapper shares: float64 in and out (the optimiser runs in float64, as ASE does)."""

    def _init_common(self, device: str | torch.device) -> None:
        self._device = torch.device(device)
        self._dtype = torch.float64
        self._compute_stress = True
        self._compute_forces = True
        self._memory_scales_with = "n_atoms_x_density"
        self.calls = 0  # model calls (one per batched step): the engine's benchmark counts them


def _make_chgnet_class():
    ModelInterface = _model_interface()

    class CHGNetBatchedModel(_BatchedModelBase, ModelInterface):
        """CHGNet on a batch: one ``BatchedGraph`` of all systems, energies summed, one backward pass
        giving forces (−dE/dr) and stress (dE/dε / V, eV/Å³, ASE's sign) together."""

        def __init__(self, chgnet_model, device: str | torch.device | None = None):
            super().__init__()
            self._init_common(device or next(chgnet_model.parameters()).device)
            self.model = chgnet_model.to(self._device)
            self.model.eval()

        def forward(self, state, **_: Any) -> dict[str, torch.Tensor]:
            from chgnet.model.model import BatchedGraph

            self.calls += 1
            model = self.model
            graphs = []
            for cell, positions, numbers in _structures_of_state(state):
                structure = Structure(Lattice(cell), numbers.tolist(), positions, coords_are_cartesian=True)
                graphs.append(model.graph_converter(structure).to(self._device))
            batched = BatchedGraph.from_graphs(graphs, bond_basis_expansion=model.bond_basis_expansion,
                                               angle_basis_expansion=model.angle_basis_expansion, compute_stress=True)
            prediction = model._compute(batched)  # energies only: the gradients follow in one pass below
            per_atom = prediction["e"] + (0 if model.composition_model is None else model.composition_model(graphs))
            n_atoms = prediction["atoms_per_graph"].to(per_atom.dtype)
            energy = per_atom * n_atoms if model.is_intensive else per_atom
            gradients = torch.autograd.grad(energy.sum(), [*batched.atom_positions, *batched.strains])
            k = len(graphs)
            forces = -torch.cat(gradients[:k], dim=0)
            volumes = batched.volumes.to(self._device).view(k, 1, 1)
            stress = torch.stack(gradients[k:]) / volumes
            out_device = state.positions.device
            return {"energy": energy.detach().to(out_device, torch.float64),
                    "forces": forces.detach().to(out_device, torch.float64),
                    "stress": stress.detach().to(out_device, torch.float64)}

    return CHGNetBatchedModel


def _make_sevennet_class():
    ModelInterface = _model_interface()

    class SevenNetBatchedModel(_BatchedModelBase, ModelInterface):
        """SevenNet on a batch: the per-structure graphs SevenNet's calculator builds, collated into one
        torch-geometric batch (the model in batch mode: a copy, the calculator's model stays as it is)."""

        def __init__(self, sevennet_model, cutoff: float, modal: str | None = None,
                     device: str | torch.device | None = None):
            super().__init__()
            self._init_common(device or next(sevennet_model.parameters()).device)
            self.model = copy.deepcopy(sevennet_model).to(self._device)
            self.model.set_is_batch_data(True)
            self.model.eval()
            self.cutoff = float(cutoff)
            self.modal = modal

        def forward(self, state, **_: Any) -> dict[str, torch.Tensor]:
            import sevenn._keys as KEY
            from ase import Atoms
            from sevenn.atom_graph_data import AtomGraphData
            from sevenn.train.dataload import unlabeled_atoms_to_graph
            from torch_geometric.data import Batch

            self.calls += 1
            graphs = []
            for cell, positions, numbers in _structures_of_state(state):
                atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
                data = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, self.cutoff, with_shift=False))
                if self.modal:
                    data[KEY.DATA_MODALITY] = self.modal
                graphs.append(data)
            batch = Batch.from_data_list(graphs).to(self._device)
            output = self.model(batch)
            energy = output[KEY.PRED_TOTAL_ENERGY].detach().reshape(-1)
            forces = output[KEY.PRED_FORCE].detach()
            voigt = -output[KEY.PRED_STRESS].detach()  # xx yy zz xy yz zx, sign turned to ASE's
            stress = torch.stack([
                torch.stack([voigt[:, 0], voigt[:, 3], voigt[:, 5]], dim=-1),
                torch.stack([voigt[:, 3], voigt[:, 1], voigt[:, 4]], dim=-1),
                torch.stack([voigt[:, 5], voigt[:, 4], voigt[:, 2]], dim=-1),
            ], dim=1)
            out_device = state.positions.device
            return {"energy": energy.to(out_device, torch.float64), "forces": forces.to(out_device, torch.float64),
                    "stress": stress.to(out_device, torch.float64)}

    return SevenNetBatchedModel


def _make_ase_class():
    ModelInterface = _model_interface()

    class AseCalculatorModel(_BatchedModelBase, ModelInterface):
        """Any ASE calculator in torch-sim's interface, one calculator call per structure (no speed-up):
        runs the batched engine's bookkeeping on cheap potentials (EMT in tests) and checks it against ASE."""

        def __init__(self, calculator, device: str | torch.device = "cpu"):
            super().__init__()
            self._init_common(device)
            self.calculator = calculator

        def forward(self, state, **_: Any) -> dict[str, torch.Tensor]:
            from ase import Atoms

            self.calls += 1
            energies, forces, stresses = [], [], []
            for cell, positions, numbers in _structures_of_state(state):
                atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
                atoms.calc = self.calculator
                energies.append(atoms.get_potential_energy())
                forces.append(atoms.get_forces())
                stresses.append(atoms.get_stress(voigt=False))
            device = state.positions.device
            return {"energy": torch.tensor(np.array(energies), dtype=torch.float64, device=device),
                    "forces": torch.tensor(np.concatenate(forces), dtype=torch.float64, device=device),
                    "stress": torch.tensor(np.array(stresses), dtype=torch.float64, device=device)}

    return AseCalculatorModel


_CLASSES: dict[str, type] = {}


def _class(name: str) -> type:
    if name not in _CLASSES:
        _CLASSES[name] = {"chgnet": _make_chgnet_class, "sevennet": _make_sevennet_class,
                          "ase": _make_ase_class}[name]()
    return _CLASSES[name]


def CHGNetBatchedModel(chgnet_model, device: str | torch.device | None = None):  # noqa: N802 - a class factory
    """CHGNet in torch-sim's interface (on ``device``, default: where the model already is)."""
    return _class("chgnet")(chgnet_model, device=device)


def SevenNetBatchedModel(sevennet_model, cutoff: float, modal: str | None = None,  # noqa: N802
                         device: str | torch.device | None = None):
    """SevenNet in torch-sim's interface (a batch-mode copy of the model, on ``device`` or where it is)."""
    return _class("sevennet")(sevennet_model, cutoff=cutoff, modal=modal, device=device)


def AseCalculatorModel(calculator, device: str | torch.device = "cpu"):  # noqa: N802
    """An ASE calculator in torch-sim's interface, one call per structure (tests, checks)."""
    return _class("ase")(calculator, device=device)


def batched_model_for(calculator: Any, device: str | torch.device | None = None):
    """The batched wrapper of an ASE calculator whose model predicts batches (CHGNet, SevenNet), else None.

    The wrapper runs on ``device``, by default the device the calculator's model is on (a loaded model is
    shared with its cached calculator: moving it elsewhere would move the calculator's too)."""
    name = type(calculator).__name__
    if name == "CHGNetCalculator":
        return CHGNetBatchedModel(calculator.model, device=device)
    if name == "SevenNetCalculator" and hasattr(calculator.model, "set_is_batch_data"):
        return SevenNetBatchedModel(calculator.model, cutoff=calculator.cutoff, modal=calculator.modal, device=device)
    return None


# --- the in-flight relaxation loop ---------------------------------------------------------------
@dataclass
class _Row:
    index: int  # position in the batch
    row_id: str
    structure: Structure
    fixed_cell: bool
    started: float = 0.0
    steps: int = 0
    initial_volume: float = 0.0


@dataclass
class BatchStats:
    """How a batched run went (reported in ``battgen relax``'s summary)."""

    max_atoms: int
    model_calls: int = 0
    oom_halvings: int = 0
    largest_batch: int = 0
    failed_batch_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"max_atoms": self.max_atoms, "model_calls": self.model_calls, "oom_halvings": self.oom_halvings,
                "largest_batch": self.largest_batch, "failed_batch_steps": self.failed_batch_steps,
                "torch_sim_atomistic": torch_sim_version(), **self.extra}


def default_max_atoms(model, structures: list[Structure], device: str | torch.device) -> int:
    """Atoms in flight at once: a fixed number on a CPU; on CUDA from the free memory and the peak memory
    of one measured call on a few of the structures (per atom), times :data:`GPU_MEMORY_FRACTION`."""
    device = torch.device(device)
    if device.type != "cuda" or not structures:
        return DEFAULT_CPU_BATCH_MAX_ATOMS
    import torch_sim as ts

    sample = structures[: min(8, len(structures))]
    state = ts.io.structures_to_state(sample, device, torch.float64)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    model(state)
    torch.cuda.synchronize(device)
    per_atom = max(1, torch.cuda.max_memory_allocated(device) - before) / state.n_atoms
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int(GPU_MEMORY_FRACTION * free / per_atom))


class _Optimiser:
    """torch-sim's FIRE (ASE flavour) for one kind of row: with the Fréchet cell filter or positions only."""

    def __init__(self, model, cell: bool, maxstep: float):
        import torch_sim as ts

        self.cell = cell
        factory = ts.optimizers.frechet_cell_fire if cell else ts.optimizers.fire
        self.init, self.step = factory(model, max_step=maxstep, md_flavor="ase_fire")

    def generalised_max_force(self, state) -> torch.Tensor:
        """Per system, the largest row norm of the forces the optimiser sees (ASE's convergence test)."""
        forces = state.forces
        if self.cell:  # FrechetCellFilter.get_forces: atoms' forces times the deformation gradient
            forces = torch.bmm(forces.unsqueeze(1), state.deform_grad()[state.system_idx]).squeeze(1)
        norms = torch.linalg.norm(forces, dim=1)
        largest = torch.zeros(state.n_systems, dtype=norms.dtype, device=norms.device)
        largest = largest.scatter_reduce(0, state.system_idx, norms, reduce="amax", include_self=True)
        if self.cell:
            largest = torch.maximum(largest, torch.linalg.norm(state.cell_forces, dim=2).amax(dim=1))
        return largest


def _per_system_max_force(state) -> torch.Tensor:
    norms = torch.linalg.norm(state.forces, dim=1)
    norms = torch.where(torch.isfinite(norms), norms, torch.full_like(norms, math.inf))
    largest = torch.zeros(state.n_systems, dtype=norms.dtype, device=norms.device)
    return largest.scatter_reduce(0, state.system_idx, norms, reduce="amax", include_self=True)


def relax_rows_batched(
    batch: StructureBatch,
    model,
    *,
    supported_elements: set[str] | frozenset[str] | None = None,
    fmax: float = 0.05,
    max_steps: int = 500,
    cell_filter: str | None = "frechet",
    maxstep: float = 0.2,
    max_volume_factor: float | None = None,
    max_atoms: int | None = None,
    done: dict[str, tuple[Structure, dict[str, Any], dict[str, Any]]] | None = None,
    on_finished=None,
    progress: bool = False,
    desc: str = "relax (batched)",
) -> tuple[list[Structure], list[dict[str, Any]], BatchStats]:
    """Relax the rows of ``batch`` not in ``done`` with ``model`` (a torch-sim model) in flight together.

    Returns (structures to keep, records, stats) in the batch's row order; ``done`` rows come back as they
    were given. ``on_finished(index, structure, record)`` is called as each row finishes (the checkpoint).
    Records carry the :data:`RELAX_COLUMNS` plus ``wall_time_s`` (time from entering to leaving the batch,
    shared with the rows in flight with it).
    """
    import torch_sim as ts

    from battgen.mlip.relax_rows import EXPLODED_MAX_FORCE_EV_PER_A, EXPLODED_VOLUME_FACTOR, _explosion_reason

    if cell_filter not in BATCHED_CELL_FILTERS:
        raise ValueError(f"the batched engine supports cell_filter {list(BATCHED_CELL_FILTERS)}, got {cell_filter!r}")
    max_volume_factor = EXPLODED_VOLUME_FACTOR if max_volume_factor is None else max_volume_factor
    done = done or {}
    n = len(batch)
    structures: list[Structure | None] = [None] * n
    records: list[dict[str, Any] | None] = [None] * n
    device = model.device

    def finish(row: _Row, structure: Structure, record: dict[str, Any]) -> None:
        record["wall_time_s"] = round(time.perf_counter() - row.started, 4)
        structures[row.index], records[row.index] = structure, record
        if on_finished is not None:
            on_finished(row.index, structure, record)
        bar.update(1, current=row.row_id)

    groups: dict[bool, list[_Row]] = {True: [], False: []}  # cell relaxed? -> rows
    bar = Bar(total=n, desc=desc, unit="struct", disable=not progress)
    for index, (meta, structure) in enumerate(batch):
        row = _Row(index, meta["row_id"], structure, bool(meta.get("fixed_cell")), started=time.perf_counter())
        if row.row_id in done:
            structures[index], _, records[index] = done[row.row_id]
            bar.update(1)
            continue
        symbols = {el.symbol for el in structure.composition.elements}
        missing = sorted(symbols - set(supported_elements)) if supported_elements is not None else []
        if missing:
            finish(row, structure, {**_empty_record(), "relax_status": "unsupported_element",
                                    "unsupported_elements": missing,
                                    "relax_message": f"element(s) {', '.join(missing)} not supported by the model"})
            continue
        groups[cell_filter is not None and not row.fixed_cell].append(row)

    budget = int(max_atoms) if max_atoms else default_max_atoms(
        model, [r.structure for rows in groups.values() for r in rows], device)
    stats = BatchStats(max_atoms=budget)
    calls_before = getattr(model, "calls", 0)

    for cell, rows in groups.items():
        if not rows:
            continue
        optimiser = _Optimiser(model, cell, maxstep)
        pending: deque[tuple[_Row, Any]] = deque((row, None) for row in rows)  # (row, parked optimiser state)
        active: list[_Row] = []
        state = None

        def harvest(state, active: list[_Row]):
            """Take the finished systems out of the batch (and record them); returns the rest."""
            if state is None or not active:
                return state, active
            energy = state.energy.detach()
            raw_max = _per_system_max_force(state).cpu().numpy()
            general = optimiser.generalised_max_force(state).cpu().numpy()
            volumes = torch.linalg.det(state.cell).detach().cpu().numpy()
            finite = (torch.isfinite(energy).cpu().numpy()
                      & np.isfinite(raw_max))
            keep = []
            for i, row in enumerate(active):
                e = float(energy[i]) if finite[i] else math.nan
                volume_ratio = float(volumes[i] / row.initial_volume)
                if not finite[i]:
                    explosion = "non-finite energy or forces"
                elif raw_max[i] > EXPLODED_MAX_FORCE_EV_PER_A:
                    explosion = f"max force {raw_max[i]:.3g} eV/Å above {EXPLODED_MAX_FORCE_EV_PER_A:g} eV/Å"
                else:
                    explosion = _explosion_reason(e, np.zeros((0, 3)), volume_ratio, max_volume_factor)
                converged = bool(general[i] < fmax)
                if explosion:
                    finish(row, row.structure, {**_empty_record(), "n_steps": row.steps,
                                                "relax_status": "exploded", "relax_message": explosion})
                elif converged or row.steps >= max_steps:
                    relaxed = _structure_of(state, i, row.structure)
                    n_atoms = len(row.structure)
                    record = {**_empty_record(), "energy_eV": e, "energy_per_atom_eV": e / n_atoms,
                              "max_force_eV_per_A": float(raw_max[i]), "n_steps": row.steps,
                              "converged": converged, "volume_change": volume_ratio,
                              "relax_status": "converged" if converged else "not_converged"}
                    if not converged:
                        record["relax_message"] = f"not converged to fmax={fmax} eV/Å in {max_steps} steps"
                    finish(row, relaxed, record)
                else:
                    keep.append(i)
            if len(keep) == len(active):
                return state, active
            if not keep:
                return None, []
            return state[keep], [active[i] for i in keep]

        while pending or active:
            in_flight = sum(len(r.structure) for r in active)
            if pending and (not active or in_flight + len(pending[0][0].structure) <= budget):
                fresh, parked = [], []
                while pending and (not (active or fresh or parked)
                                   or in_flight + len(pending[0][0].structure) <= budget):
                    row, saved = pending.popleft()
                    in_flight += len(row.structure)
                    (parked if saved is not None else fresh).append((row, saved))
                pieces = [] if state is None else [state]
                pieces += [saved for _, saved in parked]
                if fresh:
                    for row, _ in fresh:
                        row.started = time.perf_counter()
                        row.initial_volume = float(row.structure.volume)
                    sim = ts.io.structures_to_state([row.structure for row, _ in fresh], device, torch.float64)
                    try:
                        pieces.append(optimiser.init(sim))
                    except Exception as exc:  # noqa: BLE001 - sorted out row by row below
                        if _is_out_of_memory(exc) and (active or parked or len(fresh) > 1):
                            budget = max(1, budget // 2)
                            stats.oom_halvings += 1
                            pending.extendleft(reversed(parked + fresh))
                            continue
                        if _is_out_of_memory(exc):
                            raise BatchedOutOfMemoryError(
                                f"out of memory with one structure ({fresh[0][0].row_id}, {len(fresh[0][0].structure)}"
                                f" atoms) in flight: {exc}") from exc
                        pieces += _init_one_by_one(optimiser, fresh, device, finish, exc)
                        fresh = [(row, None) for row, _ in fresh if structures[row.index] is None]
                state = ts.concatenate_states(pieces) if len(pieces) > 1 else (pieces[0] if pieces else None)
                active = active + [row for row, _ in parked] + [row for row, _ in fresh]
                stats.largest_batch = max(stats.largest_batch, len(active))
                state, active = harvest(state, active)
                continue

            before = state.clone()
            try:
                state = optimiser.step(state)
            except Exception as exc:  # noqa: BLE001 - out of memory or a geometry the model rejects
                state = before
                if _is_out_of_memory(exc):
                    if len(active) == 1:
                        raise BatchedOutOfMemoryError(
                            f"out of memory with one structure ({active[0].row_id}, {len(active[0].structure)} atoms)"
                            f" in flight: {exc}") from exc
                    budget = max(1, budget // 2)
                    stats.oom_halvings += 1
                    half = len(active) // 2
                    keep, park = list(range(half)), list(range(half, len(active)))
                    parked_state = state[park]
                    pending.extendleft(reversed([(active[i], parked_state[j]) for j, i in enumerate(park)]))
                    state, active = state[keep], [active[i] for i in keep]
                    continue
                stats.failed_batch_steps += 1
                state, active = _step_one_by_one(optimiser, state, active, finish, exc)
                for row in active:
                    row.steps += 1
                state, active = harvest(state, active)
                continue
            for row in active:
                row.steps += 1
            state, active = harvest(state, active)
    bar.close()
    stats.model_calls = getattr(model, "calls", 0) - calls_before
    return structures, records, stats  # type: ignore[return-value]


def _empty_record() -> dict[str, Any]:
    return {"energy_eV": None, "energy_per_atom_eV": None, "max_force_eV_per_A": None, "n_steps": 0,
            "converged": False, "volume_change": None, "relax_message": ""}


def _structure_of(state, i: int, original: Structure) -> Structure:
    """System ``i`` of ``state`` as a structure with the original's species (site properties dropped)."""
    owners = state.system_idx.detach().cpu().numpy()
    positions = state.positions.detach().cpu().double().numpy()[owners == i]
    cell = state.row_vector_cell[i].detach().cpu().double().numpy()
    return Structure(Lattice(cell), [site.species for site in original], positions, coords_are_cartesian=True)


def _failure_message(exc: BaseException) -> str:
    return f"calculator failed: {type(exc).__name__}: {exc}"


def _init_one_by_one(optimiser, fresh, device, finish, batch_exc: BaseException) -> list:
    """After a failed batched first evaluation: each new row alone; the ones that fail again explode."""
    import torch_sim as ts

    states = []
    for row, _ in fresh:
        try:
            states.append(optimiser.init(ts.io.structures_to_state([row.structure], device, torch.float64)))
        except Exception as exc:  # noqa: BLE001 - the ASE path treats these as a blow-up too
            if _is_out_of_memory(exc):
                raise BatchedOutOfMemoryError(f"out of memory with one structure ({row.row_id}) in flight: {exc}") from exc
            finish(row, row.structure, {**_empty_record(), "relax_status": "exploded",
                                        "relax_message": _failure_message(exc)})
    return states


def _step_one_by_one(optimiser, state, active: list[_Row], finish, batch_exc: BaseException):
    """After a failed batched step: step each system alone; the ones that fail again explode."""
    import torch_sim as ts

    survivors, rows = [], []
    for i, row in enumerate(active):
        single = state[[i]]
        try:
            survivors.append(optimiser.step(single))
            rows.append(row)
        except Exception as exc:  # noqa: BLE001
            if _is_out_of_memory(exc):
                raise BatchedOutOfMemoryError(f"out of memory with one structure ({row.row_id}) in flight: {exc}") from exc
            finish(row, row.structure, {**_empty_record(), "n_steps": row.steps + 1, "relax_status": "exploded",
                                        "relax_message": _failure_message(exc)})
    if not survivors:
        return None, []
    return (ts.concatenate_states(survivors) if len(survivors) > 1 else survivors[0]), rows


def relax_batch_batched(
    batch: StructureBatch,
    model,
    *,
    supported_elements: set[str] | frozenset[str] | None = None,
    fmax: float = 0.05,
    max_steps: int = 500,
    cell_filter: str | None = "frechet",
    maxstep: float = 0.2,
    max_atoms: int | None = None,
    progress: bool = False,
    checkpoint: Path | None = None,
    checkpoint_settings: dict[str, Any] | None = None,
    desc: str = "relax (batched)",
) -> tuple[StructureBatch, list[dict[str, Any]], BatchStats]:
    """:func:`battgen.mlip.relax.relax_batch` with the batched engine: same rows, columns, checkpoint."""
    from battgen.mlip.relax_rows import _append_checkpoint, read_relax_checkpoint

    done = read_relax_checkpoint(checkpoint, checkpoint_settings) if checkpoint is not None else {}
    metas = list(batch.meta)
    rows_out: dict[int, dict[str, Any]] = {}

    def row_of(index: int, record: dict[str, Any]) -> dict[str, Any]:
        row = {**metas[index], **{key: record[key] for key in RELAX_COLUMNS}}
        row.pop("unsupported_elements", None)  # a stale flag from an earlier relaxation of this row
        if record.get("unsupported_elements"):
            row["unsupported_elements"] = record["unsupported_elements"]
        return row

    def on_finished(index: int, structure: Structure, record: dict[str, Any]) -> None:
        row = rows_out[index] = row_of(index, record)
        if checkpoint is not None:
            _append_checkpoint(checkpoint, checkpoint_settings, structure, row, {"row_id": row["row_id"], **record})

    structures, records, stats = relax_rows_batched(
        batch, model, supported_elements=supported_elements, fmax=fmax, max_steps=max_steps,
        cell_filter=cell_filter, maxstep=maxstep, max_atoms=max_atoms, done=done, on_finished=on_finished,
        progress=progress, desc=desc,
    )
    meta, out_records = [], []
    for index, record in enumerate(records):
        row_id = metas[index]["row_id"]
        if row_id in done:
            meta.append(done[row_id][1])
            out_records.append(done[row_id][2])
        else:
            meta.append(rows_out[index])
            out_records.append({"row_id": row_id, **record})
    return StructureBatch(structures, meta), out_records, stats


def try_relax_batched(
    batch: StructureBatch,
    calculator: Any,
    *,
    supported_elements: set[str] | frozenset[str] | None,
    fmax: float,
    max_steps: int,
    cell_filter: str | None,
    optimizer: str,
    maxstep: float,
    device: str = "cpu",
    max_atoms: int | None = None,
    progress: bool = False,
    checkpoint: Path | None = None,
    checkpoint_settings: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
    desc: str = "relax (batched)",
) -> tuple[StructureBatch, list[dict[str, Any]]] | None:
    """The batched engine where it applies; None (the caller runs the ASE loop) where it does not: an
    optimiser other than FIRE, the ``exp`` cell filter, or a calculator with no batched model. Why it
    did not apply goes to ``report["fallback_reason"]``."""
    report = {} if report is None else report
    reason = None
    if optimizer not in BATCHED_OPTIMIZERS:
        reason = f"optimizer {optimizer} has no batched implementation (only {', '.join(BATCHED_OPTIMIZERS)})"
    elif cell_filter not in BATCHED_CELL_FILTERS:
        reason = f"cell_filter {cell_filter!r} has no batched implementation (only frechet or none)"
    model = None
    if reason is None:
        model = batched_model_for(calculator)  # where the loaded model is (it was loaded on ``device``)
        if model is None:
            reason = f"{type(calculator).__name__} has no batched model interface"
    if reason is not None:
        report.update(engine="ase", fallback_reason=reason)
        return None
    relaxed, records, stats = relax_batch_batched(
        batch, model, supported_elements=supported_elements, fmax=fmax, max_steps=max_steps,
        cell_filter=cell_filter, maxstep=maxstep, max_atoms=max_atoms, progress=progress,
        checkpoint=checkpoint, checkpoint_settings=checkpoint_settings, desc=desc,
    )
    report.update(engine="batched", **stats.as_dict())
    return relaxed, records
