"""``battgen.cathode_screen_figure``: seed 002 Fig. 6a — predicted voltage vs volumetric capacity, marker
size by the MD conductivity, thresholds drawn."""

from __future__ import annotations

import tempfile
from pathlib import Path

from aiida import orm
from aiida.engine import calcfunction

from aiida_battgen.data.batch import StructureBatchData


@calcfunction
def cathode_screen_figure(screened: StructureBatchData, parameters: orm.Dict):
    """PNG of every screened row (voltage in V vs volumetric capacity in Ah/L), conductivity (mS/cm) as marker
    size where MD was run; ``parameters`` holds the thresholds (min_voltage_V, min_volumetric_capacity_Ah_per_L,
    min_conductivity_mS_per_cm) and working_ion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = parameters.get_dict()
    batch = screened.get_batch()
    voltage = [m.get("predicted_average_voltage_V") for m in batch.meta]
    capacity = [m.get("volumetric_capacity_Ah_per_L") for m in batch.meta]
    sigma = [m.get("conductivity_mS_per_cm") for m in batch.meta]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    plain = [(c, v) for c, v, s in zip(capacity, voltage, sigma) if c is not None and v is not None and s is None]
    if plain:
        ax.scatter(*zip(*plain), s=12, c="0.6", label="screened (no MD)")
    with_md = [(c, v, s) for c, v, s in zip(capacity, voltage, sigma) if None not in (c, v, s)]
    if with_md:
        c, v, s = zip(*with_md)
        size = [20 + 180 * min(max(x, 0.0), 1000.0) / 1000.0 for x in s]
        points = ax.scatter(c, v, s=size, c=s, cmap="viridis", edgecolors="k", label="MD: size ∝ σ")
        fig.colorbar(points, ax=ax, label="σ (mS/cm)")
    ax.axhline(settings.get("min_voltage_V", 3.0), ls="--", c="r", lw=1)
    ax.axvline(settings.get("min_volumetric_capacity_Ah_per_L", 800.0), ls="--", c="r", lw=1)
    ax.set_xlabel("volumetric capacity (Ah/L)")
    ax.set_ylabel(f"predicted average voltage vs {settings.get('working_ion', 'Mg')} (V)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "cathode_screen.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return orm.SinglefileData(path)
