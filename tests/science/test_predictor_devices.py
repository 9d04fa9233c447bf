"""Property predictors on the model's device, proved on a CPU (issue 13 item 1).

Two checks that fail on code which leaves a tensor on the CPU while the network is elsewhere:

* a **meta-device pass**: training (and prediction) on ``device="meta"``. A meta tensor has a shape but no
  data, and torch refuses to mix it with a CPU tensor ("Tensor on device cpu is not on the expected device
  meta"). So a batch, target or constant that is not moved to the model's device fails at its first use;
  code that moves everything gets as far as the data is needed (``.item()`` / ``.cpu()`` of a meta tensor,
  or an op whose output shape depends on values), which the test expects;
* the factory guard of ``test_generator_devices.py``: no torch factory call in battgen's predictor code
  without a ``device`` (data preparation names ``device="cpu"``: the cache lives there).
"""

from __future__ import annotations

import pytest
import torch
import yaml
from test_generator_devices import ImplicitDeviceFactories

from battgen.batch import StructureBatch
from battgen.cli import main as battgen_main
from battgen.generate.dataset import split_batch
from battgen.models import read_manifest, write_manifest
from battgen.predictors.base import load_predictor, predictor_class

EF = "formation_energy_per_atom_eV"
NO_CUDA = not torch.cuda.is_available()
# Where a meta pass stops when every tensor is on meta: reading a number back, or an op whose output shape
# depends on the data (alignn's line graph: repeat_interleave). A tensor left on the CPU stops it earlier,
# at the first op mixing it with a meta tensor ("... is not on the expected device meta").
META_STOP = r"meta tensor|data-independent implementation"

TINY = {
    "alignn": {"alignn_layers": 1, "gcn_layers": 1, "hidden_features": 16, "embedding_features": 8,
               "edge_input_features": 16, "triplet_input_features": 8, "epochs": 1, "batch_size": 4},
    "m3gnet": {"nblocks": 1, "units": 16, "dim_node_embedding": 16, "dim_edge_embedding": 16, "epochs": 1,
               "batch_size": 4},
    "megnet": {"nblocks": 1, "dim_edge_embedding": 16, "epochs": 1, "batch_size": 4},
    "magpie-cnn": {"conv_filters": 4, "dense_units": [8], "max_epochs": 1, "batch_size": 4},
    "xrd-cnn": {"conv_filters": 4, "dense_units": [8, 4], "max_epochs": 1, "batch_size": 4},
    "voltage-cgcnn": {"atom_fea_len": 8, "h_fea_len": 8, "radius_A": 5.0, "batch_size": 4, "epochs": 1,
                      "progress": False},
}


def _hosts() -> StructureBatch:
    from battgen.sources.builtin_hosts import builtin_hosts

    hosts = builtin_hosts()
    return hosts.with_columns(**{EF: [-0.5 - 0.2 * i for i in range(len(hosts))]})


def _electrodes() -> StructureBatch:
    from test_voltage_cgcnn import electrode_batch

    return electrode_batch()


def _fit(name: str, path, device: str):
    cls = predictor_class(name)
    batch, targets = (_electrodes(), ["average_voltage_V"]) if name == "voltage-cgcnn" else (_hosts(), [EF])
    splits = split_batch(batch, (0.6, 0.2, 0.2), seed=0)
    hyperparameters = {**cls.default_hyperparameters(), **TINY[name]}
    result = cls.fit(splits, targets, path, hyperparameters, seed=0, device=device)
    # as `battgen train-predictor` does (some fits write their own manifest, the others leave it to the command)
    write_manifest(path, "predictor", cls.architecture, hyperparameters, {"targets": targets, **result["training"]},
                   result["metrics"])
    return result


@pytest.mark.parametrize("name", sorted(TINY))
def test_training_on_the_meta_device_moves_every_tensor_there(name, tmp_path):
    with pytest.raises(RuntimeError, match=META_STOP) as stopped:
        _fit(name, tmp_path / "model", "meta")
    assert "expected device" not in str(stopped.value)


def test_the_meta_pass_catches_a_batch_left_on_the_cpu(tmp_path, monkeypatch):
    """The check can fail: with batches no longer moved, training on meta stops at a device mismatch."""
    from battgen.predictors import _graph_training

    monkeypatch.setattr(_graph_training, "to_device", lambda value, device: value)
    with pytest.raises(RuntimeError, match="not on the expected device"):
        _fit("alignn", tmp_path / "model", "meta")


@pytest.mark.parametrize("name", sorted(TINY))
def test_cpu_training_and_prediction_make_every_tensor_with_a_device_and_record_it(name, tmp_path):
    with ImplicitDeviceFactories() as guard:
        result = _fit(name, tmp_path / "model", "cpu")
        predictor = load_predictor(name, tmp_path / "model", device="cpu")
        batch = _electrodes() if name == "voltage-cgcnn" else _hosts()
        values = predictor.predict(batch)
    assert not guard.calls, f"tensors made without a device: {dict(guard.calls)}"
    assert (result["training"]["device"], result["training"]["precision"]) == ("cpu", "float32")
    assert all(len(v) == len(batch) for v in values.values())
    # a model loads with device auto wherever it was trained, and predicts where the network lives
    predictor = load_predictor(name, tmp_path / "model", device="auto")
    assert predictor.device == ("cpu" if NO_CUDA else "cuda")
    predictor.network.to("meta")
    with pytest.raises(RuntimeError, match=META_STOP) as stopped:
        predictor.predict(batch)
    assert "expected device" not in str(stopped.value)


def test_train_predictor_records_the_device_in_the_manifest(tmp_path):
    _hosts().write(tmp_path / "hosts.jsonl.gz")
    config = {"predictor": "magpie-cnn", "train": "hosts.jsonl.gz", "targets": [EF], "device": "cpu",
              "split": {"fractions": [0.6, 0.2, 0.2]}, "hyperparameters": TINY["magpie-cnn"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert battgen_main(["train-predictor", "--config", str(tmp_path / "config.yaml"), "--workdir", str(tmp_path)]) == 0
    training = read_manifest(tmp_path / "model")["training"]
    assert (training["device"], training["device_name"], training["precision"]) == ("cpu", "cpu", "float32")
    config = {"predictor": "magpie-cnn", "model": "model", "input": "hosts.jsonl.gz", "device": "cpu",
              "options": {"device": "auto"}}
    (tmp_path / "predict.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    code = battgen_main(["predict", "--config", str(tmp_path / "predict.yaml"), "--workdir", str(tmp_path)])
    summary = yaml.safe_load((tmp_path / "battgen-summary.yaml").read_text(encoding="utf-8"))
    assert code == 2 and "device given twice" in summary["error"]


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["train-predictor", "predict"])
def test_device_cuda_without_cuda_is_one_line_of_invalid_input(tmp_path, capsys, command):
    _hosts().write(tmp_path / "hosts.jsonl.gz")
    config = ({"predictor": "magpie-cnn", "train": "hosts.jsonl.gz", "targets": [EF], "device": "cuda"}
              if command == "train-predictor"
              else {"predictor": "magpie-cnn", "model": "model", "input": "hosts.jsonl.gz", "device": "cuda:0"})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    code = battgen_main([command, "--config", str(tmp_path / "config.yaml"), "--workdir", str(tmp_path)])
    summary = yaml.safe_load((tmp_path / "battgen-summary.yaml").read_text(encoding="utf-8"))
    assert code == 2 and summary["status"] == "invalid_input"
    assert "CUDA is not available" in summary["error"] and "\n" not in summary["error"]
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "model").exists()
