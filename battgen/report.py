"""Tables and figures people look at: the discovery funnel and the E_hull distribution."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], float_format: str = "{:.3f}") -> str:
    """A fixed-width text table of ``rows`` restricted to ``columns``."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return float_format.format(value)
        return "-" if value is None else str(value)

    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(r[i]) for r in cells]) for i, column in enumerate(columns)]
    line = "  ".join(column.ljust(width) for column, width in zip(columns, widths))
    body = ["  ".join(value.ljust(width) for value, width in zip(r, widths)) for r in cells]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def write_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], path: str | Path) -> Path:
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_discovery_summary(
    funnel: Mapping[str, int],
    e_above_hull_eV_per_atom: Sequence[float],
    threshold_eV_per_atom: float | None,
    path: str | Path,
    title: str = "aiida-battgen discovery",
) -> Path:
    """Two panels: funnel (rows left after each step) and the E_hull histogram of relaxed candidates."""
    path = Path(path)
    fig, (ax_funnel, ax_hull) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    stages = list(funnel)
    counts = [funnel[s] for s in stages]
    bars = ax_funnel.barh(range(len(stages)), counts, color="#3b75af")
    ax_funnel.set_yticks(range(len(stages)), stages)
    ax_funnel.invert_yaxis()
    ax_funnel.set_xlabel("structures")
    ax_funnel.set_title("Discovery funnel")
    for bar, count in zip(bars, counts):
        ax_funnel.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {count}", va="center")

    values = [v for v in e_above_hull_eV_per_atom if v is not None]
    if values:
        ax_hull.hist(values, bins=min(30, max(5, len(values) // 2)), color="#d08c3a", edgecolor="black")
    if threshold_eV_per_atom is not None:
        ax_hull.axvline(threshold_eV_per_atom, color="black", linestyle="--",
                        label=f"shortlist cut {threshold_eV_per_atom} eV/atom")
        ax_hull.legend()
    ax_hull.set_xlabel("E above hull (eV/atom)")
    ax_hull.set_ylabel("relaxed candidates")
    ax_hull.set_title("Stability of relaxed candidates")
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
