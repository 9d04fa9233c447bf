"""Working-ion-pooled CGCNN for electrode voltage (seed 002 §2.1 and Computational Details).

CGCNN (Xie & Grossman, PRL 120, 145301) with one change from the seed: the readout averages the atom
vectors of the **working-ion atoms only** (the row's ``working_ion``, e.g. "Mg"), so electrodes of every ion
train one model from their discharged structures. Target: ``average_voltage_V``.

- Atom features: CGCNN's one-hot element description, rebuilt from pymatgen element data (the original
  ``atom_init.json`` is not shipped with any installed package): group (18), period (7), Pauling
  electronegativity (10 bins, 0.5–4.0), atomic radius (10 bins, 0.25–2.5 Å), valence electrons (12),
  first ionisation energy (10 log bins), electron affinity (10 bins, −3–3.7 eV), block (4), molar volume
  (10 log bins): :data:`ATOM_FEATURE_LENGTH` = 91 (CGCNN: 92; its "period" has two more bins). A
  property pymatgen lacks leaves its bins at zero.
- Edge features: 41 Gaussians exp(−(d − μ_t)² / σ²), μ_t = 0.2·t Å (t = 0..40), σ = 0.2 Å.
- Neighbours: the 12 nearest within 8 Å (CGCNN's defaults), from pymatgen's periodic neighbour list.
- Three gated convolutions v_i ← softplus(v_i + BN(Σ_j σ(z W_f + b_f) ⊙ softplus(z W_s + b_s))), z = v_i ⊕ v_j
  ⊕ u_ij (batch norm on the gate input and on the sum, as CGCNN), mean pool over working-ion atoms, one
  hidden layer, one output. L1 loss, Adam; targets standardised with the training mean / std.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Element, Structure
from torch import nn
from torch_geometric.utils import scatter
from tqdm import tqdm

from battgen.batch import StructureBatch
from battgen.devices import training_record
from battgen.models import CHECKPOINT_DIRNAME
from battgen.predictors.base import Predictor, regression_metrics
from battgen.progress import track

TARGET = "average_voltage_V"
WEIGHTS_FILENAME = "voltage_cgcnn.pt"
CHECKPOINT_FILENAME = "last.pt"
WORKING_ION_KEY = "working_ion"


# --- atom features ----------------------------------------------------------------------------------
def _one_hot_bin(value: float | None, low: float, high: float, n_bins: int, log: bool = False) -> list[float]:
    """One-hot of ``value`` in ``n_bins`` equal bins over [low, high] (clamped); all zeros when unknown."""
    bins = [0.0] * n_bins
    if value is None or not math.isfinite(value) or (log and value <= 0):
        return bins
    x, lo, hi = (math.log10(value), math.log10(low), math.log10(high)) if log else (value, low, high)
    index = int((x - lo) / (hi - lo) * n_bins)
    bins[min(max(index, 0), n_bins - 1)] = 1.0
    return bins


def _one_hot_index(index: int | None, n: int, first: int = 1) -> list[float]:
    bins = [0.0] * n
    if index is not None and first <= index < first + n:
        bins[index - first] = 1.0
    return bins


def _safe(getter) -> float | None:
    try:
        value = getter()
        return None if value is None else float(value)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _valence_electrons(element: Element) -> int | None:
    """Outer-shell electrons as CGCNN counts them (1–12): s/p block from the group, d block the group."""
    group = element.group
    if element.block in ("s", "d"):
        return group if group <= 12 else None
    if element.block == "p":
        return group - 10
    return None


@functools.lru_cache(maxsize=128)
def atom_features(symbol: str) -> tuple[float, ...]:
    """CGCNN-style one-hot description of an element (see module docstring), length 91."""
    el = Element(symbol)
    features: list[float] = []
    features += _one_hot_index(el.group if el.block != "f" else 3, 18)
    features += _one_hot_index(el.row, 7)
    features += _one_hot_bin(_safe(lambda: el.X), 0.5, 4.0, 10)
    features += _one_hot_bin(_safe(lambda: el.atomic_radius), 0.25, 2.5, 10)
    features += _one_hot_index(_valence_electrons(el), 12)
    features += _one_hot_bin(_safe(lambda: el.ionization_energies[0]), 3.0, 25.0, 10, log=True)  # eV
    features += _one_hot_bin(_safe(lambda: el.electron_affinity), -3.0, 3.7, 10)  # eV
    features += _one_hot_index({"s": 0, "p": 1, "d": 2, "f": 3}.get(el.block), 4, first=0)
    features += _one_hot_bin(_safe(lambda: el.molar_volume), 3.0, 70.0, 10, log=True)  # cm³/mol
    return tuple(features)


ATOM_FEATURE_LENGTH = len(atom_features("H"))


# --- graph ------------------------------------------------------------------------------------------
def gaussian_centres_A(radius_A: float = 8.0, step_A: float = 0.2) -> np.ndarray:
    """μ_t = step·t for t = 0..radius/step: 41 centres 0, 0.2, …, 8.0 Å with the defaults."""
    return np.arange(int(round(radius_A / step_A)) + 1) * step_A


def gaussian_edge_features(distances_A: np.ndarray | torch.Tensor, radius_A: float = 8.0, step_A: float = 0.2,
                           width_A: float | None = None) -> torch.Tensor:
    """u[t] = exp(−(d − μ_t)² / σ²) with σ = ``width_A`` (CGCNN: the step, 0.2 Å); shape (n_edges, 41)."""
    device = distances_A.device if isinstance(distances_A, torch.Tensor) else "cpu"
    centres = torch.as_tensor(gaussian_centres_A(radius_A, step_A), dtype=torch.float32, device=device)
    d = torch.as_tensor(distances_A, dtype=torch.float32, device=device).reshape(-1, 1)
    sigma = step_A if width_A is None else width_A
    return torch.exp(-((d - centres) ** 2) / sigma**2)


def neighbour_edges(structure: Structure, radius_A: float = 8.0, max_neighbours: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges (centre, neighbour) to each atom's ``max_neighbours`` nearest periodic images within
    ``radius_A``, and their lengths in Å. Ties are broken by neighbour index so the graph is deterministic."""
    centres, neighbours, _, distances = structure.get_neighbor_list(radius_A)
    # Sort by centre, then distance, then neighbour: the first max_neighbours of each centre are kept.
    order = np.lexsort((neighbours, np.round(distances, 8), centres))
    centres, neighbours, distances = centres[order], neighbours[order], distances[order]
    rank = np.arange(len(centres)) - np.searchsorted(centres, centres, side="left")
    keep = rank < max_neighbours
    return np.stack([centres[keep], neighbours[keep]]).astype(np.int64), distances[keep].astype(np.float32)


