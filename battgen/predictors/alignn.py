"""ALIGNN property predictor (seed 000 §2.4, seed 001 §2.2.3.3), DGL-free.

The classic ``alignn.models.alignn.ALIGNN`` needs DGL, which does not import here, so this plugin uses
alignn's pure-torch path: ``alignn.torch_graph_builder.build_pure_torch_graph`` (bond graph + line
graph of bond angles as plain tensors) and ``ALIGNNAtomWisePure`` used as a property model
(``calculate_gradient=False``, no force head), one output per target. Graphs of a batch are collated
with ``batch_torch_graph_pairs`` and go through the network together (batched training and inference).

Defaults are the published ALIGNN settings (Choudhary & DeCost 2021; seed 001 §3.2): 4 ALIGNN + 4 GCN
layers, hidden 256, embedding 64, 80 edge / 40 triplet RBF bins, CGCNN atom features (92), **8 Å cutoff
with the 12 nearest neighbours** (the published k-nearest graph; seed 001 keeps "the default value of
8 Å ... up to 12 adjacent atoms"; the network's edge RBF also spans 0-8 Å), AdamW lr 1e-3, weight decay
1e-5, one-cycle schedule, batch 64, 300 epochs, MSE loss. STACK's example uses a 5 Å radius graph
(alignn 2026's own training default); set ``cutoff: 5.0, max_neighbors: null`` for that.

Screening thresholds in seed 000 §3 (formation energy <= -1.5 eV/atom, band gap <= 0.5 eV,
E_hull <= 0.08 eV/atom) are applied by the screening step to the ``predicted_<target>`` columns.

E_hull and the reference hull
-----------------------------
ALIGNN's public E_hull and formation-energy models are trained on JARVIS-DFT (OptB88vdW), so their
"energy above hull" is measured against the JARVIS hull. Our filter's E_hull is against the Materials
Project hull. Do not screen on a hull from another database: predict (or relax and compute) a formation
energy on the MP scale, then place it on the MP-referenced :class:`~battgen.stability.hull.ReferenceHull`
with :func:`ehull_from_predicted_formation_energy`, which labels every value with its source
(``e_above_hull_source``). :meth:`ALIGNNPredictor.from_pretrained` names JARVIS E_hull outputs
``e_above_hull_jarvis_eV_per_atom`` so they cannot be mistaken for the MP quantity.
"""

from __future__ import annotations

import difflib
import json
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    run_batches,
    seed_everything,
    target_matrix,
    train_network,
)
from battgen.predictors.base import PREDICTED_PREFIX, Predictor
from battgen.stability.predicted import E_HULL_COLUMN, ehull_from_predicted_formation_energy  # noqa: F401 - re-export

if TYPE_CHECKING:  # the hull module pulls pymatgen's compatibility machinery (seconds to import)
    from battgen.stability.hull import ReferenceHull

MODEL_FILENAME = "alignn_model.pt"
CONFIG_FILENAME = "alignn_config.json"
# cgcnn atom features exist up to Fm (Z=100); jarvis silently substitutes another element's features
# beyond that, which would give a confident wrong prediction: such rows are refused (NaN) instead.
MAX_ATOMIC_NUMBER = 100
# JARVIS-DFT target names of alignn's pretrained models -> our unit-carrying metadata keys.
JARVIS_TARGETS = {
    "formation_energy_peratom": "formation_energy_per_atom_jarvis_eV",
    "optb88vdw_bandgap": "band_gap_optb88vdw_eV",
    "mbj_bandgap": "band_gap_mbj_eV",
    "ehull": "e_above_hull_jarvis_eV_per_atom",
}


class PretrainedModelUnavailableError(RuntimeError):
    """A pretrained model could not be downloaded or read (e.g. no internet on this machine)."""


def _network_config(hp: dict[str, Any], n_outputs: int) -> dict[str, Any]:
    return {
        "name": "alignn_atomwise_pure",
        "alignn_layers": int(hp["alignn_layers"]),
        "gcn_layers": int(hp["gcn_layers"]),
        "atom_input_features": int(hp["atom_input_features"]),
        "edge_input_features": int(hp["edge_input_features"]),
        "triplet_input_features": int(hp["triplet_input_features"]),
        "embedding_features": int(hp["embedding_features"]),
        "hidden_features": int(hp["hidden_features"]),
        "output_features": int(n_outputs),
        # a property model: no autograd forces, no ZBL / bond-length penalty terms
        "calculate_gradient": False,
        "gradwise_weight": 0.0,
        "energy_mult_natoms": False,
        "use_penalty": False,
        "use_zbl": False,
        "lg_on_fly": True,
    }


