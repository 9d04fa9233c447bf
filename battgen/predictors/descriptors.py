"""Fixed-length descriptors of a crystal for the descriptor CNNs of seed 001 (§2.2.2).

* **Magpie** (composition only): matminer's ``ElementProperty.from_preset("magpie")``, 132 values = 22
  elemental properties x 6 statistics (minimum, maximum, range, mean, avg_dev, mode) over the
  composition. NaN handling: matminer is asked *not* to impute (``impute_nan=False``), so an element
  without tabulated data gives NaN in the affected features; the NaN is kept here and the model that
  consumes the features replaces it by the training-set mean of that feature (see
  :class:`battgen.predictors.descriptor_cnn.FeatureScaler`), so the imputation is fitted on training
  data only and saved with the model.
* **XRD** (structure): pymatgen's ``XRDCalculator`` (Cu Kα, 1.54184 Å) peak list, each peak's intensity
  summed into the bin of a fixed 2θ grid (default 5-90° in 0.5° steps, 170 bins, bin ``i`` covering
  ``[start + i*step, start + (i+1)*step)``), optionally Gaussian-broadened, then divided by the largest
  bin so the strongest reflection is 1. The seed's authors used matminer's ``XRDPowderPattern``
  (128 points, 0-127°); a configurable grid in the range where Cu Kα patterns are measured does the same
  job and keeps low-angle bins (no reflections for cells < 17 Å) out.

Both are computed once per distinct input and kept in an in-memory cache (Magpie by reduced-formula-
independent composition, XRD by a hash of the structure and the grid), so training, validation,
prediction and a hyper-parameter search over the same batch featurise each structure once.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pymatgen.core import Composition, Structure
from tqdm.auto import tqdm

MAGPIE_N_FEATURES = 132
# Featurising fewer structures than this is quick enough to run without a progress bar.
_PROGRESS_MIN_ROWS = 200

_magpie_cache: dict[str, np.ndarray] = {}
_xrd_cache: dict[tuple[str, str], np.ndarray] = {}


def clear_descriptor_caches() -> None:
    """Forget every cached descriptor (tests; long-running processes that featurise many batches)."""
    _magpie_cache.clear()
    _xrd_cache.clear()


def structure_sha256(structure: Structure) -> str:
    """A hash of a structure's lattice, species and fractional coordinates (rounded to 1e-6)."""
    digest = hashlib.sha256()
    digest.update(np.round(structure.lattice.matrix, 6).tobytes())
    digest.update(",".join(getattr(sp, "symbol", str(sp)) for sp in structure.species).encode())
    digest.update(np.round(structure.frac_coords % 1.0, 6).tobytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _magpie_featurizer() -> Any:
    from matminer.featurizers.composition import ElementProperty  # slow import (~2 s): only when used

    return ElementProperty.from_preset("magpie", impute_nan=False)


def magpie_feature_labels() -> list[str]:
    return list(_magpie_featurizer().feature_labels())


def _composition_key(composition: Composition) -> str:
    # Element fractions fix every Magpie statistic, so LiCoO2 and Li2Co2O4 share one entry.
    fractions = composition.fractional_composition
    return ";".join(f"{el.symbol}:{fractions[el]:.8f}" for el in sorted(fractions.elements))


def magpie_features(composition: Composition | Structure) -> np.ndarray:
    """The 132 Magpie features of a composition (a structure's composition is used); NaN where matminer
    has no elemental data."""
    if isinstance(composition, Structure):
        composition = composition.composition
    composition = Composition(composition).element_composition  # oxidation states play no role
    key = _composition_key(composition)
    if key not in _magpie_cache:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # matminer warns on every NaN it does not impute
            values = _magpie_featurizer().featurize(composition)
        _magpie_cache[key] = np.asarray(values, dtype=float)
    return _magpie_cache[key]


@dataclass(frozen=True)
class XRDGrid:
    """The 2θ grid an XRD pattern is binned onto (degrees) and how peaks are spread over it."""

    two_theta_min_deg: float = 5.0
    two_theta_max_deg: float = 90.0
    step_deg: float = 0.5
    broadening_deg: float = 0.0  # Gaussian sigma; 0 puts each peak into its bin only
    wavelength: str = "CuKa"

    def __post_init__(self) -> None:
        if not 0 <= self.two_theta_min_deg < self.two_theta_max_deg <= 180:
            raise ValueError(f"2θ range must satisfy 0 <= min < max <= 180°, got {self.two_theta_min_deg}-{self.two_theta_max_deg}")
        if self.step_deg <= 0 or self.broadening_deg < 0:
            raise ValueError("step_deg must be positive and broadening_deg non-negative")

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> XRDGrid:
        config = dict(config or {})
        unknown = sorted(set(config) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown XRD grid key(s) {unknown}; allowed: {sorted(cls.__dataclass_fields__)}")
        return cls(**config)

    @property
    def n_bins(self) -> int:
        return int(round((self.two_theta_max_deg - self.two_theta_min_deg) / self.step_deg))

    @property
    def bin_centres_deg(self) -> np.ndarray:
        return self.two_theta_min_deg + (np.arange(self.n_bins) + 0.5) * self.step_deg

    def bin_of(self, two_theta_deg: float) -> int:
        """Index of the bin holding ``two_theta_deg`` (bins are half-open, [lower, upper))."""
        return int(np.floor((two_theta_deg - self.two_theta_min_deg) / self.step_deg))

    def key(self) -> str:
        return repr(sorted(asdict(self).items()))


@functools.lru_cache(maxsize=4)
def _xrd_calculator(wavelength: str) -> Any:
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    return XRDCalculator(wavelength=wavelength)


def xrd_pattern(structure: Structure, grid: XRDGrid = XRDGrid()) -> np.ndarray:
    """The binned, max-normalised powder pattern of ``structure`` on ``grid`` (``grid.n_bins`` values)."""
    key = (structure_sha256(structure), grid.key())
    if key in _xrd_cache:
        return _xrd_cache[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about missing scattering factors of rare ions
        pattern = _xrd_calculator(grid.wavelength).get_pattern(
            structure, scaled=True, two_theta_range=(grid.two_theta_min_deg, grid.two_theta_max_deg)
        )
    binned = np.zeros(grid.n_bins)
    if grid.broadening_deg > 0:
        centres = grid.bin_centres_deg
        for two_theta, intensity in zip(pattern.x, pattern.y):
            binned += intensity * np.exp(-0.5 * ((centres - two_theta) / grid.broadening_deg) ** 2)
    else:
        for two_theta, intensity in zip(pattern.x, pattern.y):
            index = grid.bin_of(two_theta)
            if 0 <= index < grid.n_bins:
                binned[index] += intensity
    peak = binned.max()
    # A structure with no reflection in range (tiny cell, narrow window) stays all zeros, not NaN.
    binned = binned / peak if peak > 0 else binned
    _xrd_cache[key] = binned
    return binned


def featurize(structures: list[Structure], descriptor: str, xrd_grid: XRDGrid | None = None,
              progress: bool | None = None) -> np.ndarray:
    """``(n_structures, n_features)`` array of ``descriptor`` ("magpie" or "xrd"); a structure whose
    featurisation fails gets a row of NaN (reported by the caller as not predicted)."""
    if descriptor == "magpie":
        n_features, compute = MAGPIE_N_FEATURES, magpie_features
    elif descriptor == "xrd":
        grid = xrd_grid or XRDGrid()
        n_features, compute = grid.n_bins, functools.partial(xrd_pattern, grid=grid)
    else:
        raise ValueError(f"unknown descriptor {descriptor!r}; use 'magpie' or 'xrd'")
    show = len(structures) >= _PROGRESS_MIN_ROWS if progress is None else progress
    rows = np.full((len(structures), n_features), np.nan)
    for index, structure in enumerate(tqdm(structures, desc=f"{descriptor} features", disable=not show, leave=False)):
        try:
            rows[index] = compute(structure)
        except Exception:  # noqa: BLE001 - one unfeaturisable structure must not sink a batch
            continue
    return rows
