"""Generation metrics with CDVAE's definitions (Xie et al. 2022, ``scripts/compute_metrics.py``), plus
uniqueness / novelty, S.U.N. (MatterGen) and target agreement of conditional runs; ``battgen evaluate``.

Per generator (rows' ``generator`` metadata) and over all rows:

- **Validity** (all generated rows): structure (no two sites closer than 0.5 Å, volume >= 0.1 Å³;
  :mod:`battgen.screen.validity`), composition (SMACT with CDVAE's settings; :mod:`battgen.screen.charge`),
  and CDVAE's overall ``valid``: both, and a CrystalNN fingerprint could be computed.
- **Distribution metrics** on ``max_samples`` (CDVAE: 1,000) valid rows drawn at random (seeded; CDVAE
  raises when fewer are valid, here all valid rows are used and ``n_samples_evaluated`` says how many):
  Wasserstein distances to the reference (all rows) of density (g/cm³), number of elements and a property
  (a metadata column, or a predictor callable), and CDVAE's composition / structure diversity (mean
  pairwise fingerprint distance).
- **Coverage** COV-R / COV-P (:mod:`battgen.evaluate.fingerprints`). As in CDVAE, over *all* generated
  rows (invalid ones included, those without a fingerprint only in COV-P's denominator) against the whole
  reference set; ``coverage_on="valid"`` restricts it to valid rows.
- **Uniqueness / novelty** (not in CDVAE's script; CDVAE/MatterGen StructureMatcher settings, reusing
  :mod:`battgen.screen.novelty`): greedy deduplication of the structure- and composition-valid rows,
  novelty of the unique ones against a training set. ``screening_pass_percent`` is seed 000's funnel
  (valid, charge-neutral, unique, novel; 8,203/10,000 CDVAE and 1,087/10,000 LLM rows passed there).
- **S.U.N.**: percent of generated rows that are stable, valid, unique and novel, once per E_hull threshold
  and named by it: ``sun_ehull_le_100meV_percent`` is MatterGen's S.U.N. (``e_above_hull_eV_per_atom`` <=
  0.1 eV/atom, against an MP2020-compatible hull after relaxation: what the column must hold),
  ``sun_ehull_le_0meV_percent`` the strict one (<= 0); counts ``n_stable_<label>`` / ``n_sun_<label>``.
  Rows without the column are not stable.
- **Target agreement** for rows carrying ``target_<condition>`` (:mod:`battgen.evaluate.targets`).
- **Reconstruction** match rate / RMSE for (original, reconstructed) pairs
  (:mod:`battgen.evaluate.reconstruction`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pymatgen.core import Structure
from scipy.stats import wasserstein_distance
from tqdm.auto import tqdm

from battgen.batch import BatchFormatError, StructureBatch
from battgen.sources.files import read_input_batch
from battgen.evaluate.fingerprints import (
    FeatureScaler,
    FingerprintCache,
    Fingerprints,
    coverage,
    coverage_cutoffs,
    featurizer_versions,
    mean_pairwise_distance,
)
from battgen.evaluate.reconstruction import reconstruction_metrics
from battgen.evaluate.targets import DEFAULT_TARGET_TOLERANCES, agreement_scalars, target_agreement
from battgen.generate.conditions import SCALAR_CONDITIONS, WORKING_ION_CHARGES
from battgen.report import format_table, write_csv
from battgen.screen.charge import is_charge_neutral
from battgen.screen.novelty import build_reference_index, find_duplicates, make_matcher
from battgen.screen.validity import validity_reason

ALL_ROWS = "all"


def sun_label(threshold_eV_per_atom: float) -> str:
    """The S.U.N. name of an E_hull threshold: 0.1 eV/atom -> ``ehull_le_100meV`` (no dots: AiiDA keys)."""
    millielectronvolts = round(1000 * float(threshold_eV_per_atom), 3)
    text = f"{abs(millielectronvolts):g}".replace(".", "p")
    return f"ehull_le_{'minus' if millielectronvolts < 0 else ''}{text}meV"
UNKNOWN_GENERATOR = "unknown"
CDVAE_N_SAMPLES = 1000
PREDICTED_PREFIX = "predicted_"  # battgen predict's column prefix (battgen.predictors.base)
DISTRIBUTION_PROPERTIES = ("density_g_per_cm3", "num_elements")

TABLE_COLUMNS = (
    "generator", "n_generated", "struct_valid_percent", "comp_valid_percent", "valid_percent",
    "unique_percent", "novel_percent", "screening_pass_percent", "cov_recall_percent", "cov_precision_percent",
    "wdist_density_g_per_cm3", "wdist_num_elements", "wdist_property", "sun_ehull_le_100meV_percent",
    "sun_ehull_le_0meV_percent",
)
UNITS = {
    "*_percent": "percent of the row count named in the docs (generated rows unless stated)",
    "wdist_density_g_per_cm3": "g/cm³",
    "wdist_num_elements": "elements",
    "amsd_*, structure_diversity, structure_cutoff": "CrystalNN fingerprint distance (dimensionless)",
    "amcd_*, composition_diversity, composition_cutoff": "standardised Magpie fingerprint distance",
    "reconstruction_rms_dist_normalised": "RMS displacement / (V / n_sites)^(1/3) (dimensionless)",
    "target_<condition>_*_abs_error, tolerance": "the condition's unit (in its name)",
}


@dataclass(frozen=True)
class EvaluationSettings:
    """Science settings; thresholds carry units in their names."""

    dataset: str | None = None  # mp20 | perov_5 | carbon_24: CDVAE's coverage cutoffs
    structure_cutoff: float | None = None  # overrides the dataset's
    composition_cutoff: float | None = None
    max_samples: int = CDVAE_N_SAMPLES
    seed: int = 0
    property_column: str = "formation_energy_per_atom_eV"
    reference_property_column: str | None = None  # default: property_column
    e_hull_column: str = "e_above_hull_eV_per_atom"
    stable_threshold_eV_per_atom: float = 0.0  # the strict S.U.N. (E_hull <= 0)
    metastable_threshold_eV_per_atom: float = 0.1  # MatterGen's S.U.N. (E_hull <= 0.1 eV/atom)
    coverage_on: str = "all"  # CDVAE: every generated row; "valid": valid rows only
    target_tolerances: dict[str, float] = field(default_factory=dict)
    working_ion: str = "Li"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> EvaluationSettings:
        values = dict(values or {})
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"unknown evaluation setting(s) {unknown}; allowed: {sorted(allowed)}")
        settings = cls(**values)
        settings.cutoffs()  # raises for an unknown dataset
        if isinstance(settings.max_samples, bool) or not isinstance(settings.max_samples, int) or settings.max_samples < 1:
            raise ValueError(f"max_samples must be a positive integer, got {settings.max_samples!r}")
        if isinstance(settings.seed, bool) or not isinstance(settings.seed, int):
            raise ValueError(f"seed must be an integer, got {settings.seed!r}")
        for name in ("structure_cutoff", "composition_cutoff", "stable_threshold_eV_per_atom",
                     "metastable_threshold_eV_per_atom"):
            value = getattr(settings, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if settings.coverage_on not in ("all", "valid"):
            raise ValueError(f"coverage_on must be 'all' (CDVAE) or 'valid', got {settings.coverage_on!r}")
        if not isinstance(settings.target_tolerances, Mapping):
            raise ValueError(f"target_tolerances must map conditions to numbers, got {settings.target_tolerances!r}")
        unknown_targets = sorted(set(settings.target_tolerances) - set(SCALAR_CONDITIONS))
        if unknown_targets:
            raise ValueError(f"target_tolerances: unknown condition(s) {unknown_targets}; known: {SCALAR_CONDITIONS}")
        if settings.working_ion not in WORKING_ION_CHARGES:
            raise ValueError(f"unknown working_ion {settings.working_ion!r}; known: {sorted(WORKING_ION_CHARGES)}")
        return settings

    def cutoffs(self) -> tuple[float, float] | None:
        """(structure, composition) coverage cutoffs, or None when neither a dataset nor both are given."""
        base = coverage_cutoffs(self.dataset) if self.dataset not in (None, "custom") else {}
        structure = self.structure_cutoff if self.structure_cutoff is not None else base.get("structure")
        composition = self.composition_cutoff if self.composition_cutoff is not None else base.get("composition")
        if structure is None or composition is None:
            return None
        return float(structure), float(composition)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class GenerationMetrics:
    """Scalars per generator (``per_generator``) and over all rows (``overall``), the value lists behind
    the distribution figure, target agreement and reconstruction results."""

    overall: dict[str, Any]
    per_generator: dict[str, dict[str, Any]]
    distributions: dict[str, dict[str, list[float]]]  # generator (and "all") -> property -> values
    reference_distributions: dict[str, list[float]]
    target_agreement: dict[str, dict[str, Any]] = field(default_factory=dict)
    reconstruction: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON/YAML-safe summary (scalars only; value lists stay in the object)."""
        return _plain({
            "overall": self.overall,
            "per_generator": self.per_generator,
            "target_agreement": {key: {k: v for k, v in stats.items() if k not in ("targets", "achieved")}
                                 for key, stats in self.target_agreement.items()},
            "reconstruction": self.reconstruction,
            "settings": self.settings,
            "timings_s": self.timings_s,
            "units": UNITS,
            "versions": featurizer_versions(),
        })

    def table_rows(self) -> list[dict[str, Any]]:
        """One row per generator, then ``all``; ``wdist_property`` is the property column's distance."""
        rows = []
        for name, values in [*self.per_generator.items(), (ALL_ROWS, self.overall)]:
            row = {"generator": name, **values}
            row["wdist_property"] = values.get(f"wdist_{self.settings.get('property_column')}")
            rows.append(row)
        return rows


