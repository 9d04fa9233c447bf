"""Channel radius vs state of charge: the least-squares slope with its standard error, the ranking of
compounds by |slope| and the figure of seed 004 Fig. 4.

State of charge (SOC) of an anode configuration = Li atoms left / Li atoms of the fully lithiated
compound (1 = fully lithiated, the charged cell; 0 = every Li removed). The slope is d(channel radius) /
d(SOC) in Å per unit SOC, the unit of the seed's "Å/100%" (pure Si: 0.85 ± 0.23). A small |slope| means
the Li channel keeps its size across (de)lithiation: the seed's stability criterion, so compounds are
ranked by |slope| ascending.

The fit is ordinary least squares, :func:`scipy.stats.linregress`: the slope error is its standard error
from the residuals (assumes independent, equal-variance scatter of the configurations around the line;
it measures how well the random-removal configurations determine the trend, not a systematic error of
the MLIP or of the channel definition). Pearson r and Spearman ρ with their p-values are reported as in
seed 004 Fig. 2.

Plain numpy / scipy / matplotlib: the AiiDA calcfunction ``battgen.channel_radius_slope`` calls these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

SLOPE_UNITS = {
    "slope_A_per_unit_soc": "Å per unit SOC (= Å/100% SOC)",
    "slope_err_A_per_unit_soc": "Å per unit SOC (standard error)",
    "intercept_A": "Å (radius extrapolated to SOC 0)",
    "intercept_err_A": "Å",
    "state_of_charge": "Li left / Li of the fully lithiated compound (0-1)",
    "channel_radius_A": "Å",
}
# A slope needs at least three points (two give no residuals, hence no error) at two or more SOCs.
MIN_POINTS = 3


@dataclass(frozen=True)
class SlopeFit:
    """Least-squares line radius = intercept + slope × SOC for one compound."""

    n_points: int
    slope_A_per_unit_soc: float
    slope_err_A_per_unit_soc: float
    intercept_A: float
    intercept_err_A: float
    pearson_r: float
    pearson_p: float
    spearman_rho: float
    spearman_p: float
    soc_min: float
    soc_max: float
    method: str = "ordinary least squares (scipy.stats.linregress); error = standard error of the slope"

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def fit_channel_radius_slope(state_of_charge: Sequence[float], channel_radius_A: Sequence[float]) -> SlopeFit:
    """Fit radius (Å) vs SOC; points with a non-finite value are dropped. Raises ValueError when fewer than
    :data:`MIN_POINTS` points or a single SOC remain."""
    from scipy import stats

    soc = np.asarray(state_of_charge, dtype=float)
    radius = np.asarray(channel_radius_A, dtype=float)
    if soc.shape != radius.shape:
        raise ValueError(f"{soc.size} SOC values but {radius.size} radii")
    keep = np.isfinite(soc) & np.isfinite(radius)
    soc, radius = soc[keep], radius[keep]
    if soc.size < MIN_POINTS:
        raise ValueError(f"a slope with an error needs at least {MIN_POINTS} usable points, got {soc.size}")
    if np.ptp(soc) == 0:
        raise ValueError(f"all {soc.size} points are at the same state of charge {soc[0]:.3f}")
    result = stats.linregress(soc, radius)
    slope_err, intercept_err = float(result.stderr), float(result.intercept_stderr)
    if np.ptp(radius) == 0:  # a flat line fits exactly; scipy returns NaN for r and the errors (0/0)
        pearson = (0.0, 1.0)
        spearman = (0.0, 1.0)
        slope_err = intercept_err = 0.0
    else:
        pearson = (float(result.rvalue), float(result.pvalue))
        rho = stats.spearmanr(soc, radius)
        spearman = (float(rho.statistic), float(rho.pvalue))
    return SlopeFit(
        n_points=int(soc.size),
        slope_A_per_unit_soc=float(result.slope),
        slope_err_A_per_unit_soc=slope_err,
        intercept_A=float(result.intercept),
        intercept_err_A=intercept_err,
        pearson_r=pearson[0], pearson_p=pearson[1], spearman_rho=spearman[0], spearman_p=spearman[1],
        soc_min=float(soc.min()), soc_max=float(soc.max()),
    )


def group_points(compound_ids: Sequence[str], state_of_charge: Sequence[float], channel_radius_A: Sequence[float],
                 usable: Sequence[bool] | None = None) -> dict[str, tuple[list[float], list[float]]]:
    """Per compound (first-appearance order): (SOCs, radii) of the usable points."""
    usable = [True] * len(compound_ids) if usable is None else usable
    groups: dict[str, tuple[list[float], list[float]]] = {}
    for compound, soc, radius, ok in zip(compound_ids, state_of_charge, channel_radius_A, usable):
        socs, radii = groups.setdefault(str(compound), ([], []))
        if ok and radius is not None and soc is not None and math.isfinite(float(radius)):
            socs.append(float(soc))
            radii.append(float(radius))
    return groups


def fit_compounds(groups: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> dict[str, dict[str, Any]]:
    """One fit per compound; a compound that cannot be fitted gets ``{"error": reason, "n_points": n}``."""
    fits: dict[str, dict[str, Any]] = {}
    for compound, (socs, radii) in groups.items():
        try:
            fits[compound] = fit_channel_radius_slope(socs, radii).as_dict()
        except ValueError as exc:
            fits[compound] = {"error": str(exc), "n_points": len(socs)}
    return fits


def rank_by_abs_slope(fits: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Compounds ranked by |slope| ascending (most stable channel first; ties by the smaller error, then
    by id); compounds without a fit come last with ``rank`` None and their reason."""
    fitted = [c for c, f in fits.items() if f.get("slope_A_per_unit_soc") is not None]
    fitted.sort(key=lambda c: (abs(fits[c]["slope_A_per_unit_soc"]), fits[c].get("slope_err_A_per_unit_soc") or 0.0, c))
    ranking = [
        {"rank": i + 1, "compound": c, "slope_A_per_unit_soc": fits[c]["slope_A_per_unit_soc"],
         "slope_err_A_per_unit_soc": fits[c]["slope_err_A_per_unit_soc"],
         "abs_slope_A_per_unit_soc": abs(fits[c]["slope_A_per_unit_soc"]), "n_points": fits[c]["n_points"]}
        for i, c in enumerate(fitted)
    ]
    ranking += [{"rank": None, "compound": c, "reason": f.get("error"), "n_points": f.get("n_points", 0)}
                for c, f in fits.items() if c not in fitted]
    return ranking


