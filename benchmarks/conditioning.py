"""Con-CDVAE target agreement (seed 004 Fig. 5B): requested vs achieved property, Gaussian vs diffusion prior.

One run, on the Li-containing rows of MP-20 mini (``mp20_mini_slices``, 238 rows; seed 004 conditions on
capacity and channel radius of Li compounds):

1. Train two Con-CDVAE models (``battgen.generate.cdvae``, preset ``tiny`` with ``--quick`` else
   ``cpu-benchmark``, the same ``--minutes`` budget each) conditioned on ``--condition`` (default
   ``gravimetric_capacity_mAh_per_g``; ``channel_radius_A`` runs Zeo++ on every row) plus element presence:
   one with the single Gaussian prior p(z | c), one with Con-CDVAE's second-stage diffusion prior.
2. Sample ``--n-per-target`` structures per requested value (the 20/40/60/80th percentiles of the training
   rows' values, so every target is in distribution) with Li required, and compute the achieved value with
   the code that labels the training data (:func:`battgen.generate.conditions.condition_value`).
3. Report per requested value the achieved median and quartiles and the percent within the tolerance of
   :data:`battgen.evaluate.targets.DEFAULT_TARGET_TOLERANCES` (50 mAh/g, 0.25 Å), next to the baseline
   of no conditioning at all: the training rows' own values scored against the same targets (what a
   generator that ignores its target would reach if it reproduced the training distribution).
4. Write ``<workdir>/target_agreement_<prior>.png`` (Fig. 5B-like histograms) and the table.

The tiny CPU models prove the protocol, not the paper's accuracy (seed 004 trained on a GPU for hours); the
baseline in the same run says whether conditioning did anything at all.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/conditioning.py [--quick] [--minutes 10] [--n-per-target 50]
[--condition channel_radius_A] [--workdir DIR]``; last line: ``key=value`` headline figures.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from battgen.batch import StructureBatch
from battgen.evaluate.plots import plot_target_agreement
from battgen.evaluate.targets import DEFAULT_TARGET_TOLERANCES, per_target_statistics, target_agreement
from battgen.generate.cdvae import CDVAEGenerator, preset_hyperparameters
from battgen.generate.cdvae.train import train_cdvae
from battgen.generate.conditions import condition_value
from battgen.models import MANIFEST_FILENAME, read_manifest, write_manifest
from battgen.sources.files import read_mp20_csv

REPO_ROOT = Path(__file__).resolve().parents[1]
PRIORS = ("gaussian", "diffusion")


def shared_data_dir() -> Path:
    return Path(os.environ.get("BATTGEN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def labelled_rows(condition: str, max_sites: int) -> StructureBatch:
    """Li-containing MP-20 mini rows with the condition's value in their metadata (rows without one dropped)."""
    batch, _ = read_mp20_csv(shared_data_dir() / "mp20_mini_slices" / "raw_mp20_dataset_mini.csv",
                             elements=["Li"], max_sites=max_sites)
    values = [condition_value(condition, meta, structure) for meta, structure in batch]
    keep = [value is not None and np.isfinite(value) for value in values]
    labelled = batch.with_columns(**{condition: values})
    return labelled.select(keep)


def train(rows: StructureBatch, condition: str, prior: str, model_dir: Path, quick: bool, minutes: float,
          seed: int) -> dict:
    hyperparameters = preset_hyperparameters(
        "tiny" if quick else "cpu-benchmark", conditions=[condition, "element_presence"], latent_prior=prior,
        max_epochs=None, max_wall_time_s=60.0 * minutes, progress=False,
        **({} if quick else {"max_atoms": max(len(s) for s in rows.structures)}))
    result = train_cdvae(rows, rows, model_dir, hyperparameters, seed=seed)
    write_manifest(model_dir, "generator", "cdvae", hyperparameters, result["training"], result["metrics"])
    return result["training"]