_REFERENCE_METRICS = ("wdist_density_g_per_cm3", "wdist_num_elements", "cov_recall_percent", "cov_precision_percent",
                      "amsd_recall", "amsd_precision", "amcd_recall", "amcd_precision")


def _plain(value: Any) -> Any:
    """numpy scalars to Python, NaN to None, recursively (for YAML / JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _percent(count: int | float, total: int) -> float | None:
    return 100.0 * float(count) / total if total else None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _column_values(metas: Sequence[Mapping[str, Any]], column: str) -> list[float | None]:
    """``column`` of each row, falling back to ``predicted_<column>`` (what ``battgen predict`` writes)."""
    values = []
    for meta in metas:
        value = _number(meta.get(column))
        values.append(value if value is not None else _number(meta.get(PREDICTED_PREFIX + column)))
    return values


def _column_sources(metas: Sequence[Mapping[str, Any]], column: str) -> set[str]:
    """Where the rows' values of ``column`` come from: ``column`` itself and/or ``predicted_<column>``."""
    sources = set()
    for meta in metas:
        if _number(meta.get(column)) is not None:
            sources.add(column)
        elif _number(meta.get(PREDICTED_PREFIX + column)) is not None:
            sources.add(PREDICTED_PREFIX + column)
    return sources


def property_wdist_refusal(generated_sources: set[str], reference_sources: set[str]) -> str | None:
    """Why a property Wasserstein distance between these two sides is not computed (None: it is).

    CDVAE applies one property model to both sides; a distance between one side's DFT values and the
    other side's predictions measures the predictor's error as much as the generator."""
    if not generated_sources or not reference_sources or generated_sources == reference_sources:
        return None
    return (f"generated values come from {sorted(generated_sources)} but reference values from "
            f"{sorted(reference_sources)}: one predictor must judge both sides (give property_model, or the same "
            "column on both)")


