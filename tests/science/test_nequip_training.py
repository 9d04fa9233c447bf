"""``battgen train-potential``: a tiny NequIP (1 layer, 8x0e+4x1o features) trained end to end through
NequIP's own ``nequip-train``, resumed, fine-tuned, compiled with ``nequip-compile`` and run in ASE.

The "DFT" frames are EMT relaxations of rattled Cu cells (ASE's deterministic stand-in calculator)."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from ase.units import fs

from battgen.errors import InvalidInputError
from battgen.mlip.frames import make_frame
from battgen.models import read_manifest

pytest.importorskip("nequip", reason="nequip is not installed (pip install nequip==0.19.1)")

from battgen.mlip.nequip_training import (  # noqa: E402 - after the importorskip
    COMPILED_MODEL_FILENAME,
    CONFIG_FILENAME,
    DEFAULT_HYPERPARAMETERS,
    build_nequip_config,
    compile_model_directory,
    load_nequip,
    run_train_potential_command,
    validation_metrics,
)

TINY = {"num_layers": 1, "num_features": [8, 4, 2], "radial_mlp_width": 8, "batch_size": 4, "max_epochs": 2}


def _emt_relaxations(path, n_trajectories: int = 3, n_steps: int = 6) -> None:
    frames = []
    for t in range(n_trajectories):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.1, seed=t)
        atoms.calc = EMT()
        optimizer = BFGS(atoms, logfile=None)
        for step in range(n_steps):
            frames.append(make_frame(atoms, atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(),
                                     trajectory_id=f"emt{t}", frame_index=step))
            optimizer.step()
    write(path, frames)


def _config(**overrides):
    config = {
        "frames": ["relaxations.extxyz"],
        "frame_selection": "all",
        "split": {"val_fraction": 0.2, "seed": 1},
        "compile": False,
        "hyperparameters": dict(TINY),
        "seed": 0,
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training (2 epochs, 18 frames) shared by the tests below; returns (workdir, summary, seconds)."""
    workdir = tmp_path_factory.mktemp("nequip")
    _emt_relaxations(workdir / "relaxations.extxyz")
    started = time.perf_counter()
    summary = run_train_potential_command(_config(), workdir)
    return workdir, summary, time.perf_counter() - started


def test_seed002_architecture_is_the_default_config():
    config = build_nequip_config(
        DEFAULT_HYPERPARAMETERS, Path("f.extxyz"), ["Mg", "O"], 9, 1, Path("ckpt"), Path("logs")
    )
    model = config["training_module"]["model"]
    assert (model["num_layers"], model["l_max"], model["num_features"], model["parity"]) == (4, 2, [128, 64, 32], False)
    assert config["cutoff_radius"] == 5.0
    assert config["training_module"]["optimizer"]["lr"] == 2e-3
    assert config["data"]["train_dataloader"]["batch_size"] == 32
    energy_term, force_term = config["training_module"]["loss"]["metrics"]
    assert energy_term["field"]["_target_"] == "nequip.data.PerAtomModifier"  # per-atom energy
    assert (energy_term["coeff"], force_term["coeff"]) == (1.0, 5.0)
    assert energy_term["metric"]["_target_"] == force_term["metric"]["_target_"] == "nequip.train.HuberLoss"
    assert config["model_type_names"] == ["Mg", "O"]


def test_wall_time_budget_and_initial_model_go_to_lightning_and_nequip():
    hyperparameters = {**DEFAULT_HYPERPARAMETERS, "max_wall_time_s": 90}
    config = build_nequip_config(hyperparameters, Path("f.extxyz"), ["Li"], 9, 1, Path("ckpt"), Path("logs"),
                                 initial_model=Path("/models/earlier.ckpt"))
    # Lightning's Trainer(max_time={"seconds": ...}) stops training and still writes the checkpoints.
    assert config["trainer"]["max_time"] == {"seconds": 90.0}
    assert config["training_module"]["model"] == {
        "_target_": "nequip.model.ModelFromCheckpoint", "checkpoint_path": "/models/earlier.ckpt",
    }
    assert "max_time" not in build_nequip_config(
        DEFAULT_HYPERPARAMETERS, Path("f.extxyz"), ["Li"], 9, 1, Path("ckpt"), Path("logs")
    )["trainer"]


