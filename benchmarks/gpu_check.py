"""The GPU check behind ``benchmarks/gpu_check.sh``: CDVAE and the crystal LM trained for a fixed budget and
sampled on the GPU, the same model trained and sampled on the CPU for comparison, one key=value line.

Phases (seconds of wall time, defaults; ``--quick`` shrinks everything for a CPU smoke run):

- CDVAE (preset ``cpu-benchmark``) on perov-5 ``val.csv``: train ``--cdvae-train-s`` on ``--device`` (100),
  then the same hyper-parameters ``--cpu-train-s`` on the CPU (20, 500 rows: steps/s does not depend on the
  row count); sample ``--n-samples`` (1,000) on the device, ``--n-cpu-samples`` (10) on the CPU;
- the crystal LM (preset ``cpu-benchmark``, 1,024 positions) on MP-20 mini: stage 1 + stage 2 for
  ``--llm-train-s`` on the device (90, split 3:1 between the stages), ``--cpu-train-s`` on the CPU; sample
  the same counts;
- validity of the device samples: structure (0.5 Å, CDVAE's) and composition (SMACT, CDVAE's settings),
  in percent of the structures returned; the LM's parse rate in percent of its samples;
- CDVAE again for ``--autocast-train-s`` (25) with ``autocast: bfloat16`` and ``num_workers: 2`` on the
  device (steps/s, validation loss, the manifest's precision);
- a property predictor on the device (``battgen train-predictor`` + ``battgen predict`` with ``device``):
  the XRD CNN (pymatgen only; ALIGNN / matgl are not on the GPU machine) on 300 perov-5 rows'
  formation energies for ``--predictor-train-s`` (15), then a prediction of the same rows.

Training steps/s count optimiser steps over training time without featurisation. The last line is
``key=value`` pairs. ``--dry-run`` checks the data, configs, presets and the budget (≤ 8 min with
``OVERHEAD_S`` for imports, featurisation and validity) and trains nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

BUDGET_S = 480.0  # the 8 minutes
OVERHEAD_S = 150.0  # imports, featurisation (~20 s per CDVAE run), tokenizer, validity, model loads
DATA_FILES = {"cdvae": "cdvae_perov_5/val.csv", "llm": "mp20_mini_slices/raw_mp20_dataset_mini.csv"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding " + ", ".join(DATA_FILES.values()))
    parser.add_argument("--workdir", type=Path, default=Path("gpu-check-output"))
    parser.add_argument("--device", default="cuda", help="auto | cpu | cuda | cuda:N (the device under test)")
    parser.add_argument("--cdvae-train-s", type=float, default=80.0)
    parser.add_argument("--llm-train-s", type=float, default=75.0)
    parser.add_argument("--autocast-train-s", type=float, default=25.0)
    parser.add_argument("--predictor-train-s", type=float, default=15.0)
    parser.add_argument("--cpu-train-s", type=float, default=20.0)
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--n-cpu-samples", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny presets and budgets: a CPU smoke run")
    parser.add_argument("--dry-run", action="store_true", help="check data, configs and budget; train nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.cdvae_train_s, args.llm_train_s, args.cpu_train_s = 8.0, 8.0, 4.0
        args.autocast_train_s, args.predictor_train_s = 4.0, 4.0
        args.n_samples, args.n_cpu_samples = 8, 2
    return args


def planned_seconds(args: argparse.Namespace) -> float:
    """Training budgets plus a generous share for sampling and the fixed overhead."""
    sampling = 90.0 if not args.quick else 20.0
    return (args.cdvae_train_s + args.llm_train_s + 2 * args.cpu_train_s + args.autocast_train_s
            + args.predictor_train_s + sampling + OVERHEAD_S)


def cdvae_hyperparameters(args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    from battgen.generate.cdvae.presets import preset_hyperparameters

    overrides = {"n_step_each": 2} if args.quick else {}
    return preset_hyperparameters("tiny" if args.quick else "cpu-benchmark", max_wall_time_s=seconds,
                                  max_epochs=None, progress=False, **overrides)


def llm_hyperparameters(args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    from battgen.generate.llm.presets import preset_hyperparameters

    hp = preset_hyperparameters("tiny" if args.quick else "cpu-benchmark")
    hp["pretrain"].update(max_wall_time_s=0.75 * seconds, max_steps=100_000)
    hp["lora"].update(max_wall_time_s=0.25 * seconds, max_steps=100_000)
    hp.update(progress=False, eval_every_steps=100_000, checkpoint_every_steps=100_000)
    return hp


def autocast_hyperparameters(args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """CDVAE's hyper-parameters with bfloat16 autocast and two data-loader workers."""
    return {**cdvae_hyperparameters(args, seconds), "autocast": "bfloat16", "num_workers": 2}