class WorkingIonMissingError(ValueError):
    """A row's structure has no atom of its working ion: the pooled readout has nothing to pool."""


def structure_graph(structure: Structure, working_ion: str, row_id: str = "?", radius_A: float = 8.0,
                    max_neighbours: int = 12, step_A: float = 0.2) -> dict[str, torch.Tensor]:
    """Node features, edges, Gaussian edge features and the working-ion mask of one structure."""
    symbols = [site.specie.symbol for site in structure]
    ion_mask = torch.tensor([s == working_ion for s in symbols], dtype=torch.bool, device="cpu")  # the cache's
    if not bool(ion_mask.any()):
        raise WorkingIonMissingError(
            f"row {row_id!r} ({structure.composition.reduced_formula}) has no {working_ion} atom: the voltage "
            f"model pools working-ion atoms only"
        )
    edge_index, distances = neighbour_edges(structure, radius_A, max_neighbours)
    return {
        "x": torch.tensor([atom_features(s) for s in symbols], dtype=torch.float32, device="cpu"),
        "edge_index": torch.from_numpy(edge_index),
        "edge_attr": gaussian_edge_features(distances, radius_A, step_A),
        "ion_mask": ion_mask,
    }


def collate_graphs(graphs: list[dict[str, torch.Tensor]], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """One disjoint graph on ``device``: edges offset by the atoms before them; ``graph_index`` maps atoms
    to rows. Collated on the CPU (where the cached graphs live), then moved in one go."""
    offsets = np.cumsum([0] + [len(g["x"]) for g in graphs[:-1]])
    collated = {
        "x": torch.cat([g["x"] for g in graphs]),
        "edge_index": torch.cat([g["edge_index"] + int(o) for g, o in zip(graphs, offsets)], dim=1),
        "edge_attr": torch.cat([g["edge_attr"] for g in graphs]),
        "ion_mask": torch.cat([g["ion_mask"] for g in graphs]),
        "graph_index": torch.cat([torch.full((len(g["x"]),), i, dtype=torch.long, device="cpu")
                                  for i, g in enumerate(graphs)]),
    }
    return {**{key: value.to(device) for key, value in collated.items()}, "n_graphs": len(graphs)}


# --- network ----------------------------------------------------------------------------------------
class CGCNNConv(nn.Module):
    """CGCNN's gated convolution (Xie & Grossman eq. 5, with batch norm as in their code)."""

    def __init__(self, atom_fea_len: int, edge_fea_len: int) -> None:
        super().__init__()
        self.gate_and_core = nn.Linear(2 * atom_fea_len + edge_fea_len, 2 * atom_fea_len)
        self.bn_gate = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn_sum = nn.BatchNorm1d(atom_fea_len)
        self.softplus = nn.Softplus()

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        centre, neighbour = edge_index
        z = torch.cat([h[centre], h[neighbour], edge_attr], dim=1)
        gate, core = self.bn_gate(self.gate_and_core(z)).chunk(2, dim=1)
        messages = torch.sigmoid(gate) * self.softplus(core)
        summed = torch.zeros_like(h).index_add_(0, centre, messages)
        return self.softplus(h + self.bn_sum(summed))


class VoltageCGCNN(nn.Module):
    """Embedding → ``n_conv`` convolutions → mean over working-ion atoms → hidden layer → voltage."""

    def __init__(self, atom_input_len: int = ATOM_FEATURE_LENGTH, edge_fea_len: int = 41, atom_fea_len: int = 64,
                 n_conv: int = 3, h_fea_len: int = 128, n_hidden: int = 1) -> None:
        super().__init__()
        self.embedding = nn.Linear(atom_input_len, atom_fea_len)
        self.convs = nn.ModuleList(CGCNNConv(atom_fea_len, edge_fea_len) for _ in range(n_conv))
        layers: list[nn.Module] = [nn.Softplus(), nn.Linear(atom_fea_len, h_fea_len), nn.Softplus()]
        for _ in range(n_hidden - 1):
            layers += [nn.Linear(h_fea_len, h_fea_len), nn.Softplus()]
        layers.append(nn.Linear(h_fea_len, 1))
        self.head = nn.Sequential(*layers)

    def forward(self, graph: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.embedding(graph["x"])
        for conv in self.convs:
            h = conv(h, graph["edge_index"], graph["edge_attr"])
        ion = graph["ion_mask"]
        pooled = scatter(h[ion], graph["graph_index"][ion], dim=0, dim_size=int(graph["n_graphs"]), reduce="mean")
        return self.head(pooled).squeeze(-1)


# --- predictor --------------------------------------------------------------------------------------
def _row_working_ion(meta: dict[str, Any], default: str | None) -> str:
    ion = meta.get(WORKING_ION_KEY) or default
    if not ion:
        raise ValueError(f"row {meta.get('row_id')!r} has no {WORKING_ION_KEY!r} metadata and no default working ion was given")
    return str(ion)


def batch_graphs(batch: StructureBatch, hyperparameters: dict[str, Any], default_ion: str | None = None,
                 progress: bool = False, desc: str = "graphs") -> list[dict[str, torch.Tensor]]:
    """One graph per row; raises :class:`WorkingIonMissingError` naming the first row without its ion."""
    rows = tqdm(batch, total=len(batch), desc=desc, unit="struct", disable=not progress)
    return [
        structure_graph(structure, _row_working_ion(meta, default_ion), meta["row_id"],
                        hyperparameters["radius_A"], hyperparameters["max_neighbours"], hyperparameters["gaussian_step_A"])
        for meta, structure in rows
    ]


def build_network(hyperparameters: dict[str, Any]) -> VoltageCGCNN:
    return VoltageCGCNN(
        atom_input_len=ATOM_FEATURE_LENGTH,
        edge_fea_len=len(gaussian_centres_A(hyperparameters["radius_A"], hyperparameters["gaussian_step_A"])),
        atom_fea_len=hyperparameters["atom_fea_len"], n_conv=hyperparameters["n_conv"],
        h_fea_len=hyperparameters["h_fea_len"], n_hidden=hyperparameters["n_hidden"],
    )


def _predict_graphs(network: VoltageCGCNN, graphs: list[dict[str, torch.Tensor]], mean: float, std: float,
                    batch_size: int) -> np.ndarray:
    network.eval()
    device = next(network.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(graphs), batch_size):
            predicted = network(collate_graphs(graphs[start:start + batch_size], device))
            out.append(predicted.cpu().numpy() * std + mean)
    return np.concatenate(out) if out else np.zeros(0)


class VoltageCGCNNPredictor(Predictor):
    """Average voltage (V vs the working-ion metal) of an electrode from its discharged structure."""

    name = "voltage-cgcnn"
    architecture = "voltage-cgcnn"

    def __init__(self, model: str | Path, device: str = "cpu", **options: Any) -> None:
        super().__init__(model, device, **options)
        saved = torch.load(self.model_dir / WEIGHTS_FILENAME, map_location="cpu", weights_only=False)
        self.hyperparameters = saved["hyperparameters"]
        self.network = build_network(self.hyperparameters)
        self.network.load_state_dict(saved["state_dict"])
        self.network.to(self.device).eval()
        self.target_mean, self.target_std = float(saved["target_mean"]), float(saved["target_std"])
        # Rows without working_ion metadata use this (e.g. screening Mg candidates: options {working_ion: Mg}).
        self.default_working_ion = options.get("working_ion")

    @classmethod
    def default_hyperparameters(cls) -> dict[str, Any]:
        return {
            "radius_A": 8.0,  # CGCNN
            "max_neighbours": 12,  # CGCNN
            "gaussian_step_A": 0.2,  # seed 002: μ_t = 0.2·t Å, 41 centres
            "atom_fea_len": 64,  # CGCNN default; seed 002 Fig. 5: 64
            "n_conv": 3,  # seed 002
            "h_fea_len": 128,  # CGCNN default
            "n_hidden": 1,  # seed 002: one hidden layer after pooling
            "learning_rate": 0.003,
            "weight_decay": 0.0,
            "batch_size": 64,
            "epochs": 200,
            "max_train_time_s": None,  # stop early (keeping the best validation model) after this wall time
            "progress": True,
        }

    @classmethod
    def fit(cls, splits: Any, targets: list[str], model_dir: Path, hyperparameters: dict[str, Any], seed: int = 0,
            resume_from: Path | None = None, device: str = "cpu") -> dict[str, Any]:
        if list(targets) != [TARGET]:
            raise ValueError(f"voltage-cgcnn predicts only {TARGET!r}, got targets {targets}")
        hp = {**cls.default_hyperparameters(), **hyperparameters}
        model_dir = Path(model_dir)
        checkpoint_dir = model_dir / CHECKPOINT_DIRNAME
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        started = time.perf_counter()

        def labelled(part: StructureBatch) -> tuple[StructureBatch, np.ndarray]:
            keep = [m.get(TARGET) is not None and math.isfinite(float(m[TARGET])) for m in part.meta]
            part = part.select(keep)
            return part, np.array([float(v) for v in part.column(TARGET)], dtype=np.float32)

        (train, y_train), (val, y_val), (test, y_test) = (labelled(p) for p in (splits.train, splits.val, splits.test))
        if len(train) == 0:
            raise ValueError(f"no training row carries {TARGET!r}")
        progress = bool(hp["progress"])
        g_train = batch_graphs(train, hp, progress=progress, desc="graphs (train)")
        g_val = batch_graphs(val, hp, progress=progress, desc="graphs (val)")
        g_test = batch_graphs(test, hp, progress=progress, desc="graphs (test)")

        mean = float(y_train.mean())
        std = float(y_train.std()) or 1.0
        network = build_network(hp).to(device)
        optimiser = torch.optim.Adam(network.parameters(), lr=hp["learning_rate"], weight_decay=hp["weight_decay"])
        state = {"epoch": 0, "best_val_mae_V": math.inf, "best_state": copy.deepcopy(network.state_dict()),
                 "best_epoch": 0, "history": []}
        resumed_from_epoch = None
        if resume_from is not None and (Path(resume_from) / CHECKPOINT_DIRNAME / CHECKPOINT_FILENAME).is_file():
            saved = torch.load(Path(resume_from) / CHECKPOINT_DIRNAME / CHECKPOINT_FILENAME, map_location="cpu",
                               weights_only=False)
            network.load_state_dict(saved["state_dict"])
            optimiser.load_state_dict(saved["optimiser"])
            state = saved["state"]
            mean, std = saved["target_mean"], saved["target_std"]
            rng.bit_generator.state = saved["rng_state"]
            torch.set_rng_state(saved["torch_rng_state"])
            resumed_from_epoch = state["epoch"]

        y_train_scaled = torch.from_numpy((y_train - mean) / std).to(device)
        epochs = track(range(state["epoch"], hp["epochs"]), total=hp["epochs"], initial=state["epoch"],
                       desc="train voltage-cgcnn", unit="epoch", disable=not progress)
        stopped_by_time = False
        for epoch in epochs:
            network.train()
            order = rng.permutation(len(g_train))
            losses = []
            for start in range(0, len(order), hp["batch_size"]):
                index = order[start:start + hp["batch_size"]]
                if len(index) < 2 and len(order) > 1:
                    continue  # batch norm needs more than one sample per batch
                prediction = network(collate_graphs([g_train[i] for i in index], device))
                loss = torch.nn.functional.l1_loss(prediction, y_train_scaled[index])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                losses.append(loss.item() * std)
            val_mae = (float(np.mean(np.abs(_predict_graphs(network, g_val, mean, std, 256) - y_val)))
                       if len(g_val) else float(np.mean(losses)))
            state["epoch"] = epoch + 1
            state["history"].append({"epoch": epoch + 1, "train_mae_V": float(np.mean(losses)), "val_mae_V": val_mae})
            if val_mae < state["best_val_mae_V"]:
                state.update(best_val_mae_V=val_mae, best_epoch=epoch + 1, best_state=copy.deepcopy(network.state_dict()))
            epochs.set_postfix(train_mae_V=f"{np.mean(losses):.3f}", val_mae_V=f"{val_mae:.3f}")
            torch.save({"state_dict": network.state_dict(), "optimiser": optimiser.state_dict(), "state": state,
                        "target_mean": mean, "target_std": std, "rng_state": rng.bit_generator.state,
                        "torch_rng_state": torch.get_rng_state(), "hyperparameters": hp},
                       checkpoint_dir / CHECKPOINT_FILENAME)
            if hp["max_train_time_s"] is not None and time.perf_counter() - started > float(hp["max_train_time_s"]):
                stopped_by_time = True
                break

        network.load_state_dict(state["best_state"])
        torch.save({"state_dict": network.state_dict(), "hyperparameters": hp, "target_mean": mean, "target_std": std},
                   model_dir / WEIGHTS_FILENAME)
        predicted = _predict_graphs(network, g_test, mean, std, 256)
        metrics: dict[str, Any] = {"n_test": len(test), "best_val_mae_V": float(state["best_val_mae_V"])}
        metrics.update(regression_metrics(predicted, y_test, float(y_train.mean()), TARGET))
        ions = np.array(test.column(WORKING_ION_KEY))
        for ion in sorted(set(ions.tolist())):
            mask = ions == ion
            metrics.update(regression_metrics(predicted[mask], y_test[mask], float(y_train.mean()), f"{TARGET}_{ion}"))
        training = {
            "epochs_run": int(state["epoch"]), "best_epoch": int(state["best_epoch"]),
            "resumed_from_epoch": resumed_from_epoch, "stopped_by_time_limit": stopped_by_time,
            "train_wall_time_s": round(time.perf_counter() - started, 2),
            "final_train_mae_V": state["history"][-1]["train_mae_V"] if state["history"] else None,
            "target_mean_V": mean, "target_std_V": std,
            "atom_features": f"CGCNN-style one-hot from pymatgen element data ({ATOM_FEATURE_LENGTH})",
            **training_record(str(device)),
        }
        return {"training": training, "metrics": metrics}

    def predict(self, batch: StructureBatch) -> dict[str, np.ndarray]:
        graphs = batch_graphs(batch, self.hyperparameters, self.default_working_ion,
                              progress=len(batch) > 1000, desc="graphs (predict)")
        return {TARGET: _predict_graphs(self.network, graphs, self.target_mean, self.target_std, 256)}
