"""Train a CDVAE preset on a CDVAE-format CSV, sample, and score validity and throughput.

    OMP_NUM_THREADS=1 python -m battgen.generate.cdvae.benchmark \\
        --train /work/shared/data/cdvae_perov_5/val.csv --eval /work/shared/data/cdvae_perov_5/test.csv \\
        --preset cpu-benchmark --out /tmp/cdvae-perov5 --n-samples 200

perov-5's train.csv is not in the shared data (> 4 MiB), so the benchmark trains on val.csv and validates
on (a slice of) test.csv. Writes ``<out>/model`` (not for git), ``<out>/samples.jsonl.gz`` and
``<out>/benchmark.json`` with structure / composition validity rates (fractions of samples; CDVAE's
definitions, :mod:`battgen.screen.validity` and :mod:`battgen.screen.charge`) and throughput
(structures/s).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from battgen.generate.cdvae import CDVAEGenerator
from battgen.generate.cdvae.presets import preset_hyperparameters
from battgen.generate.cdvae.train import train_cdvae
from battgen.models import write_manifest
from battgen.screen.charge import is_charge_neutral
from battgen.screen.validity import structure_validity
from battgen.sources.files import read_mp20_csv


def validity_rates(batch) -> dict[str, float]:
    structures = batch.structures
    structure_ok = [structure_validity(s) for s in structures]
    composition_ok = [is_charge_neutral(s.composition) for s in structures]
    n = max(len(structures), 1)
    return {
        "n_samples": len(structures),
        "structure_validity_fraction": sum(structure_ok) / n,
        "composition_validity_fraction": sum(composition_ok) / n,
        "both_valid_fraction": sum(a and b for a, b in zip(structure_ok, composition_ok)) / n,
    }


def run_benchmark(train_csv: Path, eval_csv: Path, out: Path, preset: str, n_samples: int, seed: int,
                  n_eval_rows: int, overrides: dict[str, Any]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    train_batch, _ = read_mp20_csv(train_csv)
    eval_batch, _ = read_mp20_csv(eval_csv, max_rows=n_eval_rows)
    hyperparameters = preset_hyperparameters(preset, **overrides)
    model_dir = out / "model"
    started = time.perf_counter()
    result = train_cdvae(train_batch, eval_batch, model_dir, hyperparameters, seed)
    training_s = time.perf_counter() - started
    write_manifest(model_dir, "generator", "cdvae", hyperparameters, result["training"], result["metrics"])
    generator = CDVAEGenerator(model_dir)
    started = time.perf_counter()
    samples = generator.generate(None, n_samples, {"batch_size": n_samples}, seed)
    sampling_s = time.perf_counter() - started
    samples.write(out / "samples.jsonl.gz")
    report = {
        "train_csv": str(train_csv), "eval_csv": str(eval_csv), "n_train": len(train_batch), "n_eval": len(eval_batch),
        "preset": preset, "overrides": overrides, "seed": seed,
        "training_time_s": round(training_s, 1), "training": result["training"], "metrics": result["metrics"],
        "sampling_time_s": round(sampling_s, 1), "structures_per_s": round(len(samples) / sampling_s, 3),
        "langevin_steps": samples.meta[0]["langevin_steps"] if len(samples) else None,
        **validity_rates(samples),
    }
    (out / "benchmark.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="cpu-benchmark")
    parser.add_argument("--n-samples", type=int, default=200)
    parser.add_argument("--n-eval-rows", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="hyper-parameter override, value parsed as JSON (e.g. max_wall_time_s=900)")
    args = parser.parse_args(argv)
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    report = run_benchmark(args.train, args.eval, args.out, args.preset, args.n_samples, args.seed,
                           args.n_eval_rows, overrides)
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