def _wdist(generated: Sequence[float | None], reference: Sequence[float | None]) -> float | None:
    a = [v for v in generated if v is not None]
    b = [v for v in reference if v is not None]
    return float(wasserstein_distance(a, b)) if a and b else None


def _num_elements(structure: Structure) -> int:
    return len(set(structure.species))  # CDVAE: len(set(structure.species))


def evaluate_generation(
    generated: StructureBatch,
    reference: StructureBatch | None = None,
    training: StructureBatch | None = None,
    settings: EvaluationSettings | Mapping[str, Any] | None = None,
    property_predictor: Callable[[Sequence[Structure]], Sequence[float | None]] | None = None,
    composition_scaler: FeatureScaler | str | None = None,
    fingerprint_cache: FingerprintCache | None = None,
    reconstruction: tuple[StructureBatch, StructureBatch] | None = None,
    progress: bool = False,
) -> GenerationMetrics:
    """All generation metrics of ``generated`` against ``reference`` (the test set: coverage, property
    distances) and ``training`` (novelty). Without ``reference`` the coverage and distance metrics are None.

    ``property_predictor`` (structures -> values) replaces the metadata column ``settings.property_column``
    for both sides; ``composition_scaler`` defaults to CDVAE's published CompScaler constants
    (:meth:`FeatureScaler.cdvae`); ``"reference"`` fits one on the reference fingerprints instead (named so
    in ``settings.composition_scaler``: perov-5 COV-R then drops from ~71 % to ~35 %).
    """
    if not isinstance(settings, EvaluationSettings):
        settings = EvaluationSettings.from_dict(settings)
    cache = fingerprint_cache if fingerprint_cache is not None else FingerprintCache()
    timings: dict[str, float] = {}
    structures = generated.structures

    started = time.perf_counter()
    struct_valid = np.array([validity_reason(s) is None for s in tqdm(structures, desc="validity", disable=not progress)],
                            dtype=bool)
    comp_valid = np.array([is_charge_neutral(s.composition) for s in structures], dtype=bool)
    timings["validity"] = time.perf_counter() - started

    started = time.perf_counter()
    n_cached_before = cache.n_computed
    generated_fps = cache.fingerprints(structures, progress, "fingerprints (generated)")
    reference_fps = cache.fingerprints(reference.structures, progress, "fingerprints (reference)") if reference else None
    timings["fingerprints"] = time.perf_counter() - started
    n_fingerprinted = cache.n_computed - n_cached_before
    valid = struct_valid & comp_valid & generated_fps.structure_ok  # CDVAE's Crystal.valid
    screen_valid = struct_valid & comp_valid

    scaler = composition_scaler
    if scaler is None:
        scaler = FeatureScaler.cdvae()
    elif isinstance(scaler, str):
        if scaler != "reference":
            raise ValueError(f"composition_scaler must be a FeatureScaler, 'reference' or None, got {scaler!r}")
        scaler = (FeatureScaler.fit(reference_fps.composition, fitted_on=f"fitted on the reference ({len(reference)} rows)")
                  if reference_fps is not None else FeatureScaler.cdvae())
    cutoffs = settings.cutoffs()

    started = time.perf_counter()
    novel = None
    if training is not None:
        labels = [str(m.get("material_id") or m["row_id"]) for m in training.meta]
        index = build_reference_index(training.structures, labels, make_matcher())
        novel = np.ones(len(generated), dtype=bool)
        for i in tqdm(np.flatnonzero(screen_valid), desc="novelty", disable=not progress):
            novel[i] = index.find(structures[i]) is None
    timings["novelty"] = time.perf_counter() - started

    reference_property_column = settings.reference_property_column or settings.property_column
    generated_property: list[float | None] | None = None
    reference_distributions: dict[str, list[float]] = {}
    reference_property: list[float | None] = []
    if reference is not None:
        reference_distributions = {
            "density_g_per_cm3": [float(s.density) for s in reference.structures],
            "num_elements": [_num_elements(s) for s in reference.structures],
        }
        reference_property = (
            [_number(v) for v in property_predictor(reference.structures)] if property_predictor
            else _column_values(reference.meta, reference_property_column)
        )
        reference_distributions[settings.property_column] = [v for v in reference_property if v is not None]
    if property_predictor is None:
        generated_property = _column_values(generated.meta, settings.property_column)

    e_hull = [_number(m.get(settings.e_hull_column)) for m in generated.meta]
    has_e_hull = any(v is not None for v in e_hull)

    generator_of = [str(m.get("generator") or UNKNOWN_GENERATOR) for m in generated.meta]
    groups = {name: np.array([g == name for g in generator_of], dtype=bool) for name in dict.fromkeys(generator_of)}
    started = time.perf_counter()
    predicted: dict[int, float | None] = {}

    def group_metrics(in_group: np.ndarray) -> tuple[dict[str, Any], dict[str, list[float]]]:
        n = int(in_group.sum())
        result: dict[str, Any] = {
            "n_generated": n,
            "n_struct_valid": int((struct_valid & in_group).sum()),
            "n_comp_valid": int((comp_valid & in_group).sum()),
            "n_valid": int((valid & in_group).sum()),
            "n_fingerprint_failed": int((~generated_fps.structure_ok & in_group).sum()),
        }
        result["struct_valid_percent"] = _percent(result["n_struct_valid"], n)
        result["comp_valid_percent"] = _percent(result["n_comp_valid"], n)
        result["valid_percent"] = _percent(result["n_valid"], n)

        # CDVAE: a random subset of max_samples valid crystals for the distribution metrics.
        valid_rows = np.flatnonzero(valid & in_group)
        if len(valid_rows) > settings.max_samples:
            chosen = np.random.default_rng(settings.seed).choice(len(valid_rows), settings.max_samples, replace=False)
            valid_rows = np.sort(valid_rows[chosen])
        result["n_samples_evaluated"] = len(valid_rows)
        samples = [structures[i] for i in valid_rows]
        distributions = {
            "density_g_per_cm3": [float(s.density) for s in samples],
            "num_elements": [_num_elements(s) for s in samples],
        }
        if property_predictor is not None:
            missing = [i for i in valid_rows if i not in predicted]  # predict each row once across groups
            if missing:
                values = property_predictor([structures[i] for i in missing])
                predicted.update({i: _number(v) for i, v in zip(missing, values)})
            sample_property = [predicted[i] for i in valid_rows]
        else:
            sample_property = [generated_property[i] for i in valid_rows]
        refusal = None
        if property_predictor is None and reference is not None:
            refusal = property_wdist_refusal(_column_sources([generated.meta[i] for i in valid_rows],
                                                             settings.property_column),
                                             _column_sources(reference.meta, reference_property_column))
        if refusal is not None:
            result["wdist_property_refused"] = refusal
        distributions[settings.property_column] = [v for v in sample_property if v is not None]
        result["n_samples_with_property"] = len(distributions[settings.property_column])
        result.update({key: None for key in _REFERENCE_METRICS})  # stay None without a reference
        result[f"wdist_{settings.property_column}"] = None
        if reference is not None:
            result["wdist_density_g_per_cm3"] = _wdist(distributions["density_g_per_cm3"],
                                                       reference_distributions["density_g_per_cm3"])
            result["wdist_num_elements"] = _wdist(distributions["num_elements"], reference_distributions["num_elements"])
            result[f"wdist_{settings.property_column}"] = (None if refusal is not None
                                                            else _wdist(sample_property, reference_property))
        sample_fps = generated_fps.select(np.isin(np.arange(len(generated)), valid_rows))
        result["composition_diversity"] = (mean_pairwise_distance(scaler.transform(sample_fps.composition))
                                           if scaler is not None else None)
        result["structure_diversity"] = mean_pairwise_distance(sample_fps.structure)

        if reference_fps is not None and cutoffs is not None:
            rows = in_group if settings.coverage_on == "all" else (valid & in_group)
            result.update(coverage(generated_fps.select(rows), reference_fps, scaler, *cutoffs,
                                   n_generated=int(rows.sum())))

        # Uniqueness among structure- and composition-valid rows, in batch order; novelty of the unique ones.
        candidates = np.flatnonzero(screen_valid & in_group)
        duplicate_of = find_duplicates([structures[i] for i in candidates], [generated.meta[i]["row_id"] for i in candidates],
                                       make_matcher(), progress=progress)
        unique = np.zeros(len(generated), dtype=bool)
        unique[candidates[[d is None for d in duplicate_of]]] = True
        result["n_unique"] = int(unique.sum())
        result["unique_percent"] = _percent(result["n_unique"], len(candidates))  # of valid rows
        if novel is not None:
            unique_novel = unique & novel
            result["n_unique_novel"] = int(unique_novel.sum())
            result["novel_percent"] = _percent(result["n_unique_novel"], result["n_unique"])  # of unique rows
            result["screening_pass_percent"] = _percent(result["n_unique_novel"], n)  # of generated rows
        if has_e_hull:
            for threshold in (settings.metastable_threshold_eV_per_atom, settings.stable_threshold_eV_per_atom):
                label = sun_label(threshold)
                stable = np.array([v is not None and v <= threshold for v in e_hull], dtype=bool) & in_group
                result[f"n_stable_{label}"] = int(stable.sum())
                if novel is not None:
                    sun = stable & unique & novel
                    result[f"n_sun_{label}"] = int(sun.sum())
                    result[f"sun_{label}_percent"] = _percent(int(sun.sum()), n)
            result["n_with_e_hull"] = int(sum(v is not None for v, g in zip(e_hull, in_group) if g))
        return result, distributions

    per_generator, distributions = {}, {}
    for name, in_group in groups.items():
        per_generator[name], distributions[name] = group_metrics(in_group)
    if len(groups) == 1:
        overall, distributions[ALL_ROWS] = dict(next(iter(per_generator.values()))), next(iter(distributions.values()))
    else:
        overall, distributions[ALL_ROWS] = group_metrics(np.ones(len(generated), dtype=bool))
    timings["group_metrics"] = time.perf_counter() - started

    started = time.perf_counter()
    agreement = target_agreement(generated, settings.target_tolerances, settings.working_ion, progress)
    overall.update(agreement_scalars(agreement))
    timings["target_agreement"] = time.perf_counter() - started

    reconstruction_result = None
    if reconstruction is not None:
        started = time.perf_counter()
        originals, reconstructed = reconstruction
        reconstruction_result = reconstruction_metrics(originals.structures, reconstructed.structures, progress)
        timings["reconstruction"] = time.perf_counter() - started

    settings_record = {
        **settings.as_dict(),
        "target_tolerances": {**DEFAULT_TARGET_TOLERANCES, **settings.target_tolerances},
        "structure_cutoff_used": cutoffs[0] if cutoffs else None,
        "composition_cutoff_used": cutoffs[1] if cutoffs else None,
        "composition_scaler": scaler.fitted_on if scaler is not None else None,
        "property_source": (getattr(property_predictor, "describe", lambda: "predictor")() if property_predictor
                            is not None else f"metadata column {settings.property_column}"),
        "n_reference": len(reference) if reference is not None else 0,
        "n_training": len(training) if training is not None else 0,
        "n_fingerprints_computed": n_fingerprinted,
    }
    return GenerationMetrics(
        overall=overall, per_generator=per_generator, distributions=distributions,
        reference_distributions=reference_distributions, target_agreement=agreement,
        reconstruction=reconstruction_result, settings=settings_record,
        timings_s={k: round(v, 3) for k, v in timings.items()},
    )