def sample(model_dir: Path, condition: str, targets: list[float], n: int, n_step_each: int, seed: int
           ) -> StructureBatch:
    generator = CDVAEGenerator(model_dir, progress=False)
    structures, meta = [], []
    for index, target in enumerate(targets):
        batch = generator.generate(StructureBatch(), n, {condition: target, "required_elements": ["Li"],
                                                         "n_step_each": n_step_each}, seed=seed + index)
        structures += batch.structures
        meta += [{**row, "row_id": f"target{index}-{row['row_id']}"} for row in batch.meta]  # ids unique per run
    return StructureBatch.from_structures(structures, meta)


def print_table(condition: str, rows_by_name: dict[str, list[dict]]) -> None:
    print(f"\n{condition}: achieved median [q25, q75] and % within tolerance, per requested value")
    targets = [row["target"] for row in next(iter(rows_by_name.values()))]
    print("target".rjust(10) + "".join(name.rjust(34) for name in rows_by_name))
    for index, target in enumerate(targets):
        cells = []
        for rows in rows_by_name.values():
            row = rows[index]
            if row.get("median_achieved") is None:
                cells.append("-".rjust(34))
            else:
                cells.append(f"{row['median_achieved']:.3g} [{row['q25_achieved']:.3g}, {row['q75_achieved']:.3g}] "
                             f"{row['within_tolerance_percent']:.0f}%".rjust(34))
        print(f"{target:10.4g}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--condition", choices=["gravimetric_capacity_mAh_per_g", "channel_radius_A"],
                        default="gravimetric_capacity_mAh_per_g")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    parser.add_argument("--n-per-target", type=int, default=50)
    parser.add_argument("--n-step-each", type=int, default=20, help="Langevin steps per noise level")
    parser.add_argument("--max-sites", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="tiny models, 20 s each, 8 per target")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/battgen-conditioning-benchmark"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-models", action="store_true",
                        help="sample the models an earlier run left in --workdir instead of training them again")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.n_per_target, args.n_step_each = 1.0 / 3.0, 8, 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    rows = labelled_rows(args.condition, args.max_sites)
    values = np.array(rows.column(args.condition), dtype=float)
    targets = [float(round(v, 2)) for v in np.percentile(values, [20, 40, 60, 80])]
    tolerance = DEFAULT_TARGET_TOLERANCES[args.condition]
    print(f"{len(rows)} Li rows with {args.condition}; targets {targets}; tolerance {tolerance:g}")

    table = {"no conditioning (training rows)": per_target_statistics(
        [t for t in targets for _ in values], [v for _ in targets for v in values], tolerance)}
    headline = {"n_train": len(rows), "tolerance": tolerance}
    baseline_within = np.mean([row["within_tolerance_percent"] for row in table["no conditioning (training rows)"]])
    headline["baseline_within_percent"] = round(float(baseline_within), 1)
    for prior in PRIORS:
        model_dir = args.workdir / f"model_{prior}"
        if args.reuse_models and (model_dir / MANIFEST_FILENAME).is_file():
            training = read_manifest(model_dir)["training"]
        else:
            training = train(rows, args.condition, prior, model_dir, args.quick, args.minutes, args.seed)
        generated = sample(model_dir, args.condition, targets, args.n_per_target, args.n_step_each, args.seed)
        agreement = target_agreement(generated)
        stats = agreement[args.condition]
        plot_target_agreement(agreement, args.workdir / f"target_agreement_{prior}.png")
        table[f"Con-CDVAE, {prior} prior"] = stats["per_target"]
        headline[f"{prior}_within_percent"] = round(float(stats["within_tolerance_percent"] or 0.0), 1)
        headline[f"{prior}_median_abs_error"] = round(float(stats["median_abs_error"] or float("nan")), 4)
        headline[f"{prior}_train_steps"] = training["steps"]
        print(f"{prior}: {training['steps']} steps, prior {training['latent_prior']}, "
              f"{len(generated)} samples, {stats['n_achieved_known']} with a known value", flush=True)
    print_table(args.condition, table)
    headline["seconds"] = round(time.perf_counter() - started, 1)
    print(" ".join(f"{key}={value}" for key, value in headline.items()))


if __name__ == "__main__":
    main()
