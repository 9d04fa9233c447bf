"""CDVAE training runs: checkpoints, resume after a kill, SIGTERM, and the CLI end to end."""

import os
import signal
import threading
import time

import torch
import yaml
from test_cdvae import tiny_hyperparameters, training_structures

from battgen.batch import StructureBatch
from battgen.cli import SUMMARY_FILENAME, main
from battgen.generate.cdvae.train import CHECKPOINT_FILENAME, MODEL_FILENAME, load_checkpoint, train_cdvae
from battgen.models import CHECKPOINT_DIRNAME, read_manifest
from battgen.screen.pipeline import screen_batch


def _weights(model_dir):
    return torch.load(model_dir / MODEL_FILENAME, weights_only=True)["state_dict"]


def _checkpoint(model_dir):
    return load_checkpoint(model_dir / CHECKPOINT_DIRNAME / CHECKPOINT_FILENAME)


def test_resumed_training_continues_the_step_count_and_matches_an_uninterrupted_run(tmp_path):
    batch = training_structures()
    hyperparameters = tiny_hyperparameters(batch_size=4, checkpoint_every_steps=3)  # 2 steps per epoch
    straight = train_cdvae(batch, batch, tmp_path / "straight", {**hyperparameters, "max_steps": 9}, seed=3)
    # "killed" after 5 steps, in the middle of an epoch; the last checkpoint is written on the way out
    first = train_cdvae(batch, batch, tmp_path / "first", {**hyperparameters, "max_steps": 5}, seed=3)
    saved = _checkpoint(tmp_path / "first")
    assert first["training"]["steps"] == saved["progress"]["step"] == 5
    assert saved["progress"]["batch_in_epoch"] == 1
    # resuming with nothing left to do gives back exactly the checkpointed weights
    unchanged = train_cdvae(batch, batch, tmp_path / "unchanged", {**hyperparameters, "max_steps": 5}, seed=3,
                            resume_from=tmp_path / "first")
    assert unchanged["training"]["resumed_from_step"] == 5 and unchanged["training"]["steps"] == 5
    for name, tensor in saved["model"].items():
        assert torch.equal(_weights(tmp_path / "unchanged")[name], tensor), name
    resumed = train_cdvae(batch, batch, tmp_path / "resumed", {**hyperparameters, "max_steps": 9}, seed=3,
                          resume_from=tmp_path / "first")
    assert resumed["training"]["resumed_from_step"] == 5 and resumed["training"]["steps"] == 9
    assert straight["training"]["steps"] == 9
    reference, continued = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert any(not torch.equal(reference[n], saved["model"][n]) for n in reference)  # training moved on
    for name in reference:  # same batches, same noise: the joined run is the uninterrupted run
        torch.testing.assert_close(continued[name], reference[name], atol=1e-6, rtol=1e-5)


def test_sigterm_checkpoints_and_stops_cleanly(tmp_path):
    batch = training_structures()
    hyperparameters = tiny_hyperparameters(max_steps=100000, checkpoint_every_steps=2)
    checkpoint_path = tmp_path / "model" / CHECKPOINT_DIRNAME / CHECKPOINT_FILENAME
    finished = threading.Event()

    def kill_after_first_checkpoint():  # what SLURM does at the walltime
        deadline = time.monotonic() + 120
        while not checkpoint_path.exists() and time.monotonic() < deadline and not finished.is_set():
            time.sleep(0.05)
        if not finished.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    try:
        result = train_cdvae(batch, batch, tmp_path / "model", hyperparameters, seed=0)
    finally:
        finished.set()
        killer.join()
    assert result["training"]["stopped_because"] == "sigterm"
    assert 2 <= result["training"]["steps"] < 100000
    assert _checkpoint(tmp_path / "model")["progress"]["step"] == result["training"]["steps"]
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back


def test_wall_time_budget_stops_training(tmp_path):
    batch = training_structures()
    result = train_cdvae(batch, batch, tmp_path / "model", tiny_hyperparameters(max_wall_time_s=0.0), seed=0)
    assert result["training"]["stopped_because"] == "max_wall_time_s" and result["training"]["steps"] == 0
    assert (tmp_path / "model" / MODEL_FILENAME).is_file()


def _run(command, config, workdir):
    path = workdir / f"{command}.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main([command, "--config", str(path), "--workdir", str(workdir)])
    return code, yaml.safe_load((workdir / SUMMARY_FILENAME).read_text())


def test_train_generator_then_generate_then_screen_through_the_cli(tmp_path):
    training_structures().write(tmp_path / "structures.jsonl.gz")
    hyperparameters = {key: value for key, value in tiny_hyperparameters(max_steps=6).items()
                       if key in ("latent_dim", "hidden_dim", "encoder_blocks", "decoder_layers", "num_radial",
                                  "num_spherical", "cutoff_A", "max_neighbors", "max_atoms", "num_noise_levels",
                                  "batch_size", "max_epochs", "max_steps", "checkpoint_every_steps", "progress",
                                  "n_step_each")}
    code, summary = _run("train-generator", {
        "generator": "cdvae", "train": "structures.jsonl.gz", "output": "model", "filter": {"preset": "none"},
        "split": {"fractions": [0.6, 0.2, 0.2], "seed": 0}, "hyperparameters": hyperparameters, "seed": 0,
    }, tmp_path)
    assert code == 0, summary
    manifest = read_manifest(tmp_path / "model", architecture="cdvae")
    assert manifest["training"]["steps"] == 6 and manifest["training"]["stopped_because"] == "max_steps"
    assert MODEL_FILENAME in manifest["files"]

    code, summary = _run("generate", {"generator": "cdvae", "n": 5, "seed": 1, "options": {"model": "model"},
                                      "conditions": {"n_step_each": 2, "n_atoms": 3}}, tmp_path)
    assert code == 0, summary
    generated = StructureBatch.read(tmp_path / "generated.jsonl.gz")
    assert len(generated) == 5 and all(len(s) == 3 for s in generated.structures)
    assert generated.meta[0]["model_sha256"] == manifest["content_sha256"]
    result = screen_batch(generated, steps=("validity", "charge_neutrality"))
    assert result.funnel[0] == ("validity", 5, len(result.step("validity").passed))
    assert len(result.passed) + len(result.rejected) == 5

    code, summary = _run("generate", {"generator": "cdvae", "n": 1, "options": {"model": "model"},
                                      "conditions": {"band_gap_eV": 1.0}}, tmp_path)
    assert code == 2 and "not trained on condition" in str(summary)
