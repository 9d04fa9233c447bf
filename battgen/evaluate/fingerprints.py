"""CDVAE's crystal fingerprints and coverage (COV-R / COV-P), as in its ``scripts/compute_metrics.py``.

- Structure fingerprint: matminer ``CrystalNNFingerprint.from_preset("ops")`` of every site, averaged over
  the sites (61 numbers). A structure whose fingerprint raises gets none, and CDVAE then counts the
  crystal as invalid.
- Composition fingerprint: matminer ``ElementProperty.from_preset("magpie")`` (132 numbers), standardised
  before distances are taken. CDVAE standardises with fixed means/stds shipped in its repository
  (``CompScaler``); here they are the default too (:meth:`FeatureScaler.cdvae`, ``cdvae_comp_scaler.json``);
  a scaler fitted on the reference set is used only when asked (``composition_scaler: reference``) and is
  named so in the output; a JSON file of means/stds or a fit on a broader batch
  (:meth:`FeatureScaler.from_compositions`) can be given instead.
  CDVAE's constants are, to within 0.1 σ in the means and 1 % in the stds (medians over the 132 features),
  what a fit on MP-20 gives (measured on the 2,573-row MP-20 mini set); the choice matters: perov-5 val
  (400 rows) against test (800 rows) covers COV-R/COV-P 71.6/89.0 % with the MP-20-mini fit, 70.8/87.3 %
  with CDVAE's constants, but 35.4/55.5 % with a scaler fitted on the perov-5 test rows themselves.
  NaN features become 0 after scaling, zero or undefined standard deviations become 1, as in CDVAE's
  (chemprop's) ``StandardScaler``.
- Coverage: Euclidean distances between generated and reference fingerprints; COV-R is the fraction of
  reference crystals with a generated crystal within both cutoffs, COV-P the number of generated crystals
  with a reference crystal within both cutoffs divided by the number of generated crystals *including*
  those without a fingerprint. Cutoffs per dataset are CDVAE's ``COV_Cutoffs``. As in CDVAE, the
  structure and composition minima are taken independently: a reference crystal counts as recalled when
  *some* generated crystal is structurally close and *some* (possibly another) is compositionally close, so
  the COV-R of a union of generators can exceed the sum of theirs.

Cost: CrystalNN is slow (about 15 ms per site on one CPU core, so ~0.1 s for a 5-atom perovskite and
~0.3 s for an MP-20 crystal); Magpie is ~2 ms per composition. :class:`FingerprintCache` computes each
distinct structure once and can persist to an ``.npz`` file so a reference set is fingerprinted once.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Composition, Structure
from scipy.spatial.distance import cdist, pdist
from tqdm.auto import tqdm

from battgen.batch import structure_to_row

# CDVAE ``COV_Cutoffs`` (its names: mp20, carbon, perovskite); distances are in fingerprint units.
COVERAGE_CUTOFFS: dict[str, dict[str, float]] = {
    "mp20": {"structure": 0.4, "composition": 10.0},
    "carbon_24": {"structure": 0.2, "composition": 4.0},
    "perov_5": {"structure": 0.2, "composition": 4.0},
}
DATASET_ALIASES = {
    "mp20": "mp20", "mp_20": "mp20", "mp-20": "mp20",
    "carbon": "carbon_24", "carbon_24": "carbon_24",
    "perovskite": "perov_5", "perov": "perov_5", "perov_5": "perov_5",
}
STRUCTURE_FINGERPRINT_LENGTH = 61
COMPOSITION_FINGERPRINT_LENGTH = 132
_CACHE_FORMAT = "battgen.fingerprint_cache"


def coverage_cutoffs(dataset: str) -> dict[str, float]:
    """CDVAE's structure and composition cutoffs for ``dataset`` (mp20, perov_5, carbon_24 or an alias)."""
    key = DATASET_ALIASES.get(str(dataset).lower())
    if key is None:
        raise ValueError(f"no coverage cutoffs for dataset {dataset!r}; known: {sorted(COVERAGE_CUTOFFS)} "
                         "(or give the cutoffs yourself)")
    return dict(COVERAGE_CUTOFFS[key])


@cache
def _featurizers():
    # matminer is slow to import (~4 s): only when fingerprints are needed.
    from matminer.featurizers.composition.composite import ElementProperty
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    return CrystalNNFingerprint.from_preset("ops"), ElementProperty.from_preset("magpie")


def featurizer_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("matminer", "pymatgen")}