def build_network(network_config: dict[str, Any]) -> torch.nn.Module:
    from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig

    config = dict(network_config)
    config["name"] = "alignn_atomwise_pure"
    return ALIGNNAtomWisePure(ALIGNNAtomWisePureConfig(**config))


def structure_to_graph(structure, graph_settings: dict[str, Any]):
    """``(g, lg)`` pure-torch bond graph and line graph of a pymatgen structure."""
    from jarvis.core.atoms import Atoms
    from alignn.torch_graph_builder import build_pure_torch_graph

    too_heavy = sorted({el.symbol for el in structure.composition.elements if el.Z > MAX_ATOMIC_NUMBER})
    if too_heavy:
        raise ValueError(f"no CGCNN atom features for {', '.join(too_heavy)} (Z > {MAX_ATOMIC_NUMBER})")
    atoms = Atoms(
        lattice_mat=np.asarray(structure.lattice.matrix),
        coords=np.asarray(structure.frac_coords),
        elements=[site.specie.symbol for site in structure],
        cartesian=False,
    )
    max_neighbors = graph_settings.get("max_neighbors")
    return build_pure_torch_graph(
        atoms,
        two_body_cutoff=float(graph_settings["cutoff"]),
        three_body_cutoff=graph_settings.get("three_body_cutoff"),
        max_neighbors=int(max_neighbors) if max_neighbors else None,
        atom_features=str(graph_settings.get("atom_features", "cgcnn")),
    )


def collate_graph_pairs(pairs: list[Any]):
    from alignn.torch_graph_builder import batch_torch_graph_pairs

    g, lg = batch_torch_graph_pairs(pairs)
    return g, lg


def network_forward(network: torch.nn.Module, collated, n_graphs: int) -> torch.Tensor:
    g, lg = collated
    # the pure model does not use the lattice in its property forward; it only unpacks it
    out = network((g, lg, None))["out"]
    return out.reshape(n_graphs, -1)