def test_training_writes_a_potential_model_directory_with_validation_maes(trained):
    workdir, summary, _ = trained
    model_dir = workdir / "model"
    manifest = read_manifest(model_dir, architecture="nequip")
    assert manifest["kind"] == "potential"
    assert summary["content_sha256"] == manifest["content_sha256"]
    training = manifest["training"]
    assert (training["n_frames"], training["n_train"], training["n_val"]) == (18, 14, 4)
    assert training["n_trajectories"] == 3 and training["chemical_species"] == ["Cu"]
    frames_file = workdir / training["frames_file"]
    assert training["frames_sha256"] == hashlib.sha256(frames_file.read_bytes()).hexdigest()
    assert len(read(frames_file, ":")) == 18
    metrics = manifest["metrics"]
    assert metrics["epochs_trained"] == 2
    assert 0 < metrics["val_energy_mae_meV_per_atom"] < 5000 and 0 < metrics["val_force_mae_meV_per_A"] < 5000
    # The model files are the config; checkpoints (for resuming) are beside them, not hashed.
    assert set(manifest["files"]) == {CONFIG_FILENAME}
    assert (model_dir / "checkpoints" / "best.ckpt").is_file() and (model_dir / "checkpoints" / "last.ckpt").is_file()
    written = yaml.safe_load((model_dir / CONFIG_FILENAME).read_text())
    assert written["training_module"]["model"]["num_layers"] == 1
    assert manifest["hyperparameters"]["max_epochs"] == 2


def test_resumed_run_continues_from_the_checkpoint(trained):
    workdir, _, _ = trained
    config = _config(output="resumed", resume_from="model")
    config["hyperparameters"]["max_epochs"] = 3
    summary = run_train_potential_command(config, workdir)
    log = (workdir / "resumed.run" / "nequip-train.log").read_text()
    assert "Continuing training with checkpoint file" in log
    # Only the third epoch ran: NequIP restored epochs 0-1 from model/checkpoints/last.ckpt.
    epochs = [int(row) for row in _logged_validation_epochs(workdir / "resumed.run" / "logs")]
    assert epochs == [2]
    assert summary["metrics"]["epochs_trained"] == 3
    assert summary["training"]["resumed_from"] == "model"


def _logged_validation_epochs(log_dir):
    import csv

    (path,) = log_dir.glob("csv/version_*/metrics.csv")
    with open(path) as handle:
        return [row["epoch"] for row in csv.DictReader(handle) if row.get("val0_epoch/weighted_sum")]


def test_fine_tuning_starts_from_the_earlier_model(trained):
    workdir, _, _ = trained
    config = _config(output="finetuned", initial_model="model")
    config["hyperparameters"]["max_epochs"] = 1
    summary = run_train_potential_command(config, workdir)
    best = workdir / "model" / "checkpoints" / "best.ckpt"
    assert summary["training"]["initial_model_sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()
    log = (workdir / "finetuned.run" / "nequip-train.log").read_text()
    assert "Loading model from checkpoint file" in log
    assert yaml.safe_load((workdir / "finetuned" / CONFIG_FILENAME).read_text())["training_module"]["model"][
        "_target_"] == "nequip.model.ModelFromCheckpoint"


def test_metrics_are_read_from_the_best_epoch(tmp_path):
    log = tmp_path / "csv" / "version_0"
    log.mkdir(parents=True)
    (log / "metrics.csv").write_text(
        "epoch,step,val0_epoch/weighted_sum,val0_epoch/per_atom_energy_mae,val0_epoch/forces_mae\n"
        "0,3,0.5,0.020,0.300\n"
        "1,7,0.2,0.010,0.100\n"
        "2,11,0.3,0.005,0.200\n"
    )
    assert validation_metrics(tmp_path) == {
        "val_energy_mae_meV_per_atom": 10.0, "val_force_mae_meV_per_A": 100.0, "best_epoch": 1, "epochs_trained": 3,
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"learning_rate_typo": 1}, r"unknown train-potential setting\(s\) \[.learning_rate_typo.\]"),
        ({"frames": []}, "frames"),
        ({"frames": ["missing.extxyz"]}, "no such file"),
        ({"frame_selection": "first_and_last"}, "frame_selection"),
        ({"frame_selection": "every_n"}, "every_n"),
        ({"hyperparameters": {"n_layers": 2}}, "unknown hyper-parameter"),
        ({"hyperparameters": {"learning_rate": -1e-3}}, "learning_rate"),
        ({"hyperparameters": {"l_max": 1, "num_features": [8, 4, 2]}}, "num_features"),
        ({"hyperparameters": {"loss": "l1"}}, "loss"),
        ({"split": {"val_fraction": 1.5}}, "val_fraction"),
        ({"split": {"fractions": [0.8, 0.2]}}, "split key"),
        ({"compile": "yes"}, "compile"),
        ({"seed": "zero"}, "seed"),
        ({"initial_model": "nowhere"}, "initial_model"),
        ({"resume_from": "nowhere"}, "resume_from"),
        ({"max_force_eV_A": -1}, "max_force_eV_A"),
    ],
)
def test_bad_configs_are_invalid_input(tmp_path, overrides, message):
    _emt_relaxations(tmp_path / "relaxations.extxyz", n_trajectories=1, n_steps=2)
    with pytest.raises(InvalidInputError, match=message):
        run_train_potential_command(_config(**overrides), tmp_path)
    assert not (tmp_path / "model" / "checkpoints").exists()