def write_outputs(metrics: GenerationMetrics, workdir: Path, prefix: str = "") -> dict[str, str]:
    """``metrics.yaml``, ``metrics.csv``, ``property_distributions.png`` and, for conditional rows,
    ``target_agreement.png``, each name prefixed by ``prefix``; returns {kind: file name}."""
    from battgen.evaluate.plots import plot_property_distributions, plot_target_agreement

    def name(base: str) -> str:
        return f"{prefix}{base}"

    (workdir / name("x")).parent.mkdir(parents=True, exist_ok=True)
    files = {"metrics": name("metrics.yaml"), "table": name("metrics.csv")}
    with open(workdir / files["metrics"], "w", encoding="utf-8") as handle:
        yaml.safe_dump(metrics.as_dict(), handle, sort_keys=False, allow_unicode=True)
    write_csv(_plain(metrics.table_rows()), TABLE_COLUMNS, workdir / files["table"])
    if metrics.reference_distributions or any(any(v) for v in metrics.distributions.values()):
        groups = {k: v for k, v in metrics.distributions.items() if k != ALL_ROWS}
        reference = metrics.reference_distributions or {key: [] for key in next(iter(groups.values()))}
        files["figure"] = name("property_distributions.png")
        plot_property_distributions(groups, reference, workdir / files["figure"])
    if metrics.target_agreement:
        files["target_figure"] = name("target_agreement.png")
        plot_target_agreement(metrics.target_agreement, workdir / files["target_figure"])
    return files


