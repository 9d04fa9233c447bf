"""``battgen.channel_radius_slope``: slope of Li channel radius vs state of charge per compound, its standard
error, the ranking by |slope| and the seed 004 Fig. 4 figure, from a SiAnodeCalculation table."""

from __future__ import annotations

import tempfile
from pathlib import Path

from aiida import orm
from aiida.engine import ExitCode, calcfunction

REQUIRED_ARRAYS = ("compound_ids", "state_of_charge", "channel_radius_A", "used_in_fit")


@calcfunction
def channel_radius_slope(configurations: orm.ArrayData):
    """Ordinary least squares (``scipy.stats.linregress``) of channel_radius_A (Å) on state_of_charge
    (Li left / Li fully lithiated) over the configurations with ``used_in_fit``, one line per compound.

    Outputs ``slopes`` (``fits``, one entry per compound: slope_A_per_unit_soc and slope_err_A_per_unit_soc in
    Å per unit SOC, i.e. Å/100 % SOC, intercept_A, Pearson r / Spearman ρ with p-values, n_points; or ``error``),
    ``ranking`` (compounds by |slope| ascending: the most stable channel first) and ``figure`` (PNG).
    Exit codes: 350 the table lacks a column; 351 no compound has enough points for a slope with an error.
    """
    from battgen.anode.slope import (SLOPE_UNITS, compound_label, fit_compounds, group_points,
                                     plot_channel_radius_vs_soc, rank_by_abs_slope)

    names = set(configurations.get_arraynames())
    missing = [name for name in REQUIRED_ARRAYS if name not in names]
    if missing:
        return ExitCode(350, f"the configurations table lacks {missing}")
    compound_ids = [str(c) for c in configurations.get_array("compound_ids")]
    groups = group_points(compound_ids, configurations.get_array("state_of_charge").tolist(),
                          configurations.get_array("channel_radius_A").tolist(),
                          configurations.get_array("used_in_fit").tolist())
    fits = fit_compounds(groups)
    ranking = rank_by_abs_slope(fits)
    if not any(entry["rank"] for entry in ranking):
        reasons = "; ".join(f"{e['compound']}: {e['reason']}" for e in ranking)
        return ExitCode(351, f"no compound could be fitted: {reasons}")
    labels = {}
    if "compound_formulas" in names:  # of the fully lithiated compound, not of each configuration
        labels = {c: compound_label(str(f), c)
                  for c, f in zip(compound_ids, configurations.get_array("compound_formulas"))}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "channel_radius_vs_soc.png"
        plot_channel_radius_vs_soc({e["compound"]: groups[e["compound"]] for e in ranking}, fits, path, labels=labels)
        figure = orm.SinglefileData(path)
    units = {k: v for k, v in SLOPE_UNITS.items() if k.startswith(("slope", "intercept"))}
    return {
        # a list, not a mapping: compound ids may contain characters AiiDA forbids in attribute keys ('.')
        "slopes": orm.Dict({"fits": [{"compound": c, **fit} for c, fit in fits.items()], "units": units}),
        "ranking": orm.Dict({"ranking": ranking, "criterion": "|slope| ascending (smaller = more stable channel)",
                             "units": units}),
        "figure": figure,
    }