def compound_label(formula: str, compound_id: str) -> str:
    """Panel title: the formula, and the compound id when it says something more (e.g. an MP id)."""
    return formula if formula == compound_id else f"{formula} ({compound_id})"


def plot_channel_radius_vs_soc(
    groups: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    fits: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    labels: Mapping[str, str] | None = None,
    max_panels: int = 12,
) -> Path:
    """Seed 004 Fig. 4: one panel per compound (ranked order of ``fits``' keys, at most ``max_panels``),
    channel radius (Å) of every relaxed configuration vs SOC, the fitted line and slope ± error in the legend."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    path = Path(path)
    compounds = list(groups)[:max_panels] or ["(none)"]
    n_cols = min(3, len(compounds))
    n_rows = math.ceil(len(compounds) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.6 * n_cols, 3.8 * n_rows), squeeze=False,
                             constrained_layout=True)
    for ax in axes.flat[len(compounds):]:
        ax.set_visible(False)
    for ax, compound in zip(axes.flat, compounds):
        socs, radii = groups.get(compound, ([], []))
        ax.scatter(socs, radii, s=22, color="#3b75af", alpha=0.8, label="relaxed configurations")
        fit = fits.get(compound, {})
        if fit.get("slope_A_per_unit_soc") is not None:
            xs = np.linspace(0.0, 1.0, 50)
            label = f"slope = {fit['slope_A_per_unit_soc']:.2f} ± {fit['slope_err_A_per_unit_soc']:.2f} Å/unit SOC"
            ax.plot(xs, fit["intercept_A"] + fit["slope_A_per_unit_soc"] * xs, color="#c0392b", label=label)
        else:
            ax.text(0.5, 0.5, f"no fit: {fit.get('error', 'no points')}", transform=ax.transAxes, ha="center",
                    va="center", fontsize=8, wrap=True)
        ax.set_title((labels or {}).get(compound, compound))
        ax.set_xlabel("state of charge (Li left / Li fully lithiated)")
        ax.set_ylabel("Li channel radius (Å)")
        ax.set_xlim(-0.05, 1.05)
        ax.legend(fontsize=8, loc="best")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