# --- battgen evaluate ---------------------------------------------------------------------------------
_SETTING_KEYS = {"dataset", "max_samples", "seed", "property_column", "reference_property_column", "e_hull_column",
                 "stable_threshold_eV_per_atom", "metastable_threshold_eV_per_atom", "coverage_on",
                 "target_tolerances", "working_ion"}
_CONFIG_KEYS = _SETTING_KEYS | {"generated", "reference", "training", "coverage_cutoffs", "reconstruction",
                                "composition_scaler", "fingerprint_cache", "output_prefix", "progress",
                                "property_model", "device"}


def _output_prefix(value: Any) -> str:
    prefix = str(value or "")
    if prefix and not prefix.endswith(("_", "-", ".", "/")):
        prefix += "_"
    if prefix.startswith("/") or ".." in Path(prefix).parts:
        raise ValueError(f"output_prefix must stay inside the working directory, got {value!r}")
    return prefix


def _reconstruction_files(value: Any) -> tuple[str, str]:
    if isinstance(value, Mapping) and set(value) == {"original", "reconstructed"}:
        return str(value["original"]), str(value["reconstructed"])
    if isinstance(value, list | tuple) and len(value) == 2:
        return str(value[0]), str(value[1])
    raise ValueError("reconstruction must be {original: file, reconstructed: file} or a list of two batch files")