def predictor_config(args: argparse.Namespace, train_file: str, device: str) -> dict[str, Any]:
    """``battgen train-predictor``: the XRD CNN on perov-5 formation energies for a wall-time budget."""
    hp: dict[str, Any] = {"max_train_minutes": args.predictor_train_s / 60.0, "max_epochs": 100_000,
                          "patience_epochs": 100_000}
    if args.quick:
        hp.update(conv_filters=4, dense_units=[8, 4])
    return {"predictor": "xrd-cnn", "train": train_file, "targets": ["formation_energy_per_atom_eV"],
            "output": "xrd_cnn_model", "split": {"fractions": [0.8, 0.1, 0.1], "seed": 0}, "hyperparameters": hp,
            "seed": 0, "device": device}


def train_config(generator: str, train_file: str, output: str, hp: dict[str, Any], device: str) -> dict[str, Any]:
    return {"generator": generator, "train": train_file, "output": output, "filter": {"preset": "none"},
            "split": {"fractions": [0.9, 0.1, 0.0], "seed": 0}, "hyperparameters": hp, "seed": 0, "device": device}


def check(args: argparse.Namespace) -> list[str]:
    """Everything a run needs that can be checked without training: problems found (empty: ready)."""
    from battgen.devices import validate_device_setting
    from battgen.contracts.training import TrainGeneratorSettings, TrainPredictorSettings
    from battgen.generate.training import merge_hyperparameters, trainable_generator_class

    _CONFIG_KEYS = set(TrainGeneratorSettings.model_fields)  # the command's contract
    _TRAIN_KEYS = set(TrainPredictorSettings.model_fields)

    problems = [f"missing data file {args.data / rel}" for rel in DATA_FILES.values() if not (args.data / rel).is_file()]
    try:
        validate_device_setting(args.device)
    except ValueError as exc:
        problems.append(str(exc))
    for name, hp in (("cdvae", cdvae_hyperparameters(args, args.cdvae_train_s)),
                     ("llm", llm_hyperparameters(args, args.llm_train_s)),
                     ("cdvae", autocast_hyperparameters(args, args.autocast_train_s))):
        config = train_config(name, "train.jsonl.gz", f"{name}_model", hp, args.device)
        unknown = set(config) - _CONFIG_KEYS
        if unknown:
            problems.append(f"{name}: config keys {sorted(unknown)} unknown to battgen train-generator")
        try:  # what the command does with them: merged over the defaults, unknown keys refused
            merge_hyperparameters(trainable_generator_class(name).default_hyperparameters(), hp)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    from battgen.predictors.base import predictor_class

    config = predictor_config(args, "train.jsonl.gz", args.device)
    if set(config) - _TRAIN_KEYS:
        problems.append(f"predictor: config keys {sorted(set(config) - _TRAIN_KEYS)} unknown to battgen train-predictor")
    try:
        merge_hyperparameters(predictor_class(config["predictor"]).default_hyperparameters(), config["hyperparameters"])
    except ValueError as exc:
        problems.append(f"predictor: {exc}")
    if not args.quick and llm_hyperparameters(args, 1.0)["pretrain"]["n_positions"] < 1024:
        problems.append("the LM preset has fewer than 1,024 positions")
    if planned_seconds(args) > BUDGET_S:
        problems.append(f"planned {planned_seconds(args):.0f} s exceeds the {BUDGET_S:.0f} s budget")
    return problems


def steps_per_s(training: dict[str, Any]) -> float:
    if "stages" in training:  # the LM: both stages' optimiser steps over both stages' time
        stages = training["stages"].values()
        return sum(s["steps"] for s in stages) / max(sum(s["wall_time_s"] for s in stages), 1e-9)
    return training["steps"] / max(training["wall_time_s"] - training["featurise_time_s"], 1e-9)


