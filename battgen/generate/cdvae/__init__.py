"""CDVAE (Xie et al., ICLR 2022) with Con-CDVAE conditioning (Ye et al., 2024) as a battgen generator.

``battgen train-generator`` with ``generator: cdvae`` trains it (:mod:`.train`); ``battgen generate`` with
``options: {model: <dir>}`` samples it. What the network is, and where it departs from the papers, is
written in :mod:`battgen.generate.cdvae.model`; presets in :mod:`.presets`.

Generation ``conditions`` keys:

* the scalar conditions the model was trained with (``hyperparameters.conditions``; units in the names,
  e.g. ``gravimetric_capacity_mAh_per_g``); trained scalars not given default to the training mean;
* ``required_elements`` / ``forbidden_elements`` (symbols): forbidden types are masked in the
  composition and type logits; samples lacking a required element are rejected and resampled in at most
  ``max_resample_rounds`` rounds (constructor option, default 5); rows still lacking one are left out and
  counted. A model trained with ``element_presence`` is also conditioned on them;
* ``element_pool``: ``training`` (default: only the elements of the training set, stored with the model),
  ``all`` (Z = 1 ... 100) or a list of symbols; elements outside the pool are masked like forbidden ones;
* ``n_atoms`` (force every sample's atom count, at most the model's ``max_atoms``), ``batch_size`` (crystals per Langevin batch),
  ``n_step_each``, ``step_lr`` (Langevin settings), ``latent_optimisation``:
  ``{property, target, steps, lr}`` gradient steps on z toward a property-head target (CDVAE §4.3).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Element, Lattice, Structure
from tqdm.auto import tqdm

from battgen.batch import StructureBatch
from battgen.devices import generator_on
from battgen.generate.base import TrainableGenerator
from battgen.generate.cdvae.data import MAX_ATOMIC_NUMBER, collate, element_symbols_to_numbers
from battgen.generate.cdvae.model import CDVAE
from battgen.generate.cdvae.presets import PAPER_HYPERPARAMETERS, preset_hyperparameters
from battgen.generate.cdvae.train import MODEL_FILENAME, featurize_batch, load_model, presence_vectors, train_cdvae
from battgen.generate.conditions import SCALAR_CONDITIONS, validate_element_conditions
from battgen.models import ModelFormatError, read_manifest

__all__ = ["CDVAEGenerator", "preset_hyperparameters"]

SAMPLING_KEYS = ("required_elements", "forbidden_elements", "element_pool", "n_atoms", "batch_size", "n_step_each",
                 "step_lr", "latent_optimisation")
LATENT_OPTIMISATION_KEYS = {"property", "target", "steps", "lr"}


class CDVAEGenerator(TrainableGenerator):
    """A trained CDVAE model directory, sampled with annealed Langevin dynamics."""

    name = "cdvae"
    architecture = "cdvae"

    def __init__(self, model: str | Path, device: str = "auto", **options: Any) -> None:
        super().__init__(model, device, **options)
        unknown = sorted(set(options) - {"max_resample_rounds", "progress"})
        if unknown:
            raise ValueError(f"unknown CDVAE option(s) {unknown}; allowed: max_resample_rounds, progress")
        self.manifest = read_manifest(self.model_dir, architecture=self.architecture)
        if not (self.model_dir / MODEL_FILENAME).is_file():
            raise ModelFormatError(f"{self.model_dir} has no {MODEL_FILENAME}")
        try:
            self.model: CDVAE = load_model(self.model_dir, self.device)
        except (RuntimeError, KeyError, TypeError) as exc:  # a corrupt or foreign torch file
            raise ModelFormatError(f"{self.model_dir / MODEL_FILENAME} cannot be loaded as CDVAE: {exc}") from exc
        self.hyperparameters = {**PAPER_HYPERPARAMETERS, **(self.manifest.get("hyperparameters") or {})}
        self.max_resample_rounds = int(options.get("max_resample_rounds", 5))
        self.progress = bool(options.get("progress", True))

    # --- training ------------------------------------------------------------------------------------
    @classmethod
    def default_hyperparameters(cls) -> dict[str, Any]:
        return preset_hyperparameters("paper")

    @classmethod
    def train(cls, splits: Any, model_dir: Path, hyperparameters: dict[str, Any], seed: int = 0,
              resume_from: Path | None = None, device: str = "cpu") -> dict[str, Any]:
        return train_cdvae(splits.train, splits.val, Path(model_dir), hyperparameters, seed, resume_from, device)

    # --- conditions ----------------------------------------------------------------------------------
    def _parse_conditions(self, conditions: dict[str, Any]) -> dict[str, Any]:
        trained = self.model.scalar_condition_keys
        unknown = sorted(set(conditions) - set(SAMPLING_KEYS) - set(SCALAR_CONDITIONS))
        if unknown:
            raise ValueError(f"unknown CDVAE condition(s) {unknown}; allowed: {sorted((*SAMPLING_KEYS, *trained))}")
        untrained = sorted(key for key in conditions if key in SCALAR_CONDITIONS and key not in trained)
        if untrained:
            raise ValueError(f"this CDVAE model was not trained on condition(s) {untrained}; it was trained on "
                             f"{trained or 'none (unconditional)'}")
        required, forbidden = validate_element_conditions(conditions)
        scalars = {}
        for index, key in enumerate(trained):
            value = conditions.get(key, self.model.condition_scaler.mean[index])  # default: the training mean
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"condition {key} must be a finite number, got {value!r}")
            scalars[key] = float(value)
        n_atoms = conditions.get("n_atoms")
        if n_atoms is not None and (isinstance(n_atoms, bool) or not isinstance(n_atoms, int) or n_atoms < 1):
            raise ValueError(f"n_atoms must be a positive integer, got {n_atoms!r}")
        if n_atoms is not None and n_atoms > self.model.max_atoms:
            # the decoder never saw such cells: a probe packed 0.16 Å apart atoms into them
            raise ValueError(f"n_atoms {n_atoms} exceeds this model's max_atoms {self.model.max_atoms} "
                             "(the largest cell its atom-count head and decoder were trained for)")
        pool = self._element_pool(conditions.get("element_pool", "training"))
        unreachable = sorted(set(required) - set(pool)) if pool is not None else []
        if unreachable:
            raise ValueError(f"required element(s) {unreachable} are outside the element pool; "
                             "set element_pool: all or list them")
        settings = {
            "batch_size": int(conditions.get("batch_size", 256)),
            "n_step_each": int(conditions.get("n_step_each", self.hyperparameters["n_step_each"])),
            "step_lr": float(conditions.get("step_lr", self.hyperparameters["step_lr"])),
        }
        if settings["batch_size"] < 1 or settings["n_step_each"] < 1 or settings["step_lr"] <= 0:
            raise ValueError(f"batch_size and n_step_each must be >= 1 and step_lr > 0, got {settings}")
        optimisation = conditions.get("latent_optimisation")
        if optimisation is not None:
            optimisation = dict(optimisation)
            bad = sorted(set(optimisation) - LATENT_OPTIMISATION_KEYS)
            if bad or "property" not in optimisation or "target" not in optimisation:
                raise ValueError("latent_optimisation needs 'property' and 'target' (optional 'steps', 'lr'); "
                                 f"got {sorted(optimisation)}")
            if optimisation["property"] not in self.model.property_keys:
                raise ValueError(f"latent_optimisation: the model has no property head {optimisation['property']!r}; "
                                 f"heads: {self.model.property_keys or 'none'}")
            optimisation = {"property": str(optimisation["property"]), "target": float(optimisation["target"]),
                            "steps": int(optimisation.get("steps", 100)), "lr": float(optimisation.get("lr", 1e-2))}
        return {"scalars": scalars, "required": required, "forbidden": forbidden, "n_atoms": n_atoms,
                "element_pool": pool, "latent_optimisation": optimisation, **settings}

    def _element_pool(self, value: Any) -> list[str] | None:
        """Symbols the sampler may place (None: all of Z = 1 ... 100)."""
        if value == "all":
            return None
        if value == "training":
            trained = self.model.config.get("element_pool")
            return [Element.from_Z(int(z)).symbol for z in trained] if trained else None  # older models: all
        if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
            try:
                return sorted({Element(v).symbol for v in value})
            except ValueError as exc:
                raise ValueError(f"element_pool: {exc}") from exc
        raise ValueError(f"element_pool must be 'training', 'all' or a list of element symbols, got {value!r}")

    def _masked_types(self, parsed: dict[str, Any]) -> torch.Tensor | None:
        """(100,) bool: atomic numbers the sampler must not place (forbidden or outside the pool)."""
        device = self.model.device
        masked = torch.zeros(MAX_ATOMIC_NUMBER, dtype=torch.bool, device=device)
        if parsed["element_pool"] is not None:
            masked[:] = True
            masked[[z - 1 for z in element_symbols_to_numbers(parsed["element_pool"])]] = False
        if parsed["forbidden"]:
            masked[[z - 1 for z in element_symbols_to_numbers(parsed["forbidden"])]] = True
        return masked if bool(masked.any()) else None

    def _condition_tensors(self, parsed: dict[str, Any], n: int) -> dict[str, torch.Tensor] | None:
        if not self.model.conditional:
            return None
        keys, device = self.model.scalar_condition_keys, self.model.device
        raw = torch.tensor([[parsed["scalars"][key] for key in keys]] * n, dtype=torch.float32,
                           device=device).reshape(n, len(keys))
        present = torch.zeros(n, MAX_ATOMIC_NUMBER, device=device)
        absent = torch.zeros(n, MAX_ATOMIC_NUMBER, device=device)
        if self.model.use_element_presence:
            for z in element_symbols_to_numbers(parsed["required"]):
                present[:, z - 1] = 1.0
            for z in element_symbols_to_numbers(parsed["forbidden"]):
                absent[:, z - 1] = 1.0
        return {"scalars": self.model.condition_scaler.transform(raw), "present": present, "absent": absent}

    def _optimise_latent(self, z: torch.Tensor, condition, settings: dict[str, Any]) -> torch.Tensor:
        """CDVAE's latent optimisation: Adam on z to move the property head's prediction to the target."""
        index = self.model.property_keys.index(settings["property"])
        target = (settings["target"] - self.model.property_scaler.mean[index]) / self.model.property_scaler.std[index]
        z = z.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=settings["lr"])
        for _ in range(settings["steps"]):
            optimizer.zero_grad()
            latent = self.model.property_latent(z, self.model.condition_latent(z, condition))
            predicted = self.model.fc_property(latent)[:, index]
            ((predicted - target) ** 2).mean().backward()
            optimizer.step()
        return z.detach()

    # --- sampling ------------------------------------------------------------------------------------
    def _sample_chunk(self, n: int, parsed: dict[str, Any], generator: torch.Generator,
                      z: torch.Tensor | None = None, num_atoms: torch.Tensor | None = None) -> list[dict[str, Any]]:
        condition = self._condition_tensors(parsed, n)
        if z is None:
            with torch.no_grad():
                z = self.model.sample_latent(n, condition, generator)
            if parsed["latent_optimisation"]:
                z = self._optimise_latent(z, condition, parsed["latent_optimisation"])
        with torch.no_grad():
            zc = self.model.condition_latent(z, condition)
        if num_atoms is None and parsed["n_atoms"] is not None:
            num_atoms = torch.full((n,), parsed["n_atoms"], dtype=torch.long, device=self.model.device)
        result = self.model.langevin_dynamics(zc, generator, parsed["n_step_each"], parsed["step_lr"], num_atoms,
                                              self._masked_types(parsed), progress=self.progress)
        result = {key: value.cpu() for key, value in result.items()}  # one copy back for pymatgen
        predicted = {}
        if self.model.fc_property is not None:
            with torch.no_grad():
                head = self.model.fc_property(self.model.property_latent(z, zc))
                values = self.model.property_scaler.inverse(head).cpu()
            predicted = {f"predicted_{key}": values[:, i].tolist() for i, key in enumerate(self.model.property_keys)}
        rows, start = [], 0
        for index, count in enumerate(result["num_atoms"].tolist()):
            lattice = Lattice(result["lattices"][index].double().numpy())
            species = [Element.from_Z(int(t)) for t in result["atom_types"][start:start + count]]
            frac = result["frac_coords"][start:start + count].double().numpy()
            start += count
            rows.append({"structure": Structure(lattice, species, frac),
                         **{key: values[index] for key, values in predicted.items()}})
        return rows

    def generate(self, seed_structures: StructureBatch, n: int, conditions: dict[str, Any] | None = None,
                 seed: int = 0) -> StructureBatch:
        parsed = self._parse_conditions(dict(conditions or {}))
        generator = generator_on(str(self.model.device), seed)
        started = time.perf_counter()
        accepted: list[dict[str, Any]] = []
        n_rejected, rounds = 0, 0
        with torch.random.fork_rng():  # nothing outside this call sees our sampling
            torch.manual_seed(int(seed))
            while len(accepted) < n and rounds <= self.max_resample_rounds:
                missing = n - len(accepted)
                chunks = range(0, missing, parsed["batch_size"])
                for chunk_start in tqdm(chunks, desc=f"CDVAE sampling (round {rounds})",
                                        disable=not self.progress or len(chunks) < 2):
                    size = min(parsed["batch_size"], missing - chunk_start)
                    for row in self._sample_chunk(size, parsed, generator):
                        elements = {el.symbol for el in row["structure"].composition.elements}
                        if all(symbol in elements for symbol in parsed["required"]):
                            accepted.append({**row, "sample_round": rounds})
                        else:
                            n_rejected += 1
                rounds += 1
                if not parsed["required"]:
                    break  # nothing is ever rejected without required elements
        seconds = time.perf_counter() - started
        langevin_steps = len(self.model.sigmas) * parsed["n_step_each"]
        conditions_used = {**parsed["scalars"], "required_elements": parsed["required"],
                           "forbidden_elements": parsed["forbidden"], "n_atoms": parsed["n_atoms"],
                           "element_pool": parsed["element_pool"] or "all"}
        if parsed["latent_optimisation"]:
            conditions_used["latent_optimisation"] = parsed["latent_optimisation"]
        common = {
            "generator": self.name,
            "parent_row_id": None,
            "model_sha256": self.manifest.get("content_sha256"),
            "conditions": conditions_used,
            "langevin_steps": langevin_steps,
            "langevin_n_step_each": parsed["n_step_each"],
            "langevin_step_lr_A2": parsed["step_lr"],
            "sampling_seed": int(seed),
            "n_rejected_missing_required_elements": n_rejected,
            "n_resample_rounds": rounds,
            "n_unfilled_rows": max(0, n - len(accepted)),
            "sampling_time_s": round(seconds, 3),
        }
        accepted = accepted[:n]
        structures = [row.pop("structure") for row in accepted]
        meta = [{"row_id": self.row_id(i), **common, **row} for i, row in enumerate(accepted)]
        return StructureBatch.from_structures(structures, meta)

    def reconstruct(self, batch: StructureBatch, seed: int = 0, n_step_each: int | None = None,
                    step_lr: float | None = None, force_num_atoms: bool = False) -> StructureBatch:
        """Encode each row to its posterior mean z and decode it with Langevin dynamics (CDVAE's
        reconstruction); rows carry ``parent_row_id`` (the input row) for match-rate / RMSE metrics.
        A conditional model is conditioned on each row's own condition values and elements."""
        records, counts = featurize_batch(batch, {**self.hyperparameters, **self._feature_settings()}, "featurising")
        if counts["n_dropped_missing_condition"]:
            raise ValueError(f"{counts['n_dropped_missing_condition']} row(s) lack a condition value this model needs")
        settings = {"n_step_each": n_step_each, "step_lr": step_lr}
        # reconstruction decodes what was encoded: no element pool beyond the input's own elements
        parsed = self._parse_conditions({"element_pool": "all",
                                         **{key: value for key, value in settings.items() if value is not None}})
        generator = generator_on(str(self.model.device), seed)
        rows = []
        chunks = range(0, len(records), parsed["batch_size"])
        for start in tqdm(chunks, desc="CDVAE reconstruction", disable=not self.progress):
            crystal_batch = collate(records[start:start + parsed["batch_size"]]).to(self.model.device)
            with torch.no_grad():
                z, _ = self.model.encode(crystal_batch)
            condition = None
            if self.model.conditional:
                condition = {
                    "scalars": self.model.condition_scaler.transform(crystal_batch.conditions),
                    "present": presence_vectors(crystal_batch.atom_types, crystal_batch.crystal_index,
                                                crystal_batch.n_crystals) * float(self.model.use_element_presence),
                    "absent": torch.zeros(crystal_batch.n_crystals, MAX_ATOMIC_NUMBER, device=self.model.device),
                }
            with torch.no_grad():
                zc = self.model.condition_latent(z, condition)
            num_atoms = crystal_batch.num_atoms if force_num_atoms else None
            result = self.model.langevin_dynamics(zc, generator, parsed["n_step_each"], parsed["step_lr"], num_atoms,
                                                  progress=self.progress)
            result = {key: value.cpu() for key, value in result.items()}
            offset = 0
            for index, count in enumerate(result["num_atoms"].tolist()):
                species = [Element.from_Z(int(t)) for t in result["atom_types"][offset:offset + count]]
                rows.append(Structure(Lattice(result["lattices"][index].double().numpy()), species,
                                      result["frac_coords"][offset:offset + count].double().numpy()))
                offset += count
        meta = [{"row_id": f"{self.name}-recon-{i:06d}", "generator": self.name, "parent_row_id": row_id,
                 "model_sha256": self.manifest.get("content_sha256"), "reconstruction": True,
                 "langevin_steps": len(self.model.sigmas) * parsed["n_step_each"]}
                for i, row_id in enumerate(batch.row_ids)]
        return StructureBatch.from_structures(rows, meta)

    def _feature_settings(self) -> dict[str, Any]:
        """The featurisation the model was trained with (from its saved config, not the manifest)."""
        config = self.model.config
        conditions = list(config.get("scalar_conditions") or [])
        if config.get("element_presence"):
            conditions.append("element_presence")
        return {"cutoff_A": config["cutoff_A"], "max_neighbors": config["max_neighbors"], "conditions": conditions,
                "property_targets": [], "working_ion": config.get("working_ion", "Li")}


def sampling_throughput(generator: CDVAEGenerator, n: int, conditions: dict[str, Any] | None = None, seed: int = 0
                        ) -> dict[str, float]:
    """Structures per second (and seconds) for sampling ``n`` structures."""
    started = time.perf_counter()
    batch = generator.generate(StructureBatch(), n, conditions, seed)
    seconds = time.perf_counter() - started
    return {"n_structures": len(batch), "seconds": round(seconds, 3),
            "structures_per_s": round(len(batch) / seconds, 3) if seconds > 0 else float(np.inf)}