def _composition_scaler(workdir: Path, value: Any) -> FeatureScaler | str | None:
    """None / ``cdvae`` (CDVAE's constants), ``reference`` (fit on the reference), a JSON file of means/stds,
    or a batch file to fit on (e.g. MP-20)."""
    if not value or value == "cdvae":
        return None
    if value == "reference":
        return "reference"
    path = workdir / str(value)
    if path.name.endswith(".json"):
        return FeatureScaler.from_file(path)
    batch = read_input_batch(path)
    return FeatureScaler.from_compositions([s.composition for s in batch.structures],
                                           fitted_on=f"{path.name} ({len(batch)} rows)")


def _property_model(config: Mapping[str, Any], settings: EvaluationSettings):
    """``property_model``: one of CDVAE's property models (mp20 | perovskite | carbon, or ``cdvae`` for the
    dataset's), applied to generated and reference rows alike, on ``device`` (default auto)."""
    name = config.get("property_model")
    if not name:
        if "device" in config:
            raise ValueError("`device` is used only with `property_model`")
        return None
    from battgen.evaluate.cdvae_property_models import DATASET_MODELS, MODELS, CDVAEPropertyModel

    if name == "cdvae":
        if settings.dataset not in DATASET_MODELS:
            raise ValueError(f"property_model: cdvae needs dataset one of {sorted(DATASET_MODELS)}")
        name = DATASET_MODELS[settings.dataset]
    if name not in MODELS:
        raise ValueError(f"property_model must be cdvae or one of {sorted(MODELS)}, got {name!r}")
    if MODELS[name][1] != settings.property_column:
        raise ValueError(f"property_model {name} predicts {MODELS[name][1]}; set property_column to it "
                         f"(got {settings.property_column})")
    return CDVAEPropertyModel(name, device=config.get("device", "auto"))