class ALIGNNPredictor(Predictor):
    """DGL-free ALIGNN trained on our data; one output per target (standardised during training)."""

    name = "alignn"
    architecture = "alignn"

    def __init__(self, model: str | Path, device: str = "cpu", batch_size: int | None = None, **options: Any) -> None:
        super().__init__(model, device, **options)
        config = json.loads((self.model_dir / CONFIG_FILENAME).read_text(encoding="utf-8"))
        self.graph_settings = config["graph"]
        self.output_targets = list(config["targets"])
        self.network = build_network(config["network"])
        state = torch.load(self.model_dir / MODEL_FILENAME, map_location=self.device, weights_only=True)
        self.network.load_state_dict(state)
        self.network.to(self.device).eval()
        self.batch_size = int(batch_size or self.manifest["hyperparameters"].get("batch_size", 64))
        self.last_errors: dict[str, str] = {}

    @property
    def targets(self) -> list[str]:
        return list(self.output_targets)

    @classmethod
    def default_hyperparameters(cls) -> dict[str, Any]:
        return {
            # network (ALIGNN paper / ALIGNNConfig)
            "alignn_layers": 4,
            "gcn_layers": 4,
            "atom_input_features": 92,  # CGCNN features
            "edge_input_features": 80,
            "triplet_input_features": 40,
            "embedding_features": 64,
            "hidden_features": 256,
            # graph: 12 nearest neighbours within 8 Å, every bond pair forms a triplet
            "cutoff": 8.0,
            "max_neighbors": 12,
            "three_body_cutoff": None,
            "atom_features": "cgcnn",
            # training (ALIGNN paper)
            "epochs": 300,
            "batch_size": 64,
            "learning_rate": 1.0e-3,
            "weight_decay": 1.0e-5,
            "optimizer": "adamw",
            "scheduler": "onecycle",
            "early_stopping_patience": 50,
        }

    @staticmethod
    def _graph_settings(hp: dict[str, Any]) -> dict[str, Any]:
        return {key: hp[key] for key in ("cutoff", "max_neighbors", "three_body_cutoff", "atom_features")}

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
        hp = {**cls.default_hyperparameters(), **(hyperparameters or {})}
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(seed)
        graph_settings = cls._graph_settings(hp)

        def to_graph(structure):
            return structure_to_graph(structure, graph_settings)

        train_graphs, train_raw, train_counts = labelled_graphs(splits.train, targets, to_graph, "ALIGNN graphs (train)")
        if not train_graphs:
            raise ValueError(f"no training row has a graph and any of the targets {targets}")
        val_graphs, val_raw, _ = labelled_graphs(splits.val, targets, to_graph, "ALIGNN graphs (val)")
        scaler = TargetScaler.from_training(train_raw)
        network_config = _network_config(hp, len(targets))
        network = build_network(network_config)
        record = train_network(
            network, train_graphs, scaler.transform(train_raw), val_graphs, scaler.transform(val_raw),
            collate_graph_pairs, network_forward, hp, targets, model_dir, seed, resume_from, desc="ALIGNN epochs",
            device=device,
        )
        fold_standardisation_into_linear(network.fc, scaler.mean, scaler.std)
        torch.save(network.state_dict(), model_dir / MODEL_FILENAME)
        (model_dir / CONFIG_FILENAME).write_text(
            json.dumps({"network": network_config, "graph": graph_settings, "targets": list(targets),
                        "target_scaler": scaler.as_dict()}, indent=1),
            encoding="utf-8",
        )

        test_graphs, test_errors = featurise([s for _, s in splits.test], to_graph, "ALIGNN graphs (test)")
        test_predicted = _predict_graphs(network, test_graphs, int(hp["batch_size"]), len(targets))
        metrics = held_out_metrics(test_predicted, target_matrix(splits.test, targets), scaler.mean, targets)
        training = {
            "targets": list(targets),
            **record,
            **{f"train_{key}": value for key, value in train_counts.items()},
            "n_test_graph_failed": len(test_errors),
            "target_mean": scaler.mean.tolist(),
            "target_std": scaler.std.tolist(),
            "graph_builder": "alignn.torch_graph_builder.build_pure_torch_graph",
            "alignn_version": _version("alignn"),
            "torch_version": str(torch.__version__),
            **training_record(str(device)),
        }
        write_manifest(model_dir, "predictor", cls.architecture, hp, training, metrics)
        return {"training": training, "metrics": metrics}

    def predict(self, batch: StructureBatch) -> dict[str, np.ndarray]:
        graphs, errors = featurise([s for _, s in batch], lambda s: structure_to_graph(s, self.graph_settings),
                                   "ALIGNN graphs")
        self.last_errors = {batch.row_ids[i]: reason for i, reason in errors.items()}
        values = _predict_graphs(self.network, graphs, self.batch_size, len(self.output_targets))
        return {target: values[:, j] for j, target in enumerate(self.output_targets)}

    # --- pretrained models --------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        model_dir: str | Path | None = None,
        targets: list[str] | None = None,
        device: str = "cpu",
    ) -> ALIGNNPredictor:
        """A pretrained ALIGNN by alignn registry name (downloaded from figshare the normal way, through
        ``alignn.pretrained.get_alignn2_model``) or from a local directory.

        A local directory is either a battgen ALIGNN model directory, or alignn's own layout
        (``config.json`` + ``best_model.pt``). alignn-layout models are converted into a battgen model
        directory ``model_dir`` (default ``~/.cache/battgen/alignn/<name>``) with a manifest, so the
        model has a content hash like any trained one. JARVIS targets get unit-carrying keys that say
        they are JARVIS quantities (:data:`JARVIS_TARGETS`); other targets need ``targets``.
        """
        path = Path(name_or_path)
        if path.is_dir():
            if (path / "battgen-model.yaml").is_file():
                return cls(path, device=device)
            if (path / "config.json").is_file() and (path / "best_model.pt").is_file():
                source_dir, source = path, str(path.resolve())
            else:
                raise FileNotFoundError(
                    f"{path} is neither a battgen model directory nor an alignn model (config.json + best_model.pt)"
                )
        else:
            from alignn import pretrained

            name = str(name_or_path)
            if name not in pretrained.ALIGNN2_MODELS:
                close = difflib.get_close_matches(name, list(pretrained.ALIGNN2_MODELS), n=3)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise KeyError(f"{name!r} is not a directory nor an alignn pretrained model name.{hint}")
            url = pretrained.ALIGNN2_MODELS[name].get("url")
            try:
                files = pretrained.get_alignn2_model(name)
            except (OSError, zipfile.BadZipFile) as exc:  # requests errors derive from OSError
                raise PretrainedModelUnavailableError(
                    f"could not download the pretrained ALIGNN model {name!r} from figshare ({url}): "
                    f"{type(exc).__name__}: {exc}. Without internet, pass a local directory holding the "
                    "model's config.json and best_model.pt instead."
                ) from exc
            if "best_model.pt" not in files or "config.json" not in files:
                raise PretrainedModelUnavailableError(f"the download of {name!r} holds no config.json / best_model.pt")
            source_dir, source = Path(files["best_model.pt"]).parent, f"alignn.pretrained:{name} ({url})"
        destination = Path(model_dir) if model_dir else Path.home() / ".cache" / "battgen" / "alignn" / path.name
        cls._convert_alignn_layout(source_dir, destination, source, targets)
        return cls(destination, device=device)

    @classmethod
    def _convert_alignn_layout(cls, source_dir: Path, destination: Path, source: str, targets: list[str] | None) -> None:
        config = json.loads((source_dir / "config.json").read_text(encoding="utf-8"))
        network_config = dict(config.get("model", config))
        if "smooth" in str(network_config.get("name", "")):
            raise ValueError(f"{source}: smooth ALIGNN variants are not supported by this predictor")
        network_config = {**network_config, "calculate_gradient": False}
        state = torch.load(source_dir / "best_model.pt", map_location="cpu", weights_only=False)
        if isinstance(state, dict) and "model" in state:
            state = state["model"]
        network = build_network(network_config)
        missing, _ = network.load_state_dict(state, strict=False)
        missing_parameters = sorted(set(missing) & {name for name, _ in network.named_parameters()})
        if missing_parameters:
            raise ValueError(f"{source}: checkpoint lacks parameters {missing_parameters[:5]}")
        n_outputs = int(network_config.get("output_features", 1))
        if targets is None:
            jarvis_target = str(config.get("target", ""))
            if jarvis_target not in JARVIS_TARGETS:
                raise ValueError(
                    f"{source}: target {jarvis_target!r} has no known battgen key; pass targets=[...] with units"
                )
            targets = [JARVIS_TARGETS[jarvis_target]]
        if len(targets) != n_outputs:
            raise ValueError(f"{source}: the model has {n_outputs} output(s) but {len(targets)} target(s) were given")
        max_neighbors = config.get("max_neighbors", 12)
        if config.get("neighbor_strategy") == "radius_graph":
            max_neighbors = None
        graph = {
            "cutoff": float(config.get("cutoff", 8.0)),
            "max_neighbors": max_neighbors,
            "three_body_cutoff": config.get("three_body_cutoff"),
            "atom_features": config.get("atom_features", "cgcnn"),
        }
        if graph["three_body_cutoff"] is not None and graph["three_body_cutoff"] > graph["cutoff"]:
            graph["three_body_cutoff"] = None
        if destination.exists():
            shutil.rmtree(destination)
        destination.mkdir(parents=True)
        torch.save(network.state_dict(), destination / MODEL_FILENAME)
        (destination / CONFIG_FILENAME).write_text(
            json.dumps({"network": network_config, "graph": graph, "targets": targets}, indent=1), encoding="utf-8"
        )
        hp = {**cls.default_hyperparameters(), **{k: v for k, v in graph.items()}}
        for key in ("alignn_layers", "gcn_layers", "hidden_features", "embedding_features"):
            if key in network_config:
                hp[key] = network_config[key]
        training = {"targets": targets, "pretrained_source": source, "reference_database": "as trained by alignn (JARVIS-DFT for its registry models)"}
        write_manifest(destination, "predictor", cls.architecture, hp, training, {})


def _predict_graphs(network: torch.nn.Module, graphs: list[Any], batch_size: int, n_targets: int) -> np.ndarray:
    """Network outputs for the graphs that exist, NaN rows where a graph could not be built."""
    values = np.full((len(graphs), n_targets), np.nan)
    ok = [i for i, graph in enumerate(graphs) if graph is not None]
    if ok:
        values[ok] = run_batches(network, [graphs[i] for i in ok], collate_graph_pairs, network_forward,
                                 batch_size, desc="ALIGNN predict")
    return values


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


# --- E_hull against an MP-referenced hull ---------------------------------------------------------
__all__ = [
    "ALIGNNPredictor",
    "JARVIS_TARGETS",
    "PretrainedModelUnavailableError",
    "ehull_from_predicted_formation_energy",
]
