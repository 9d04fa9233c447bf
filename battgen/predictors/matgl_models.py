"""matgl M3GNet and MEGNet property predictors (seed 001 §2.2.3.1: MEGNet, RMSE 0.13 eV/atom on Ef).

matgl 4 runs on PyTorch Geometric without DGL. The networks, the structure-to-graph converter
(``matgl.ext.pymatgen.Structure2Graph``, pymatgen's neighbour search) and the model files
(``model.pt`` / ``state.pt`` / ``model.json``, readable by ``matgl.load_model``) are matgl's own. The
training loop is battgen's plain torch loop (:mod:`battgen.predictors._graph_training`) rather than
matgl's Lightning module: it is the same loop the ALIGNN plugin uses (same early stopping on the
validation MAE, checkpoints and resume), and it skips a Lightning ``Trainer`` per fit. The batch
forward reproduces ``matgl.utils.training.ModelLightningModule.forward`` (Cartesian positions and
periodic-image shifts from the fractional coordinates and each graph's lattice).

* **M3GNet**: one network with one output per target (``ntargets``), intensive readout.
* **MEGNet**: matgl's MEGNet has a single output, so each target gets its own MEGNet; they train
  together on the summed, standardised loss.

Standardisation is folded into each network's output layer before saving, so a saved matgl directory
predicts eV/atom (or eV) directly and ``matgl.load_model(<model_dir>/matgl/<i>)`` works on its own.
Element types are matgl's ``DEFAULT_ELEMENTS`` (as for its published models): a structure with another
element (Po, At, Rn, Fr, Ra, Z > 94) gets NaN, and the reason in ``last_errors``.

Pretrained models load by name the normal online way (``matgl.load_model("M3GNet-MP-2018.6.1-Eform")``,
Hugging Face hub) or from a local directory via :meth:`MatglPredictor.from_pretrained`. Offline there
is no usable published matgl model (STACK.md): the by-name path then raises
:class:`PretrainedModelUnavailableError`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from battgen.batch import StructureBatch
from battgen.devices import training_record
from battgen.models import write_manifest
from battgen.predictors._graph_training import (
    TargetScaler,
    featurise,
    fold_standardisation_into_linear,
    held_out_metrics,
    labelled_graphs,
    last_linear,
    run_batches,
    seed_everything,
    target_matrix,
    train_network,
)
from battgen.predictors.alignn import PretrainedModelUnavailableError
from battgen.predictors.base import Predictor

CONFIG_FILENAME = "matgl_predictor.json"
MATGL_SUBDIR = "matgl"
# Published matgl models -> the battgen target keys of their outputs.
PRETRAINED_TARGETS = {
    "M3GNet-MP-2018.6.1-Eform": ["formation_energy_per_atom_eV"],
    "MEGNet-MP-2018.6.1-Eform": ["formation_energy_per_atom_eV"],
    "MEGNet-MP-2019.4.1-BandGap-mfi": ["band_gap_eV"],
}
# The multi-fidelity band-gap MEGNet takes the fidelity as a state index: 0 = PBE.
PBE_FIDELITY_INDEX = 0


class _PerTargetNetworks(torch.nn.Module):
    """One single-output network per target, run side by side (MEGNet has no multi-target head)."""

    def __init__(self, networks: list[torch.nn.Module]) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleList(networks)

    def forward(self, g, state_attr=None):
        return torch.stack([head(g, state_attr=state_attr).reshape(-1) for head in self.heads], dim=1)


def _collate(items: list[tuple[Any, torch.Tensor, torch.Tensor]]):
    from torch_geometric.data import Batch

    graphs, lattices, states = zip(*items)
    g = Batch.from_data_list(list(graphs))
    lattice = torch.cat(lattices, dim=0)  # (B, 3, 3)
    # Cartesian positions and image shifts, as matgl's ModelLightningModule.forward builds them
    g.pos = (g.frac_coords.unsqueeze(dim=-1) * lattice[g.batch]).sum(dim=1)
    g.pbc_offshift = (g.pbc_offset.unsqueeze(dim=-1) * lattice[g.batch[g.edge_index[0]]]).sum(dim=1)
    return g, torch.stack(states)


def _forward(network: torch.nn.Module, collated, n_graphs: int) -> torch.Tensor:
    g, state = collated
    return network(g, state_attr=state).reshape(n_graphs, -1)


class MatglPredictor(Predictor):
    """Shared code of the matgl predictors; subclasses say which network and its defaults."""

    matgl_class_name = ""
    per_target_networks = False

    def __init__(self, model: str | Path, device: str = "cpu", batch_size: int | None = None, **options: Any) -> None:
        import matgl

        super().__init__(model, device, **options)
        self.config = json.loads((self.model_dir / CONFIG_FILENAME).read_text(encoding="utf-8"))
        self.output_targets = list(self.config["targets"])
        heads = [matgl.load_model(self.model_dir / head["path"]) for head in self.config["heads"]]
        self.network = heads[0] if len(heads) == 1 else _PerTargetNetworks(heads)
        self.network.to(self.device).eval()
        self.batch_size = int(batch_size or self.manifest["hyperparameters"].get("batch_size", 32))
        self.last_errors: dict[str, str] = {}

    @property
    def targets(self) -> list[str]:
        return list(self.output_targets)

    # --- subclass hooks ---------------------------------------------------------------------------
    @classmethod
    def build_network(cls, hp: dict[str, Any], n_targets: int) -> torch.nn.Module:
        raise NotImplementedError

    @classmethod
    def output_layer(cls, network: torch.nn.Module) -> torch.nn.Linear:
        raise NotImplementedError

    # --- graphs -----------------------------------------------------------------------------------
    @staticmethod
    def _graph_maker(element_types: tuple[str, ...], cutoff: float, state: list[float], state_is_index: bool):
        from matgl.ext.pymatgen import Structure2Graph

        converter = Structure2Graph(element_types=tuple(element_types), cutoff=float(cutoff))
        state_tensor = torch.tensor(state, dtype=torch.long if state_is_index else torch.float32, device="cpu")

        def to_graph(structure):
            unknown = sorted({el.symbol for el in structure.composition.elements} - set(element_types))
            if unknown:
                raise ValueError(f"elements {', '.join(unknown)} are not among the model's element types")
            g, lattice, _ = converter.get_graph(structure)
            return g, lattice.reshape(1, 3, 3).float(), state_tensor

        return to_graph

    def _to_graph(self):
        return self._graph_maker(
            tuple(self.config["element_types"]), self.config["cutoff"], self.config["state_attr"],
            bool(self.config.get("state_is_index", False)),
        )

    # --- training -----------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        splits: Any,
        targets: list[str],
        model_dir: Path,
        hyperparameters: dict[str, Any],
        seed: int = 0,
        resume_from: Path | None = None,
        device: str = "cpu",
    ) -> dict[str, Any]:
        from matgl.config import DEFAULT_ELEMENTS

        hp = {**cls.default_hyperparameters(), **(hyperparameters or {})}
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(seed)
        element_types = tuple(DEFAULT_ELEMENTS)
        state = [0.0, 0.0]  # matgl's default graph state for models without a fidelity index
        to_graph = cls._graph_maker(element_types, hp["cutoff"], state, False)
        train_graphs, train_raw, train_counts = labelled_graphs(splits.train, targets, to_graph, f"{cls.name} graphs (train)")
        if not train_graphs:
            raise ValueError(f"no training row has a graph and any of the targets {targets}")
        val_graphs, val_raw, _ = labelled_graphs(splits.val, targets, to_graph, f"{cls.name} graphs (val)")
        scaler = TargetScaler.from_training(train_raw)

        seed_everything(seed)
        if cls.per_target_networks:
            network: torch.nn.Module = _PerTargetNetworks([cls.build_network(hp, 1) for _ in targets])
        else:
            network = cls.build_network(hp, len(targets))
        record = train_network(
            network, train_graphs, scaler.transform(train_raw), val_graphs, scaler.transform(val_raw),
            _collate, _forward, hp, targets, model_dir, seed, resume_from, desc=f"{cls.name} epochs",
            device=device,
        )

        heads = list(network.heads) if isinstance(network, _PerTargetNetworks) else [network]
        head_targets = [[t] for t in targets] if isinstance(network, _PerTargetNetworks) else [list(targets)]
        matgl_dir = model_dir / MATGL_SUBDIR
        if matgl_dir.exists():
            shutil.rmtree(matgl_dir)
        config_heads = []
        for index, (head, names) in enumerate(zip(heads, head_targets)):
            columns = [targets.index(n) for n in names]
            fold_standardisation_into_linear(cls.output_layer(head), scaler.mean[columns], scaler.std[columns])
            head.save(matgl_dir / str(index), metadata={"targets": names, "units_in_names": True})
            config_heads.append({"path": f"{MATGL_SUBDIR}/{index}", "targets": names})
        config = {
            "targets": list(targets), "heads": config_heads, "element_types": list(element_types),
            "cutoff": float(hp["cutoff"]), "state_attr": state, "state_is_index": False,
            "target_scaler": scaler.as_dict(),
        }
        (model_dir / CONFIG_FILENAME).write_text(json.dumps(config, indent=1), encoding="utf-8")

        test_graphs, test_errors = featurise([s for _, s in splits.test], to_graph, f"{cls.name} graphs (test)")
        test_predicted = _predict(network, test_graphs, int(hp["batch_size"]), len(targets))
        metrics = held_out_metrics(test_predicted, target_matrix(splits.test, targets), scaler.mean, targets)
        training = {
            "targets": list(targets),
            **record,
            **{f"train_{key}": value for key, value in train_counts.items()},
            "n_test_graph_failed": len(test_errors),
            "target_mean": scaler.mean.tolist(),
            "target_std": scaler.std.tolist(),
            "training_loop": "battgen plain torch loop over matgl network + Structure2Graph",
            "matgl_version": _version("matgl"),
            "torch_version": str(torch.__version__),
            **training_record(str(device)),
        }
        write_manifest(model_dir, "predictor", cls.architecture, hp, training, metrics)
        return {"training": training, "metrics": metrics}

    def predict(self, batch: StructureBatch) -> dict[str, np.ndarray]:
        graphs, errors = featurise([s for _, s in batch], self._to_graph(), f"{self.name} graphs")
        self.last_errors = {batch.row_ids[i]: reason for i, reason in errors.items()}
        values = _predict(self.network, graphs, self.batch_size, len(self.output_targets))
        return {target: values[:, j] for j, target in enumerate(self.output_targets)}

    # --- pretrained ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        model_dir: str | Path | None = None,
        targets: list[str] | None = None,
        device: str = "cpu",
    ) -> MatglPredictor:
        """A pretrained matgl model by name (``matgl.load_model`` downloads it from the matgl hub) or
        from a local matgl directory, wrapped into a battgen model directory ``model_dir`` (default
        ``~/.cache/battgen/matgl/<name>``); a battgen model directory loads as is.

        ``targets`` names the outputs; known published names map themselves (:data:`PRETRAINED_TARGETS`).
        """
        import matgl

        path = Path(name_or_path)
        if (path / "battgen-model.yaml").is_file():
            return cls(path, device=device)
        name = str(name_or_path)
        try:
            network = matgl.load_model(name)
        except Exception as exc:  # noqa: BLE001 - matgl wraps hub / file errors in RuntimeError or ValueError
            raise PretrainedModelUnavailableError(
                f"matgl could not load {name!r} (local directory or hub download): "
                f"{type(exc).__name__}: {exc} <- {type(exc.__cause__).__name__ if exc.__cause__ else ''}. "
                "Without internet, pass a local directory saved by matgl instead."
            ) from exc
        inner = getattr(network, "model", network)  # TransformedTargetModel wraps the real network
        if type(inner).__name__ != cls.matgl_class_name:
            raise ValueError(f"{name!r} is a matgl {type(inner).__name__}, not a {cls.matgl_class_name}")
        targets = list(targets or PRETRAINED_TARGETS.get(path.name, []))
        if not targets:
            raise ValueError(f"{name!r}: unknown outputs; pass targets=[...] (metadata keys with units)")
        init_args = getattr(inner, "_init_args", {})
        n_outputs = int(init_args.get("ntargets", 1))
        if n_outputs != len(targets):
            raise ValueError(f"{name!r} has {n_outputs} output(s) but {len(targets)} target(s) were given")
        state_is_index = init_args.get("ntypes_state") is not None
        destination = Path(model_dir) if model_dir else Path.home() / ".cache" / "battgen" / "matgl" / path.name
        if destination.exists():
            shutil.rmtree(destination)
        network.save(destination / MATGL_SUBDIR / "0", metadata={"targets": targets, "source": name})
        config = {
            "targets": targets, "heads": [{"path": f"{MATGL_SUBDIR}/0", "targets": targets}],
            "element_types": list(inner.element_types), "cutoff": float(inner.cutoff),
            "state_attr": [PBE_FIDELITY_INDEX] if state_is_index else [0.0, 0.0], "state_is_index": state_is_index,
        }
        (destination / CONFIG_FILENAME).write_text(json.dumps(config, indent=1), encoding="utf-8")
        hp = {**cls.default_hyperparameters(), "cutoff": float(inner.cutoff)}
        training = {"targets": targets, "pretrained_source": name, "matgl_version": _version("matgl")}
        write_manifest(destination, "predictor", cls.architecture, hp, training, {})
        return cls(destination, device=device)


class M3GNetPredictor(MatglPredictor):
    """M3GNet (Chen & Ong 2022) property model, one output per target."""

    name = "m3gnet"
    architecture = "matgl-m3gnet"
    matgl_class_name = "M3GNet"

    @classmethod
    def default_hyperparameters(cls) -> dict[str, Any]:
        return {
            # matgl M3GNet defaults (as in its formation-energy example)
            "cutoff": 5.0,
            "threebody_cutoff": 4.0,
            "nblocks": 3,
            "units": 64,
            "dim_node_embedding": 64,
            "dim_edge_embedding": 64,
            "max_n": 3,
            "max_l": 3,
            "readout_type": "set2set",
            # matgl ModelLightningModule defaults: Adam lr 1e-3, cosine decay to lr * 0.01
            "epochs": 300,
            "batch_size": 32,
            "learning_rate": 1.0e-3,
            "weight_decay": 0.0,
            "optimizer": "adam",
            "scheduler": "cosine",
            "decay_alpha": 0.01,
            "early_stopping_patience": 50,
        }

    @classmethod
    def build_network(cls, hp: dict[str, Any], n_targets: int) -> torch.nn.Module:
        from matgl.config import DEFAULT_ELEMENTS
        from matgl.models import M3GNet

        return M3GNet(
            element_types=tuple(DEFAULT_ELEMENTS), is_intensive=True, readout_type=hp["readout_type"],
            cutoff=float(hp["cutoff"]), threebody_cutoff=float(hp["threebody_cutoff"]), nblocks=int(hp["nblocks"]),
            units=int(hp["units"]), dim_node_embedding=int(hp["dim_node_embedding"]),
            dim_edge_embedding=int(hp["dim_edge_embedding"]), max_n=int(hp["max_n"]), max_l=int(hp["max_l"]),
            ntargets=int(n_targets),
        )

    @classmethod
    def output_layer(cls, network: torch.nn.Module) -> torch.nn.Linear:
        return last_linear(network.final_layer)


class MEGNetPredictor(MatglPredictor):
    """MEGNet (Chen et al. 2019) property model, one network per target."""

    name = "megnet"
    architecture = "matgl-megnet"
    matgl_class_name = "MEGNet"
    per_target_networks = True

    @classmethod
    def default_hyperparameters(cls) -> dict[str, Any]:
        return {
            # seed 001 §3.2 / MEGNet paper: 5 Å cutoff, Gaussian width 0.5 (100 centres), embedding 16, 3 blocks
            "cutoff": 5.0,
            "gauss_width": 0.5,
            "dim_node_embedding": 16,
            "dim_edge_embedding": 100,
            "dim_state_embedding": 2,
            "nblocks": 3,
            # seed 001 §3.2: batch 32, lr 7.5e-4, L2 1e-3, 300 epochs; matgl's cosine decay
            "epochs": 300,
            "batch_size": 32,
            "learning_rate": 7.5e-4,
            "weight_decay": 1.0e-3,
            "optimizer": "adam",
            "scheduler": "cosine",
            "decay_alpha": 0.01,
            "early_stopping_patience": 50,
        }

    @classmethod
    def build_network(cls, hp: dict[str, Any], n_targets: int) -> torch.nn.Module:
        from matgl.config import DEFAULT_ELEMENTS
        from matgl.models import MEGNet

        return MEGNet(
            element_types=tuple(DEFAULT_ELEMENTS), cutoff=float(hp["cutoff"]), gauss_width=float(hp["gauss_width"]),
            dim_node_embedding=int(hp["dim_node_embedding"]), dim_edge_embedding=int(hp["dim_edge_embedding"]),
            dim_state_embedding=int(hp["dim_state_embedding"]), nblocks=int(hp["nblocks"]),
        )

    @classmethod
    def output_layer(cls, network: torch.nn.Module) -> torch.nn.Linear:
        return last_linear(network.output_proj)


def _predict(network: torch.nn.Module, graphs: list[Any], batch_size: int, n_targets: int) -> np.ndarray:
    """Network outputs for the graphs that exist, NaN rows where a graph could not be built."""
    values = np.full((len(graphs), n_targets), np.nan)
    ok = [i for i, graph in enumerate(graphs) if graph is not None]
    if ok:
        values[ok] = run_batches(network, [graphs[i] for i in ok], _collate, _forward, batch_size, desc="matgl predict")
    return values


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


__all__ = ["M3GNetPredictor", "MEGNetPredictor", "MatglPredictor", "PRETRAINED_TARGETS", "PretrainedModelUnavailableError"]