def run_evaluate_command(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """``battgen evaluate``: config ``generated`` (batch file), ``reference`` (test-set batch: coverage and
    property distances), optional ``training`` (novelty), ``dataset`` (mp20 | perov_5 | carbon_24 | custom
    with ``coverage_cutoffs: {structure: ..., composition: ...}``), ``max_samples`` (CDVAE: 1000),
    ``property_column``, ``reconstruction`` ({original, reconstructed} batch files paired by order),
    ``e_hull_column``, ``output_prefix`` and the other :class:`EvaluationSettings`; ``composition_scaler``
    (default ``cdvae``: CDVAE's published constants; ``reference``: fitted on the reference; a JSON file of
    Magpie means/stds, or a batch file to fit them on), ``fingerprint_cache`` (an .npz reused across runs).

    Writes ``metrics.yaml``, ``metrics.csv``, ``property_distributions.png`` and, for conditional rows,
    ``target_agreement.png``.
    """
    from battgen.errors import InvalidInputError  # the CLI imports this module lazily; avoid a cycle at import

    unknown = sorted(set(config) - _CONFIG_KEYS)
    if unknown:
        raise InvalidInputError(f"unknown config key(s) {unknown}; allowed: {sorted(_CONFIG_KEYS)}")
    if "generated" not in config:
        raise InvalidInputError("config needs 'generated': the batch file to evaluate")
    try:
        setting_values = {key: config[key] for key in _SETTING_KEYS if key in config}
        cutoffs = config.get("coverage_cutoffs")
        if cutoffs is not None:
            if not isinstance(cutoffs, Mapping) or set(cutoffs) != {"structure", "composition"}:
                raise ValueError("coverage_cutoffs must be {structure: number, composition: number}")
            setting_values["structure_cutoff"] = cutoffs["structure"]
            setting_values["composition_cutoff"] = cutoffs["composition"]
        settings = EvaluationSettings.from_dict(setting_values)
        if config.get("reference") and settings.cutoffs() is None:
            raise ValueError("coverage needs 'dataset' (mp20 | perov_5 | carbon_24) or "
                             "'dataset: custom' with 'coverage_cutoffs'")
        prefix = _output_prefix(config.get("output_prefix"))
        generated = read_input_batch(workdir / config["generated"])
        if len(generated) == 0:
            raise ValueError(f"{config['generated']} has no rows to evaluate")
        reference = read_input_batch(workdir / config["reference"]) if config.get("reference") else None
        training = read_input_batch(workdir / config["training"]) if config.get("training") else None
        pair = None
        if config.get("reconstruction") is not None:
            original_file, reconstructed_file = _reconstruction_files(config["reconstruction"])
            pair = (read_input_batch(workdir / original_file), read_input_batch(workdir / reconstructed_file))
            if len(pair[0]) != len(pair[1]):
                raise ValueError(f"reconstruction: {len(pair[0])} originals but {len(pair[1])} reconstructions")
        scaler = _composition_scaler(workdir, config.get("composition_scaler"))
        property_predictor = _property_model(config, settings)
    except (BatchFormatError, ValueError, TypeError, KeyError, OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(str(exc)) from exc

    cache = FingerprintCache(workdir / config["fingerprint_cache"]) if config.get("fingerprint_cache") else None
    metrics = evaluate_generation(generated, reference, training, settings, property_predictor=property_predictor,
                                  composition_scaler=scaler,
                                  fingerprint_cache=cache, reconstruction=pair, progress=bool(config.get("progress")))
    if cache is not None:
        cache.save()
    files = write_outputs(metrics, workdir, prefix)
    print(format_table(_plain(metrics.table_rows()), TABLE_COLUMNS, float_format="{:.4g}"))
    headline = {key: metrics.overall.get(key) for key in TABLE_COLUMNS[1:] if key in metrics.overall}
    return _plain({
        **files,
        "n_generated": len(generated),
        "generators": list(metrics.per_generator),
        "overall": headline,
        "reconstruction": metrics.reconstruction,
        "timings_s": metrics.timings_s,
        "units": UNITS,
    })