def validity(batch) -> tuple[float, float]:
    from battgen.screen.charge import is_charge_neutral
    from battgen.screen.validity import validity_reason

    n = max(len(batch), 1)
    struct = sum(validity_reason(s) is None for s in batch.structures)
    comp = sum(is_charge_neutral(s.composition) for s in batch.structures)
    return round(100.0 * struct / n, 2), round(100.0 * comp / n, 2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from battgen.batch import StructureBatch
    from battgen.devices import resolve_device
    from battgen.generate.base import load_generator
    from battgen.generate.training import run_train_generator_command
    from battgen.sources.files import read_mp20_csv

    device = resolve_device(args.device)
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    max_rows = 200 if args.quick else None
    perov, _ = read_mp20_csv(args.data / DATA_FILES["cdvae"], max_rows=max_rows)
    mp20, _ = read_mp20_csv(args.data / DATA_FILES["llm"], max_rows=max_rows)
    perov.write(workdir / "perov5.jsonl.gz")
    perov.select([i < 500 for i in range(len(perov))]).write(workdir / "perov5_cpu.jsonl.gz")
    mp20.write(workdir / "mp20.jsonl.gz")
    mp20.select([i < 500 for i in range(len(mp20))]).write(workdir / "mp20_cpu.jsonl.gz")
    result: dict[str, Any] = {"device": device}
    plans = {
        "cdvae": ("perov5", cdvae_hyperparameters, args.cdvae_train_s, {"batch_size": 500}),
        "llm": ("mp20", llm_hyperparameters, args.llm_train_s, {"batch_size": 250}),
    }
    for name, (data, hyperparameters, seconds, conditions) in plans.items():
        trained = run_train_generator_command(
            train_config(name, f"{data}.jsonl.gz", f"{name}_{device.replace(':', '')}", hyperparameters(args, seconds),
                         device), workdir)
        on_cpu = run_train_generator_command(  # the same hyper-parameters on 500 rows
            train_config(name, f"{data}_cpu.jsonl.gz", f"{name}_cpu", hyperparameters(args, args.cpu_train_s), "cpu"),
            workdir)
        result[f"{name}_train_steps_per_s_{device_kind(device)}"] = round(steps_per_s(trained["training"]), 3)
        result[f"{name}_train_steps_per_s_cpu"] = round(steps_per_s(on_cpu["training"]), 3)
        model_dir = workdir / trained["model"]
        for where, n in ((device, args.n_samples), ("cpu", args.n_cpu_samples)):
            generator = load_generator(name, model=model_dir, device=where)
            started = time.perf_counter()
            settings = {**conditions, "batch_size": min(conditions["batch_size"], n)}
            if name == "llm":
                settings["max_attempts"] = n  # n samples, parsed or not
            batch = generator.generate(StructureBatch(), n, settings, seed=0)
            seconds_taken = time.perf_counter() - started
            result[f"{name}_samples_per_s_{device_kind(where)}"] = round(n / seconds_taken, 3)
            if where == device and name == "llm":
                result["llm_parse_percent"] = round(100.0 * (generator.last_run_stats["parse_rate"] or 0.0), 2)
                result["llm_max_new_tokens"] = generator.last_run_stats["max_new_tokens"]
            if where == device:
                result[f"{name}_n_samples"] = len(batch)
                struct, comp = validity(batch)
                result[f"{name}_struct_valid_percent"], result[f"{name}_comp_valid_percent"] = struct, comp
    # bfloat16 autocast + data-loader workers (opt-in settings), on the device
    kind = device_kind(device)
    autocast = run_train_generator_command(
        train_config("cdvae", "perov5.jsonl.gz", "cdvae_bf16", autocast_hyperparameters(args, args.autocast_train_s),
                     device), workdir)
    result[f"cdvae_bf16_workers2_train_steps_per_s_{kind}"] = round(steps_per_s(autocast["training"]), 3)
    result["cdvae_bf16_precision"] = autocast["training"]["precision"]
    result["cdvae_bf16_val_loss"] = autocast["metrics"].get("val_loss")
    # a property predictor trained and applied on the device
    from battgen.predictors.training import run_predict_command, run_train_predictor_command

    perov.select([i < 300 for i in range(len(perov))]).write(workdir / "perov5_predictor.jsonl.gz")
    trained = run_train_predictor_command(predictor_config(args, "perov5_predictor.jsonl.gz", device), workdir)
    started = time.perf_counter()
    predicted = run_predict_command({"predictor": "xrd-cnn", "model": trained["model"],
                                     "input": "perov5_predictor.jsonl.gz", "output": "perov5_predicted.jsonl.gz",
                                     "device": device}, workdir)
    result[f"xrd_cnn_predict_s_{kind}"] = round(time.perf_counter() - started, 2)
    result[f"xrd_cnn_train_epochs_per_s_{kind}"] = round(
        trained["training"]["epochs"] / max(trained["training"]["wall_time_s"], 1e-9), 3)
    result["xrd_cnn_trained_on"] = trained["training"]["device"]
    result["xrd_cnn_predicted_on"] = predicted["device"]
    result["xrd_cnn_test_mae_eV_per_atom"] = trained["metrics"].get("test_mae_formation_energy_per_atom_eV")
    return result


def device_kind(device: str) -> str:
    return "gpu" if device.startswith("cuda") else "cpu"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problems = check(args)
    if problems:
        for problem in problems:
            print(f"gpu_check: {problem}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"gpu_check: dry run ok: data present, configs valid, planned {planned_seconds(args):.0f} s "
              f"of {BUDGET_S:.0f} s")
        return 0
    started = time.perf_counter()
    try:
        result = run(args)
    except ValueError as exc:  # InvalidInputError included: `device: cuda` without CUDA, bad data
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    result["total_s"] = round(time.perf_counter() - started, 1)
    result["torch_threads"] = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or "default"
    print(" ".join(f"{key}={value}" for key, value in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