def test_too_few_frames_for_a_validation_set_is_invalid_input(tmp_path):
    _emt_relaxations(tmp_path / "relaxations.extxyz", n_trajectories=1, n_steps=1)
    with pytest.raises(InvalidInputError, match="too few"):
        run_train_potential_command(_config(), tmp_path)


@pytest.mark.slow
def test_compiled_model_drives_ase_energy_forces_and_md(trained):
    """nequip-compile --mode aotinductor --target ase (~100 s with gcc), then NequIPCalculator in ASE."""
    workdir, _, _ = trained
    model_dir = workdir / "compiled"
    shutil.copytree(workdir / "model", model_dir)
    manifest = compile_model_directory(model_dir)
    assert COMPILED_MODEL_FILENAME in manifest["files"]
    assert manifest["training"]["compile_time_s"] > 0
    calculator, info = load_nequip(model_dir)
    assert info.name == "nequip" and info.supported_elements == frozenset({"Cu"})
    assert info.weights_sha256 == manifest["files"][COMPILED_MODEL_FILENAME]

    frames = read(workdir / "model.run" / "frames.extxyz", ":")
    predicted_e, reference_e, force_errors = [], [], []
    for frame in frames:
        atoms = frame.copy()
        atoms.calc = calculator
        predicted_e.append(atoms.get_potential_energy() / len(atoms))
        reference_e.append(frame.get_potential_energy() / len(frame))
        force_errors.append(np.abs(atoms.get_forces() - frame.get_forces()).ravel())
    energy_mae_meV = 1000 * float(np.mean(np.abs(np.subtract(predicted_e, reference_e))))
    force_mae_meV = 1000 * float(np.mean(np.concatenate(force_errors)))
    print(f"compiled tiny model vs EMT frames: energy MAE {energy_mae_meV:.1f} meV/atom, "
          f"force MAE {force_mae_meV:.1f} meV/A, compile {manifest['training']['compile_time_s']} s")
    # Per-type energy shift = mean training energy per atom: a 2-epoch model is already within 1 eV/atom.
    assert energy_mae_meV < 1000.0

    # Forces are the model's own gradient: a central finite difference of its energy agrees.
    atoms = frames[0].copy()
    atoms.calc = calculator
    forces = atoms.get_forces()
    step = 1e-3
    atoms.positions[0, 0] += step
    e_plus = atoms.get_potential_energy()
    atoms.positions[0, 0] -= 2 * step
    e_minus = atoms.get_potential_energy()
    atoms.positions[0, 0] += step
    assert -(e_plus - e_minus) / (2 * step) == pytest.approx(forces[0, 0], abs=2e-3)

    # Five velocity-Verlet steps run and move the atoms.
    start = atoms.positions.copy()
    atoms.set_momenta(np.zeros_like(start))
    VelocityVerlet(atoms, timestep=1.0 * fs).run(5)
    assert np.isfinite(atoms.get_potential_energy())
    assert np.abs(atoms.positions - start).max() > 0
