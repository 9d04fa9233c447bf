"""``battgen.arrhenius_fit``: activation energy and room-temperature conductivity from D(T) of several MD runs."""

from __future__ import annotations

import tempfile
from pathlib import Path

from aiida import orm
from aiida.engine import ExitCode, calcfunction


@calcfunction
def arrhenius_fit(extrapolate_to_K: orm.Float, **runs: orm.Dict):
    """Fit ln D = ln D0 − Ea / (k_B T) over the runs (each an MdCalculation ``output_parameters`` with
    ``diffusion``: temperature_K, diffusivity_cm2_per_s (± err), n_ions, volume_A3, charge).

    Outputs ``arrhenius`` (Ea in eV ± err, D and σ extrapolated to ``extrapolate_to_K`` in cm²/s and mS/cm ±
    err) and ``figure`` (PNG, ln D vs 1000/T).
    """
    from battgen.md.analysis import arrhenius_fit as fit, plot_arrhenius

    points = [runs[label]["diffusion"] for label in sorted(runs) if "diffusion" in runs[label].get_dict()]
    if len({p["temperature_K"] for p in points}) < 2:
        return ExitCode(340, f"an Arrhenius fit needs runs at two or more temperatures, got {len(points)} analysed")
    errors = [p.get("diffusivity_err_cm2_per_s") for p in points]
    errors = errors if all(e for e in errors) else None
    try:
        result = fit([p["temperature_K"] for p in points], [p["diffusivity_cm2_per_s"] for p in points], errors,
                     n_ions=points[0].get("n_ions"), volume_A3=points[0].get("volume_A3"),
                     charge=points[0].get("charge"), extrapolate_to_K=extrapolate_to_K.value)
    except ValueError as exc:
        return ExitCode(341, f"Arrhenius fit failed: {exc}")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "arrhenius.png"
        plot_arrhenius(result, errors, path)
        figure = orm.SinglefileData(path)
    return {"arrhenius": orm.Dict(result), "figure": figure}
