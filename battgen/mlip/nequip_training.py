"""``battgen train-potential``: train a NequIP interatomic potential on DFT relaxation frames (seed 002).

Seed 002 ("Computational Details"): a four-layer NequIP with 128x0e + 64x1e + 32x2e hidden features,
edge irreps 0e + 1e + 2e, a 5 Å cutoff, Adam with lr 2e-3, batch 32, Huber loss with energy : force
weights 1 : 5, trained on the first three and the last frame of every MP relaxation trajectory.
Those are the defaults of :data:`DEFAULT_HYPERPARAMETERS`; NequIP itself (0.19.1) runs the training
through its own entry points (``nequip-train`` with a Hydra config we generate, ``nequip-compile
--mode aotinductor --target ase``), so checkpoints, resumption and fine-tuning are NequIP's.

Config::

    frames: [vasprun.xml.gz, Li/training.json, trajectories.extxyz]   # see battgen.mlip.frames
    frame_selection: seed002 | all | every_n      # default seed002 (first three + last per trajectory)
    every_n: 5                                    # only with every_n
    max_force_eV_A: 100.0                         # drop blown-up ionic steps (null keeps every frame)
    split: {val_fraction: 0.1, seed: 0}           # NequIP's seeded random split of the frames
    hyperparameters: {...}                        # over DEFAULT_HYPERPARAMETERS; unknown keys are an error
    compile: true                                 # AOTInductor-compile the best checkpoint for ASE (~100 s)
    initial_model: earlier_model                  # fine-tune: a battgen model dir, a .ckpt or .nequip.zip
    output: model                                 # the model directory (default "model")
    seed: 0                                       # NequIP's seed (weights init, shuffling)
    resume_from: earlier_model                    # continue that directory's checkpoints/last.ckpt
    device: auto                                  # auto | cpu | cuda | cuda:N: Lightning's accelerator, and
                                                  # the device the model is AOTInductor-compiled for

Model directory: ``model.nequip.pt2`` (compiled, when ``compile``), ``nequip_config.yaml`` (the Hydra
config that trained it), ``battgen-model.yaml`` (kind ``potential``, architecture ``nequip``, training
frames sha256, validation MAEs in meV/atom and meV/Å) and ``checkpoints/`` (``best.ckpt``,
``last.ckpt``; not hashed). AOTInductor compiles for one device: the manifest records it
(``compiled_for_device``) and :func:`load_nequip` refuses another (a CUDA-compiled model does not run on a
CPU; recompile with :func:`compile_model_directory`). Precision is NequIP's own ``model_dtype`` (float32 by
default; no autocast). The training frames (``frames.extxyz``, energies eV, forces eV/Å, stress
eV/Å³) and NequIP's logs stay in ``<output>.run/`` beside the model, referenced by hash only.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from battgen.devices import training_record
from battgen.mlip.calculators import MlipInfo, sha256_of_file
from battgen.mlip.frames import (
    FRAME_SELECTIONS,
    chemical_species,
    drop_unphysical_frames,
    read_trajectories,
    select_frames,
    write_frames,
)
from battgen.models import CHECKPOINT_DIRNAME, MANIFEST_FILENAME, read_manifest, write_manifest

LOGGER = logging.getLogger(__name__)

ARCHITECTURE = "nequip"
COMPILED_MODEL_FILENAME = "model.nequip.pt2"
CONFIG_FILENAME = "nequip_config.yaml"
FRAMES_FILENAME = "frames.extxyz"
BEST_CHECKPOINT = "best.ckpt"
LAST_CHECKPOINT = "last.ckpt"
TRAIN_LOG_FILENAME = "nequip-train.log"
COMPILE_LOG_FILENAME = "nequip-compile.log"

# Seed 002's architecture and optimiser. parity false: NequIP's l=1 features are then 1o (polar vectors),
# the physical reading of the paper's "64 l=1 vectors" (its "1e" would be pseudovectors) -> 128x0e+64x1o+32x2e,
# edge spherical harmonics 0e+1o+2e.
DEFAULT_HYPERPARAMETERS: dict[str, Any] = {
    "num_layers": 4,
    "l_max": 2,
    "num_features": [128, 64, 32],  # multiplicity per l (l = 0, 1, 2)
    "parity": False,
    "r_max_A": 5.0,
    "radial_mlp_depth": 1,
    "radial_mlp_width": 128,
    "num_bessels": 8,
    "model_dtype": "float32",
    "learning_rate": 2e-3,
    "batch_size": 32,
    "loss": "huber",  # huber | mse
    "energy_weight": 1.0,  # per-atom energy term
    "force_weight": 5.0,
    # Not in the seed: Huber crossover in the target's unit (eV/atom for energy, eV/Å for forces).
    "huber_delta": 0.01,
    "max_epochs": 38,  # seed 002 trained 38 epochs
    "max_wall_time_s": None,  # Lightning's Trainer(max_time=...): stop, checkpoint, still compile
}

# Frames with a larger force component are broken ionic steps, not chemistry (relaxation starts of MP
# crystals stay well below; the chgnet NbOC fixture's blown-up step 1 has 16657 eV/Å).
DEFAULT_MAX_FORCE_EV_A = 100.0

_SPLIT_KEYS = {"val_fraction", "seed"}


class PotentialTrainingError(RuntimeError):
    """``nequip-train`` or ``nequip-compile`` failed; the message ends with the tail of its log."""


# --- the NequIP config ----------------------------------------------------------------------------
def _huber_or_mse(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    if hyperparameters["loss"] == "huber":
        return {"_target_": "nequip.train.HuberLoss", "delta": float(hyperparameters["huber_delta"])}
    return {"_target_": "nequip.train.MeanSquaredError"}


def _model_section(hyperparameters: dict[str, Any], seed: int, initial_model: Path | None) -> dict[str, Any]:
    if initial_model is not None:
        # NequIP's own fine-tuning: the network (and its type names) comes from the earlier model.
        if initial_model.name.endswith(".nequip.zip"):
            return {"_target_": "nequip.model.ModelFromPackage", "package_path": str(initial_model)}
        return {"_target_": "nequip.model.ModelFromCheckpoint", "checkpoint_path": str(initial_model)}
    return {
        "_target_": "nequip.model.NequIPGNNModel",
        "seed": seed,
        "model_dtype": hyperparameters["model_dtype"],
        "type_names": "${model_type_names}",
        "r_max": "${cutoff_radius}",
        "num_layers": int(hyperparameters["num_layers"]),
        "l_max": int(hyperparameters["l_max"]),
        "parity": bool(hyperparameters["parity"]),
        "num_features": hyperparameters["num_features"],
        "radial_mlp_depth": int(hyperparameters["radial_mlp_depth"]),
        "radial_mlp_width": int(hyperparameters["radial_mlp_width"]),
        "num_bessels": int(hyperparameters["num_bessels"]),
        # Normalisations from the training split, computed by NequIP's stats manager.
        "avg_num_neighbors": "${training_data_stats:num_neighbors_mean}",
        "per_type_energy_shifts": "${training_data_stats:per_atom_energy_mean}",
        "per_type_energy_scales": "${training_data_stats:forces_rms}",
    }


def build_nequip_config(
    hyperparameters: dict[str, Any],
    frames_path: Path,
    species: list[str],
    n_train: int,
    n_val: int,
    checkpoint_dir: Path,
    log_dir: Path,
    seed: int = 0,
    split_seed: int = 0,
    initial_model: Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """The Hydra config ``nequip-train`` reads (NequIP 0.19 keys); paths are made absolute. ``device`` (a
    resolved torch device) becomes Lightning's accelerator: ``cpu``, or ``gpu`` on CUDA device N."""
    batch = int(hyperparameters["batch_size"])
    trainer: dict[str, Any] = {
        "_target_": "lightning.Trainer",
        **lightning_accelerator(device),
        "max_epochs": int(hyperparameters["max_epochs"]),
        "check_val_every_n_epoch": 1,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "logger": {
            "_target_": "lightning.pytorch.loggers.CSVLogger",
            "save_dir": str(log_dir.resolve()),
            "name": "csv",
        },
        "callbacks": [
            {
                "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                "monitor": "val0_epoch/weighted_sum",
                "dirpath": str(checkpoint_dir.resolve()),
                "filename": BEST_CHECKPOINT.removesuffix(".ckpt"),
                "save_top_k": 1,
                "save_last": False,
            },
            {  # unmonitored, so last.ckpt always holds the final epoch for resumption
                "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                "dirpath": str(checkpoint_dir.resolve()),
                "filename": "latest",
                "save_top_k": 1,
                "save_last": True,
            },
        ],
    }
    if hyperparameters.get("max_wall_time_s") is not None:
        trainer["max_time"] = {"seconds": float(hyperparameters["max_wall_time_s"])}
    huber = _huber_or_mse(hyperparameters)
    loss_name = hyperparameters["loss"]
    return {
        "run": ["train"],
        "seed": seed,
        "cutoff_radius": float(hyperparameters["r_max_A"]),
        "model_type_names": list(species),
        "chemical_species": "${model_type_names}",
        "data": {
            "_target_": "nequip.data.datamodule.NequIPDataModule",
            "seed": split_seed,
            "split_dataset": {
                "dataset": {
                    "_target_": "nequip.data.dataset.ASEDataset",
                    "file_path": str(frames_path.resolve()),
                    "ase_args": {"format": "extxyz"},
                    "transforms": [
                        {
                            "_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
                            "model_type_names": "${model_type_names}",
                            "chemical_species_to_atom_type_map": "${list_to_identity_dict:${chemical_species}}",
                        },
                        {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": "${cutoff_radius}"},
                    ],
                },
                "train": n_train,
                "val": n_val,
            },
            "train_dataloader": {"_target_": "torch.utils.data.DataLoader", "batch_size": batch, "shuffle": True},
            "val_dataloader": {"_target_": "torch.utils.data.DataLoader", "batch_size": batch},
            "stats_manager": {
                "_target_": "nequip.data.CommonDataStatisticsManager", "type_names": "${model_type_names}",
            },
        },
        "trainer": trainer,
        "training_module": {
            "_target_": "nequip.train.NequIPLightningModule",
            "loss": {
                "_target_": "nequip.train.MetricsManager",
                "metrics": [
                    {
                        "name": f"per_atom_energy_{loss_name}",
                        "field": {"_target_": "nequip.data.PerAtomModifier", "field": "total_energy"},
                        "coeff": float(hyperparameters["energy_weight"]),
                        "metric": dict(huber),
                    },
                    {
                        "name": f"forces_{loss_name}",
                        "field": "forces",
                        "coeff": float(hyperparameters["force_weight"]),
                        "metric": dict(huber),
                    },
                ],
            },
            "val_metrics": {
                "_target_": "nequip.train.EnergyForceMetrics",
                # The monitored sum weighs the MAEs like the loss weighs its terms (1 : 5).
                "coeffs": {
                    "per_atom_energy_mae": float(hyperparameters["energy_weight"]),
                    "forces_mae": float(hyperparameters["force_weight"]),
                    "total_energy_rmse": None,
                    "forces_rmse": None,
                },
            },
            "optimizer": {"_target_": "torch.optim.Adam", "lr": float(hyperparameters["learning_rate"])},
            "model": _model_section(hyperparameters, seed, initial_model),
        },
    }


def lightning_accelerator(device: str) -> dict[str, Any]:
    """Lightning Trainer settings of a resolved torch device: ``cuda:2`` -> ``gpu`` on devices ``[2]``."""
    if device.startswith("cuda"):
        return {"accelerator": "gpu", "devices": [int(device.split(":")[1]) if ":" in device else 0]}
    if device != "cpu":
        raise ValueError(f"NequIP trains on cpu or cuda[:N], got device {device!r}")
    return {"accelerator": "cpu"}


def _compile_device(device: str) -> str:
    """``nequip-compile --device`` of a torch device (AOTInductor compiles for one device kind)."""
    return "cuda" if device.startswith("cuda") else "cpu"


# --- running NequIP -------------------------------------------------------------------------------
def _nequip_script(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise PotentialTrainingError(f"{name} not found: install nequip (pip install nequip==0.19.1)")
    return found


def _run_logged(command: list[str], cwd: Path, log_path: Path, what: str, progress=None) -> float:
    """Run a NequIP script, teeing its output into ``log_path``; returns the wall time (s)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(" ".join(command) + "\n")
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=env)
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if progress is not None:
                progress(line)
        code = process.wait()
    elapsed = time.perf_counter() - started
    if code != 0:
        tail = "".join(log_path.read_text(encoding="utf-8").splitlines(keepends=True)[-25:])
        raise PotentialTrainingError(f"{what} exited with {code} (log {log_path}):\n{tail}")
    return elapsed


def run_nequip_train(config: dict[str, Any], run_dir: Path, resume_checkpoint: Path | None = None) -> float:
    """Write ``config`` and run ``nequip-train -cp <run_dir> -cn <cfg>`` in ``run_dir``; returns seconds."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILENAME).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    command = [
        _nequip_script("nequip-train"), "-cp", str(run_dir), "-cn", CONFIG_FILENAME.removesuffix(".yaml"),
        f"hydra.run.dir={run_dir / 'hydra'}",
    ]
    if resume_checkpoint is not None:
        command.append(f"++ckpt_path={Path(resume_checkpoint).resolve()}")
    bar = tqdm(total=config["trainer"]["max_epochs"], desc="nequip-train epochs", unit="epoch", leave=False)
    metrics_csv = run_dir / "logs"

    def progress(_line: str) -> None:
        # NequIP's own epoch count is the CSV logger's: advance the bar to the rows written so far.
        done = len(_validation_rows(metrics_csv))
        if done > bar.n:
            bar.update(done - bar.n)

    try:
        return _run_logged(command, run_dir, run_dir / TRAIN_LOG_FILENAME, "nequip-train", progress)
    finally:
        bar.close()


def compile_nequip_model(checkpoint: Path, output: Path, log_dir: Path | None = None, device: str = "cpu") -> float:
    """``nequip-compile --mode aotinductor --target ase`` a checkpoint for ``device`` (cpu needs gcc, cuda
    a CUDA machine); returns seconds.

    TorchScript is not an option: nequip 0.19 rejects ``--mode torchscript`` on torch >= 2.10.
    """
    output = Path(output).resolve()
    if not output.name.endswith(".nequip.pt2"):
        raise ValueError(f"an AOTInductor model file must end in .nequip.pt2, got {output.name}")
    log_dir = Path(log_dir or output.parent).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [
        _nequip_script("nequip-compile"), str(Path(checkpoint).resolve()), str(output),
        "--mode", "aotinductor", "--device", _compile_device(device), "--target", "ase",
    ]
    return _run_logged(command, log_dir, log_dir / COMPILE_LOG_FILENAME, "nequip-compile")


def _validation_rows(log_dir: Path) -> list[dict[str, str]]:
    """Per-epoch validation rows of NequIP's CSV log (all versions, in order)."""
    rows: list[dict[str, str]] = []
    for path in sorted(Path(log_dir).glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])):
        with open(path, encoding="utf-8") as handle:
            rows += [row for row in csv.DictReader(handle) if row.get("val0_epoch/weighted_sum")]
    return rows