def structure_fingerprint(structure: Structure) -> np.ndarray | None:
    """Site-averaged CrystalNN "ops" fingerprint; None when CrystalNN fails (CDVAE: crystal invalid)."""
    crystal_nn, _ = _featurizers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no oxidation states" etc. on every site
            sites = [crystal_nn.featurize(structure, index) for index in range(len(structure))]
    except Exception:  # noqa: BLE001 - CDVAE catches everything here too
        return None
    return np.asarray(sites, dtype=float).mean(axis=0)


def composition_fingerprint(composition: Composition) -> np.ndarray:
    """Magpie element-property statistics (NaN where an element lacks the property)."""
    _, magpie = _featurizers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(magpie.featurize(Composition(composition)), dtype=float)


def structure_key(structure: Structure) -> str:
    """Content hash of the geometry and species (the batch row encoding, so 1e-10 rounding)."""
    text = json.dumps(structure_to_row(structure), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Fingerprints:
    """Fingerprints of a list of structures: ``structure`` rows are NaN where ``structure_ok`` is False."""

    structure: np.ndarray  # (n, 61)
    structure_ok: np.ndarray  # (n,) bool
    composition: np.ndarray  # (n, 132), may hold NaN

    def select(self, mask: Sequence[bool] | np.ndarray) -> Fingerprints:
        mask = np.asarray(mask, dtype=bool)
        return Fingerprints(self.structure[mask], self.structure_ok[mask], self.composition[mask])

    def __len__(self) -> int:
        return len(self.structure_ok)


class FingerprintCache:
    """Fingerprints by structure content hash, computed at most once; optionally persisted to ``path``.

    A cache file written with other matminer/pymatgen versions is ignored (fingerprints could differ).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, tuple[np.ndarray | None, np.ndarray]] = {}
        self.n_computed = 0
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        with np.load(self.path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            if header.get("format") != _CACHE_FORMAT or header.get("versions") != featurizer_versions():
                return
            for key, struct, ok, comp in zip(data["keys"], data["structure"], data["structure_ok"], data["composition"]):
                self._entries[str(key)] = (struct if ok else None, comp)

    def save(self) -> Path | None:
        if self.path is None:
            return None
        keys = sorted(self._entries)
        structure = np.full((len(keys), STRUCTURE_FINGERPRINT_LENGTH), np.nan)
        ok = np.zeros(len(keys), dtype=bool)
        composition = np.full((len(keys), COMPOSITION_FINGERPRINT_LENGTH), np.nan)
        for index, key in enumerate(keys):
            struct, comp = self._entries[key]
            if struct is not None:
                structure[index], ok[index] = struct, True
            composition[index] = comp
        header = json.dumps({"format": _CACHE_FORMAT, "versions": featurizer_versions()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb") as handle:  # np.savez would append ".npz" to a path without it
            np.savez_compressed(handle, header=header, keys=np.asarray(keys), structure=structure,
                                structure_ok=ok, composition=composition)
        return self.path

    def __len__(self) -> int:
        return len(self._entries)

    def fingerprints(self, structures: Sequence[Structure], progress: bool = False, desc: str = "fingerprints") -> Fingerprints:
        keys = [structure_key(s) for s in structures]
        for key, structure in tqdm(zip(keys, structures), total=len(keys), desc=desc, disable=not progress):
            if key not in self._entries:
                self._entries[key] = (structure_fingerprint(structure), composition_fingerprint(structure.composition))
                self.n_computed += 1
        structure_fps = np.full((len(keys), STRUCTURE_FINGERPRINT_LENGTH), np.nan)
        ok = np.zeros(len(keys), dtype=bool)
        composition_fps = np.full((len(keys), COMPOSITION_FINGERPRINT_LENGTH), np.nan)
        for index, key in enumerate(keys):
            struct, comp = self._entries[key]
            if struct is not None:
                structure_fps[index], ok[index] = struct, True
            composition_fps[index] = comp
        return Fingerprints(structure_fps, ok, composition_fps)


CDVAE_COMP_SCALER_FILE = Path(__file__).with_name("cdvae_comp_scaler.json")
CDVAE_COMP_SCALER_NAME = "CDVAE CompScaler constants"


@dataclass
class FeatureScaler:
    """Standard scaler with CDVAE's (chemprop's) conventions: NaN-aware fit, NaN -> 0 after transform."""

    means: np.ndarray
    stds: np.ndarray
    fitted_on: str = ""

    @classmethod
    def fit(cls, features: np.ndarray, fitted_on: str = "") -> FeatureScaler:
        features = np.asarray(features, dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            means = np.nanmean(features, axis=0)
            stds = np.nanstd(features, axis=0)
        means = np.where(np.isnan(means), 0.0, means)
        stds = np.where(np.isnan(stds) | (stds == 0), 1.0, stds)
        return cls(means, stds, fitted_on)

    def transform(self, features: np.ndarray) -> np.ndarray:
        scaled = (np.asarray(features, dtype=float) - self.means) / self.stds
        return np.where(np.isnan(scaled), 0.0, scaled)

    @classmethod
    def from_compositions(cls, compositions: Sequence[Composition], fitted_on: str = "") -> FeatureScaler:
        """Fit on the Magpie fingerprints of ``compositions`` (e.g. MP-20, like CDVAE's CompScaler)."""
        return cls.fit(np.array([composition_fingerprint(c) for c in compositions]), fitted_on)

    @classmethod
    def cdvae(cls) -> FeatureScaler:
        """CDVAE's published CompScaler constants (the default of every COV here: numbers compare with the paper)."""
        scaler = cls.from_file(CDVAE_COMP_SCALER_FILE)
        scaler.fitted_on = CDVAE_COMP_SCALER_NAME
        return scaler

    @classmethod
    def from_file(cls, path: str | Path) -> FeatureScaler:
        """A JSON file ``{"means": [132 numbers], "stds": [132 numbers]}`` (e.g. CDVAE's CompScaler)."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        means, stds = np.asarray(data["means"], dtype=float), np.asarray(data["stds"], dtype=float)
        if means.shape != (COMPOSITION_FINGERPRINT_LENGTH,) or stds.shape != means.shape:
            raise ValueError(f"{path}: means and stds must each hold {COMPOSITION_FINGERPRINT_LENGTH} numbers")
        return cls(means, np.where(stds == 0, 1.0, stds), fitted_on=f"file {Path(path).name}")


def coverage(
    generated: Fingerprints,
    reference: Fingerprints,
    scaler: FeatureScaler,
    structure_cutoff: float,
    composition_cutoff: float,
    n_generated: int | None = None,
) -> dict[str, Any]:
    """CDVAE ``compute_cov``: COV-R, COV-P (percent) and the mean minimum distances (AMSD / AMCD).

    Generated rows without a structure fingerprint are left out but still count in COV-P's denominator
    (``n_generated``, default ``len(generated)``); reference rows without one are left out (CDVAE would
    fail on them).
    """
    n_generated = len(generated) if n_generated is None else n_generated
    generated_ok, reference_ok = generated.select(generated.structure_ok), reference.select(reference.structure_ok)
    if len(generated_ok) == 0 or len(reference_ok) == 0 or n_generated == 0:
        return {"cov_recall_percent": None, "cov_precision_percent": None, "amsd_recall": None,
                "amsd_precision": None, "amcd_recall": None, "amcd_precision": None,
                "n_coverage_generated": len(generated_ok), "n_coverage_reference": len(reference_ok)}
    structure_distances = cdist(generated_ok.structure, reference_ok.structure)
    composition_distances = cdist(scaler.transform(generated_ok.composition), scaler.transform(reference_ok.composition))
    structure_recall, structure_precision = structure_distances.min(axis=0), structure_distances.min(axis=1)
    composition_recall, composition_precision = composition_distances.min(axis=0), composition_distances.min(axis=1)
    recalled = (structure_recall <= structure_cutoff) & (composition_recall <= composition_cutoff)
    precise = (structure_precision <= structure_cutoff) & (composition_precision <= composition_cutoff)
    return {
        "cov_recall_percent": 100.0 * float(recalled.mean()),
        "cov_precision_percent": 100.0 * float(precise.sum()) / n_generated,
        "amsd_recall": float(structure_recall.mean()),
        "amsd_precision": float(structure_precision.mean()),
        "amcd_recall": float(composition_recall.mean()),
        "amcd_precision": float(composition_precision.mean()),
        "n_coverage_generated": len(generated_ok),
        "n_coverage_reference": len(reference_ok),
    }


def mean_pairwise_distance(features: np.ndarray) -> float | None:
    """CDVAE's diversity (``get_fp_pdist``): mean Euclidean distance over all pairs; None below 2 rows."""
    features = np.asarray(features, dtype=float)
    return float(pdist(features).mean()) if len(features) >= 2 else None
