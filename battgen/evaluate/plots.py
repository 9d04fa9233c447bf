"""Figures of the generation metrics: property distributions per generator (seed 000 Fig. 7 style) and
achieved vs target values of conditional runs (seed 004 Fig. 5B style)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import gaussian_kde  # noqa: E402

PROPERTY_LABELS = {
    "density_g_per_cm3": "density (g/cm³)",
    "num_elements": "number of elements",
    "formation_energy_per_atom_eV": "formation energy (eV/atom)",
    "band_gap_eV": "band gap (eV)",
    "e_above_hull_eV_per_atom": "E above hull (eV/atom)",
    "gravimetric_capacity_mAh_per_g": "gravimetric capacity (mAh/g)",
    "channel_radius_A": "channel radius (Å)",
}
REFERENCE_LABEL = "reference"


def _label(key: str) -> str:
    return PROPERTY_LABELS.get(key, key.replace("_", " "))


def _finite(values: Sequence[Any]) -> np.ndarray:
    array = np.array([v for v in values if v is not None], dtype=float)
    return array[np.isfinite(array)]


def plot_property_distributions(
    distributions: Mapping[str, Mapping[str, Sequence[float]]],
    reference: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str = "Property distributions of valid generated structures",
) -> Path:
    """One panel per property: step histograms (probability density) of each generator and the reference,
    plus a Gaussian KDE line for continuous properties; the number of elements gets integer bins."""
    path = Path(path)
    properties = [key for key in reference if len(_finite(reference[key]))
                  or any(len(_finite(d.get(key, []))) for d in distributions.values())]
    fig, axes = plt.subplots(1, max(1, len(properties)), figsize=(4.6 * max(1, len(properties)), 3.8),
                             constrained_layout=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], properties):
        series = [(REFERENCE_LABEL, _finite(reference.get(key, [])), "black")]
        series += [(name, _finite(values.get(key, [])), colours[i % len(colours)])
                   for i, (name, values) in enumerate(distributions.items())]
        pooled = np.concatenate([values for _, values, _ in series if len(values)] or [np.zeros(1)])
        discrete = key == "num_elements"
        if discrete:
            bins = np.arange(pooled.min() - 0.5, pooled.max() + 1.5)
            ax.set_xticks(np.arange(pooled.min(), pooled.max() + 1))
        else:
            low, high = float(pooled.min()), float(pooled.max())
            bins = np.linspace(low, high if high > low else low + 1.0, 31)
        for name, values, colour in series:
            if not len(values):
                continue
            ax.hist(values, bins=bins, density=True, histtype="step", linewidth=1.6 if name == REFERENCE_LABEL else 1.2,
                    color=colour, label=f"{name} (n={len(values)})")
            if not discrete and len(values) > 2 and np.ptp(values) > 0:
                grid = np.linspace(bins[0], bins[-1], 200)
                ax.plot(grid, gaussian_kde(values)(grid), color=colour, linestyle="--", linewidth=0.9)
        ax.set_xlabel(_label(key))
        ax.set_ylabel("probability density")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_target_agreement(agreement: Mapping[str, Mapping[str, Any]], path: str | Path, max_targets: int = 6) -> Path:
    """One panel per condition: histograms of achieved values for each distinct target (dashed line: the
    target, dotted: the median achieved); with more than ``max_targets`` distinct targets, a histogram of
    achieved − target instead."""
    path = Path(path)
    keys = list(agreement)
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(5.0 * max(1, len(keys)), 3.8),
                             constrained_layout=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], keys):
        stats = agreement[key]
        pairs = [(t, a) for t, a in zip(stats["targets"], stats["achieved"]) if a is not None and np.isfinite(a)]
        distinct = sorted({t for t, _ in pairs})
        if not pairs:
            ax.text(0.5, 0.5, "no achieved values known", ha="center", va="center", transform=ax.transAxes)
        elif len(distinct) <= max_targets:
            achieved = np.array([a for _, a in pairs])
            low, high = min(achieved.min(), min(distinct)), max(achieved.max(), max(distinct))
            bins = np.linspace(low, high if high > low else low + 1.0, 31)
            for i, target in enumerate(distinct):
                values = np.array([a for t, a in pairs if t == target])
                colour = colours[i % len(colours)]
                ax.hist(values, bins=bins, histtype="stepfilled", alpha=0.35, color=colour,
                        label=f"target {target:g} (n={len(values)})")
                ax.axvline(target, color=colour, linestyle="--")
                ax.axvline(float(np.median(values)), color=colour, linestyle=":")
            ax.set_xlabel(f"achieved {_label(key)}")
            ax.legend(fontsize=7)
        else:
            differences = np.array([a - t for t, a in pairs])
            ax.hist(differences, bins=30, color=colours[0], alpha=0.7)
            ax.axvline(0.0, color="black", linestyle="--")
            ax.set_xlabel(f"achieved − target, {_label(key)}")
        ax.set_ylabel("structures")
        ax.set_title(f"{key}: median |error| "
                     + ("-" if stats.get("median_abs_error") is None else f"{stats['median_abs_error']:.3g}"))
    fig.suptitle("Conditional generation: achieved vs target")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
