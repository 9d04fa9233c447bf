"""The campaign report from plain data: CSV tables, the seed papers' figures and a one-page HTML summary.

* ``funnel.csv`` / ``rounds.csv`` / ``candidates.csv`` (units in the column names);
* ``funnel.png``: structures left after each step, per round;
* ``property_distributions.png``: E_hull (eV/atom) and energy (eV/atom) of the relaxed rows per generator
  (seed 000 Fig. 7/8 style);
* ``voltage_vs_capacity.png``: insertion voltage (V) vs gravimetric capacity (mAh/g) of the shortlist (seed
  002 Fig. 6a), when the battery stage ran;
* ``loop.png``: hit rate (survivors per 1,000 samples) and new survivors per round;
* ``report.html``: one page with the tables and figures.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from battgen.campaign.summary import CANDIDATE_COLUMNS, ROUND_COLUMNS
from battgen.report import write_csv


def _figure(path: Path, formats: Sequence[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, formats: Sequence[str]) -> list[Path]:
    import matplotlib.pyplot as plt

    written = []
    for fmt in [f for f in formats if f in ("png", "svg")] or ["png"]:
        target = path.with_suffix(f".{fmt}")
        fig.savefig(target, dpi=120, bbox_inches="tight")
        written.append(target)
    plt.close(fig)
    return written


def plot_funnel(funnels: Mapping[str, Mapping[str, int]], path: Path, formats=("png",)) -> list[Path]:
    plt = _figure(path, formats)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, counts in funnels.items():
        stages = [s for s in counts if s != "relaxed_converged"]
        ax.plot(range(len(stages)), [max(counts[s], 0.8) for s in stages], marker="o", label=label)
        ax.set_xticks(range(len(stages)), stages, rotation=35, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("structures left")
    ax.set_title("Campaign funnel")
    ax.legend(fontsize=8)
    return _save(fig, path, formats)


def plot_property_distributions(rows_by_generator: Mapping[str, Sequence[Mapping[str, Any]]], path: Path,
                                formats=("png",)) -> list[Path]:
    plt = _figure(path, formats)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for column, ax, unit in (("e_above_hull_eV_per_atom", axes[0], "E_hull (eV/atom)"),
                             ("energy_per_atom_eV", axes[1], "MLIP energy (eV/atom)")):
        for generator, rows in sorted(rows_by_generator.items()):
            values = [r.get(column) for r in rows if isinstance(r.get(column), int | float)]
            if values:
                ax.hist(values, bins=min(30, max(5, len(values))), alpha=0.5, label=f"{generator} ({len(values)})")
        ax.set_xlabel(unit)
        ax.set_ylabel("relaxed structures")
        ax.legend(fontsize=8)
    fig.suptitle("Property distributions per generator (seed 000 Fig. 7/8)")
    return _save(fig, path, formats)


def plot_voltage_capacity(candidates: Sequence[Mapping[str, Any]], path: Path, formats=("png",)) -> list[Path]:
    points = [(c["gravimetric_capacity_mAh_per_g"], c["insertion_voltage_V"], c.get("reduced_formula"))
              for c in candidates if c.get("gravimetric_capacity_mAh_per_g") is not None
              and c.get("insertion_voltage_V") is not None]
    if not points:
        return []
    plt = _figure(path, formats)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    for x, y, label in points:
        ax.annotate(label, (x, y), fontsize=7)
    ax.set_xlabel("gravimetric capacity (mAh/g)")
    ax.set_ylabel("insertion voltage (V)")
    ax.set_title("Voltage vs capacity (seed 002 Fig. 6a)")
    return _save(fig, path, formats)


def plot_loop(rounds: Sequence[Mapping[str, Any]], path: Path, formats=("png",)) -> list[Path]:
    plt = _figure(path, formats)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    index = [r["round"] for r in rounds]
    ax.bar(index, [r["new_survivors"] for r in rounds], color="tab:green", alpha=0.6, label="new survivors")
    ax.set_xlabel("round")
    ax.set_ylabel("new survivors")
    twin = ax.twinx()
    twin.plot(index, [r["hit_rate_per_1000"] or 0 for r in rounds], marker="o", color="tab:blue",
              label="hit rate per 1,000")
    twin.set_ylabel("survivors per 1,000 samples")
    ax.set_xticks(index)
    ax.set_title("Closed loop")
    return _save(fig, path, formats)


def _html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else html.escape("" if value is None else str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(summary: Mapping[str, Any], output_dir: str | Path,
                 relaxed_by_generator: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                 formats: Sequence[str] = ("csv", "png", "html"), title: str = "") -> dict[str, list[Path]]:
    """Write the tables, figures and HTML page of a campaign summary; returns what was written by kind."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {"tables": [], "figures": [], "html": []}
    funnel_rows = [{"round": label, **counts} for label, counts in summary.get("funnels", {}).items()]
    stages = sorted({k for r in funnel_rows for k in r if k != "round"},
                    key=lambda s: [k for r in funnel_rows for k in r].index(s))
    candidates = summary.get("candidates", [])
    rounds = summary.get("rounds", [])
    written["tables"] += [write_csv(funnel_rows, ("round", *stages), output / "funnel.csv"),
                          write_csv(rounds, ROUND_COLUMNS, output / "rounds.csv"),
                          write_csv(candidates, CANDIDATE_COLUMNS, output / "candidates.csv")]
    figure_formats = [f for f in formats if f in ("png", "svg")] or ["png"]
    if summary.get("funnels"):
        written["figures"] += plot_funnel(summary["funnels"], output / "funnel", figure_formats)
    if relaxed_by_generator:
        written["figures"] += plot_property_distributions(relaxed_by_generator, output / "property_distributions",
                                                          figure_formats)
    written["figures"] += plot_voltage_capacity(candidates, output / "voltage_vs_capacity", figure_formats)
    if rounds:
        written["figures"] += plot_loop(rounds, output / "loop", figure_formats)
    if "html" in formats:
        images = "".join(f'<p><img src="{p.name}" style="max-width:100%"></p>' for p in written["figures"]
                         if p.suffix == ".png")
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title or 'campaign')}</title>"
                "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
                "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
                f"<h1>{html.escape(title or str(summary.get('name', 'campaign')))}</h1>"
                f"<p>Stages: {html.escape(' → '.join(summary.get('stages') or []))}; shortlist group "
                f"<code>{html.escape(str(summary.get('shortlist_group')))}</code>; totals "
                f"{html.escape(str(summary.get('totals')))}</p>"
                f"<h2>Funnel</h2>{_html_table(funnel_rows, ('round', *stages))}"
                f"<h2>Rounds</h2>{_html_table(rounds, ROUND_COLUMNS)}"
                f"<h2>Candidates</h2>{_html_table(candidates, CANDIDATE_COLUMNS)}"
                f"<h2>Figures</h2>{images}</body></html>")
        target = output / "report.html"
        target.write_text(page, encoding="utf-8")
        written["html"].append(target)
    return written