def validation_metrics(log_dir: Path) -> dict[str, Any]:
    """Validation MAEs of the best epoch (lowest monitored weighted sum), in meV/atom and meV/Å."""
    rows = _validation_rows(log_dir)
    if not rows:
        return {}
    best = min(rows, key=lambda row: float(row["val0_epoch/weighted_sum"]))
    return {
        "val_energy_mae_meV_per_atom": round(1000.0 * float(best["val0_epoch/per_atom_energy_mae"]), 3),
        "val_force_mae_meV_per_A": round(1000.0 * float(best["val0_epoch/forces_mae"]), 3),
        "best_epoch": int(float(best["epoch"])),
        "epochs_trained": int(float(rows[-1]["epoch"])) + 1,
    }


def compile_model_directory(model_dir: Path, device: str = "cpu") -> dict[str, Any]:
    """Compile a trained model directory's best checkpoint into it for ``device`` and rewrite its manifest."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir, architecture=ARCHITECTURE)
    checkpoint = model_dir / CHECKPOINT_DIRNAME / BEST_CHECKPOINT
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} does not exist: nothing to compile")
    seconds = compile_nequip_model(checkpoint, model_dir / COMPILED_MODEL_FILENAME, model_dir.parent /
                                   f"{model_dir.name}.run", device)
    training = {**manifest["training"], "compiled_model": COMPILED_MODEL_FILENAME, "compile_time_s": round(seconds, 1),
                "compiled_for_device": _compile_device(device)}
    return write_manifest(model_dir, "potential", ARCHITECTURE, manifest["hyperparameters"], training,
                          manifest["metrics"])


# --- loading --------------------------------------------------------------------------------------
def _compiled_model_path(model_path: str | Path, device: str = "cpu") -> Path:
    path = Path(model_path).expanduser().resolve()
    if path.is_dir():
        manifest = read_manifest(path, architecture=ARCHITECTURE)
        compiled_for = manifest["training"].get("compiled_for_device", "cpu")  # older models: CPU-compiled
        if path.joinpath(COMPILED_MODEL_FILENAME).is_file() and compiled_for != _compile_device(device):
            raise ValueError(f"{path} is AOTInductor-compiled for {compiled_for}, not for {device}: recompile it "
                             f"(battgen.mlip.nequip_training.compile_model_directory(model, device={device!r}))")
        path = path / COMPILED_MODEL_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no compiled NequIP model at {path} (train with compile: true, or compile it)")
    return path


def load_nequip(model_path: str | Path, device: str = "cpu") -> tuple[Any, MlipInfo]:
    """A compiled NequIP model (a battgen model directory or a ``.nequip.pt2`` file) as an ASE calculator."""
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper
    from nequip.integrations.ase import NequIPCalculator  # nequip.ase.NequIPCalculator is deprecated in 0.19

    path = _compiled_model_path(model_path, device)
    # Our type names are the element symbols (the training config's chemical_species): identity map.
    calculator = NequIPCalculator.from_compiled_model(str(path), device=device,
                                                      chemical_species_to_atom_type_map=True)
    # The mapper built from the model's metadata holds the type names (reading the metadata again would
    # load the compiled library a second time).
    type_names = [
        name for transform in calculator.transforms if isinstance(transform, ChemicalSpeciesToAtomTypeMapper)
        for name in transform.model_type_names
    ]
    info = MlipInfo(
        name="nequip",
        package="nequip",
        package_version=metadata.version("nequip"),
        model_name=str(Path(model_path).expanduser().resolve()),
        weights_path=str(path),
        weights_sha256=sha256_of_file(path),
        supported_elements=frozenset(type_names),
    )
    return calculator, info


# --- the command ----------------------------------------------------------------------------------
def _merged_hyperparameters(given: dict[str, Any] | None) -> dict[str, Any]:
    from battgen.generate.training import merge_hyperparameters

    hyperparameters = merge_hyperparameters(DEFAULT_HYPERPARAMETERS, given)
    if hyperparameters["loss"] not in ("huber", "mse"):
        raise ValueError(f"hyper-parameter loss must be 'huber' or 'mse', got {hyperparameters['loss']!r}")
    features = hyperparameters["num_features"]
    if isinstance(features, int):
        features = [features] * (int(hyperparameters["l_max"]) + 1)
    if len(features) != int(hyperparameters["l_max"]) + 1:
        l_max = hyperparameters["l_max"]
        raise ValueError(f"num_features {features} needs one multiplicity per l = 0..l_max ({l_max})")
    hyperparameters["num_features"] = [int(n) for n in features]
    for key in ("num_layers", "batch_size", "max_epochs"):
        value = hyperparameters[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"hyper-parameter {key} must be a positive integer, got {value!r}")
    for key in ("r_max_A", "learning_rate", "energy_weight", "force_weight", "huber_delta"):
        value = hyperparameters[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"hyper-parameter {key} must be a positive number, got {value!r}")
    wall = hyperparameters["max_wall_time_s"]
    if wall is not None and (isinstance(wall, bool) or not isinstance(wall, (int, float)) or wall <= 0):
        raise ValueError(f"hyper-parameter max_wall_time_s must be a positive number or null, got {wall!r}")
    return hyperparameters


def _initial_model_file(path: Path) -> Path:
    if path.is_dir():
        path = path / CHECKPOINT_DIRNAME / BEST_CHECKPOINT
    if not path.is_file():
        raise ValueError(f"initial_model: {path} does not exist (a model directory, .ckpt or .nequip.zip)")
    return path.resolve()


def _int_key(config: dict[str, Any], key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key!r} must be an integer, got {value!r}")
    return value


def _resume_checkpoint(config: dict[str, Any], workdir: Path) -> tuple[Path | None, str | None]:
    """The ``last.ckpt`` to continue from (absolute) and a note when there is none to continue."""
    from battgen.errors import InvalidInputError

    if config.get("resume_from") is None:
        return None, None
    resume_dir = workdir / str(config["resume_from"])
    if not resume_dir.is_dir():
        raise InvalidInputError(f"resume_from: {resume_dir} is not a directory")
    checkpoint = resume_dir / CHECKPOINT_DIRNAME / LAST_CHECKPOINT
    if not checkpoint.is_file():
        # A run killed before its first epoch ended: nothing to continue, so start again.
        return None, f"no {CHECKPOINT_DIRNAME}/{LAST_CHECKPOINT} in {config['resume_from']}: trained from scratch"
    return checkpoint.resolve(), None


def run_train_potential_command(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from battgen.errors import InvalidInputError  # lazy: the CLI imports this module lazily

    workdir = Path(workdir)
    from battgen.contracts.training import TrainPotentialSettings

    if config.get("frames"):  # without frames: the message below says what is needed
        TrainPotentialSettings.from_config(config)  # unknown keys and types; the values are checked below
    elif set(config) - set(TrainPotentialSettings.model_fields):
        TrainPotentialSettings.from_config({**config, "frames": ["-"]})
    sources = config.get("frames")
    if isinstance(sources, str):
        sources = [sources]
    if not sources or not isinstance(sources, list):
        raise InvalidInputError("config needs 'frames': a list of frame files (vasprun, extxyz, mlearn json ...)")
    selection = config.get("frame_selection", "seed002")
    split = dict(config.get("split") or {})
    from battgen.devices import resolve_device

    device = resolve_device(config.get("device", "auto"))  # before any work: `cuda` without CUDA is bad input
    try:
        if selection not in FRAME_SELECTIONS:
            raise ValueError(f"frame_selection must be one of {FRAME_SELECTIONS}, got {selection!r}")
        if set(split) - _SPLIT_KEYS:
            raise ValueError(f"unknown split key(s) {sorted(set(split) - _SPLIT_KEYS)}; allowed: {sorted(_SPLIT_KEYS)}")
        seed = _int_key(config, "seed", 0)
        split_seed = _int_key(split, "seed", 0)
        val_fraction = split.get("val_fraction", 0.1)
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
            raise ValueError(f"split val_fraction must be a number in (0, 1), got {val_fraction!r}")
        hyperparameters = _merged_hyperparameters(config.get("hyperparameters"))
        compile_model = config.get("compile", True)
        if not isinstance(compile_model, bool):
            raise ValueError(f"'compile' must be true or false, got {compile_model!r}")
        initial_model = None
        if config.get("initial_model") is not None:
            initial_model = _initial_model_file(workdir / str(config["initial_model"]))
        trajectories = [t for source in sources for t in read_trajectories(workdir / str(source))]
        frames = select_frames(trajectories, selection, config.get("every_n"))
        max_force = config.get("max_force_eV_A", DEFAULT_MAX_FORCE_EV_A)
        if max_force is not None and (isinstance(max_force, bool) or not isinstance(max_force, (int, float))
                                      or max_force <= 0):
            raise ValueError(f"max_force_eV_A must be a positive number or null, got {max_force!r}")
        frames, n_dropped = drop_unphysical_frames(frames, max_force)
    except (ValueError, TypeError, OSError, KeyError) as exc:  # FrameFormatError is a ValueError
        raise InvalidInputError(str(exc)) from exc
    n_val = max(1, round(val_fraction * len(frames)))
    n_train = len(frames) - n_val
    if n_train < 1:
        raise InvalidInputError(f"{len(frames)} selected frame(s): too few for a training and a validation set")

    model_dir = workdir / config.get("output", "model")
    run_dir = workdir / f"{model_dir.name}.run"
    checkpoint_dir = model_dir / CHECKPOINT_DIRNAME
    resume_checkpoint, resume_note = _resume_checkpoint(config, workdir)
    resuming_in_place = resume_checkpoint is not None and resume_checkpoint.parent == checkpoint_dir.resolve()
    if initial_model is not None:
        # ModelFromCheckpoint re-reads its file later: keep a copy that no retraining can overwrite.
        run_dir.mkdir(parents=True, exist_ok=True)
        is_package = initial_model.name.endswith(".nequip.zip")
        kept = run_dir / ("initial_model.nequip.zip" if is_package else "initial_model.ckpt")
        if initial_model != kept.resolve():
            shutil.copy2(initial_model, kept)
        initial_model = kept.resolve()
    if not resuming_in_place:
        # A fresh run must not inherit an earlier run's checkpoints (Lightning would write best-v1.ckpt) or logs.
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        shutil.rmtree(run_dir / "logs", ignore_errors=True)
        if resume_checkpoint is not None:
            checkpoint_dir.mkdir(parents=True)
            resume_checkpoint = Path(shutil.copy2(resume_checkpoint, checkpoint_dir / "resumed_from.ckpt"))
    model_dir.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    # A stale compiled model would otherwise outlive a retraining without compile.
    (model_dir / COMPILED_MODEL_FILENAME).unlink(missing_ok=True)
    frames_sha256 = write_frames(frames, run_dir / FRAMES_FILENAME)
    species = chemical_species(frames)
    nequip_config = build_nequip_config(
        hyperparameters, run_dir / FRAMES_FILENAME, species, n_train, n_val, checkpoint_dir, run_dir / "logs",
        seed=seed, split_seed=split_seed, initial_model=initial_model, device=device,
    )
    train_time_s = run_nequip_train(nequip_config, run_dir, resume_checkpoint)
    shutil.copy2(run_dir / CONFIG_FILENAME, model_dir / CONFIG_FILENAME)
    metrics = validation_metrics(run_dir / "logs")
    training: dict[str, Any] = {
        "frames_sha256": frames_sha256,
        "frames_file": f"{run_dir.name}/{FRAMES_FILENAME}",
        "frame_sources": [str(s) for s in sources],
        "frame_selection": selection,
        **({"every_n": config.get("every_n")} if selection == "every_n" else {}),
        "n_trajectories": len(trajectories),
        "n_frames": len(frames),
        "max_force_eV_A": max_force,
        "n_frames_dropped_max_force": n_dropped,
        "n_train": n_train,
        "n_val": n_val,
        "split_seed": split_seed,
        "seed": seed,
        "chemical_species": species,
        "units": {"energy": "eV", "forces": "eV/A", "stress": "eV/A^3 (ASE sign)"},
        "train_time_s": round(train_time_s, 1),
        "nequip_version": metadata.version("nequip"),
        "torch_version": metadata.version("torch"),
        **training_record(device, str(hyperparameters["model_dtype"])),
        **({"resumed_from": str(config["resume_from"])} if resume_checkpoint is not None else {}),
        **({"resume_note": resume_note} if resume_note else {}),
        **({"initial_model": str(config["initial_model"]), "initial_model_sha256": sha256_of_file(initial_model)}
           if initial_model is not None else {}),
    }
    if compile_model:
        compile_time_s = compile_nequip_model(checkpoint_dir / BEST_CHECKPOINT, model_dir / COMPILED_MODEL_FILENAME,
                                              run_dir, device)
        training.update(compiled_model=COMPILED_MODEL_FILENAME, compile_time_s=round(compile_time_s, 1),
                        compiled_for_device=_compile_device(device))
    manifest = write_manifest(model_dir, "potential", ARCHITECTURE, hyperparameters, training, metrics)
    return {
        "model": model_dir.relative_to(workdir).as_posix(),
        "architecture": ARCHITECTURE,
        "manifest": f"{model_dir.relative_to(workdir).as_posix()}/{MANIFEST_FILENAME}",
        "compiled_model": training.get("compiled_model"),
        "content_sha256": manifest["content_sha256"],
        "training": training,
        "metrics": manifest["metrics"],
    }
