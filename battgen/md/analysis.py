"""Diffusion analysis of MD trajectories: MSD, D, Nernst–Einstein σ, hop counts, Arrhenius fit (seed 002).

* D (cm²/s) from the MSD of the working ion by pymatgen-analysis-diffusion's ``DiffusionAnalyzer``, built
  the way the library expects (``structure`` = first frame, ``displacements`` = unwrapped Cartesian
  displacements from the first frame, shape [site, frame, 3]; ``time_step`` = the sampling interval in fs,
  ``step_skip`` = 1). Its default ``smoothed="max"`` fits MSD from 1 ps lag on; runs too short for that
  (< ~2 ps) fall back to ``smoothed="constant"`` over half the run and are flagged ``short_run``.
* σ (mS/cm) by Nernst–Einstein, seed eq. (3): σ = N e² Z² D / (V k_B T), with Z the formal charge of the
  working ion (Li 1, Mg 2), our :func:`nernst_einstein_conductivity_mS_per_cm`.
* Uncertainty of D: kinisi 2.1 (Bayesian regression of the MSD with its covariance; median and 95 %
  credible interval) when ``uncertainty: kinisi``; ``block`` splits production into ``n_blocks`` and reports
  the standard error of the block D's (cheap, no extra dependency).
* Flags for runs that do not show diffusion: ``too_few_hops`` (fewer than ``min_hops`` hops of working
  ions: a hop is a move of more than ``hop_distance_A`` from where the ion last settled, positions smoothed
  over ``hop_smoothing_fs`` to remove vibrations), ``sublinear_msd`` (log–log slope of MSD vs t below
  ``min_msd_exponent``), ``msd_plateau`` (MSD at the longest lag below ``hop_distance_A``²: no ion left its
  site on average).
* Arrhenius fit of D(T) by pymatgen's ``fit_arrhenius`` (ln D vs 1/T); the errors on Ea and on σ(300 K)
  come from a weighted straight-line fit with the covariance of slope and intercept (weights from D errors
  when given, else the residual scatter); σ extrapolated with our Nernst–Einstein function.

``battgen diffusion`` config keys: ``trajectories`` (list of ``battgen md`` work directories, relative to
the workdir or absolute) and/or ``results`` (list of earlier result dicts, each with ``temperature_K``,
``diffusivity_cm2_per_s``, optional ``diffusivity_err_cm2_per_s``, ``n_ions``, ``volume_A3``, ``charge``);
``working_ion`` (needed for trajectories); ``charge`` (None: formal charge of the ion); ``phase`` (``nvt``);
``skip_time_ps`` (0, production time discarded at the start); ``smoothed`` (``max``); ``uncertainty``
(``kinisi`` | ``block`` | ``none``; default ``kinisi``); ``n_blocks`` (5); ``kinisi_samples`` (1000);
``seed`` (0, kinisi's MCMC); ``hop_distance_A`` (1.5); ``hop_smoothing_fs`` (100); ``min_hops`` (10);
``min_msd_exponent`` (0.7); ``extrapolate_to_K`` (300); ``figures`` (True).
Outputs: ``diffusion_results.json``, ``msd.npz`` (``time_ps_<label>``, ``msd_A2_<species>_<label>``),
``msd.png``, ``arrhenius.png`` (two or more temperatures), ``arrhenius`` block in the summary.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import constants as const

from battgen.checkpoint import atomic_write_json, atomic_write_npz
from battgen.contracts.ions import ion_charge
from battgen.contracts.md import ARRHENIUS_FIGURE_FILENAME as ARRHENIUS_FIGURE
from battgen.contracts.md import MSD_FIGURE_FILENAME as MSD_FIGURE
from battgen.contracts.md import MSD_FILENAME, RESULTS_FILENAME, STATE_FILENAME, SUMMARY_FILENAME, DiffusionSettings
from battgen.md.trajectory import load_frames
K_B_EV_PER_K = const.k / const.e
UNITS = {
    "diffusivity_cm2_per_s": "cm^2/s", "conductivity_mS_per_cm": "mS/cm", "activation_energy_eV": "eV",
    "temperature_K": "K", "time_ps": "ps", "msd_A2": "Å^2", "volume_A3": "Å^3",
}
DIFFUSION_DEFAULTS: dict[str, Any] = DiffusionSettings.defaults()


def nernst_einstein_conductivity_mS_per_cm(
    diffusivity_cm2_per_s: float, n_ions: int, volume_A3: float, charge: float, temperature_K: float,
) -> float:
    """σ = N e² Z² D / (V k_B T) (seed 002 eq. 3), D in cm²/s, V in Å³ -> σ in mS/cm."""
    sigma_S_per_m = (
        n_ions * const.e**2 * charge**2 * (diffusivity_cm2_per_s * 1e-4)
        / (volume_A3 * 1e-30 * const.k * temperature_K)
    )
    return float(sigma_S_per_m * 10.0)  # 1 S/m = 10 mS/cm


# --- trajectory -> displacements / MSD ---------------------------------------------------------------
def unwrapped_displacements(positions_A: np.ndarray, cells_A: np.ndarray) -> np.ndarray:
    """Cartesian displacements from the first frame, [atom, frame, 3], robust to wrapped input.

    Frame-to-frame fractional steps are taken to the nearest image (as pymatgen's
    ``DiffusionAnalyzer.from_structures`` does), so frames must be close enough that no atom moves half
    a cell between them.
    """
    positions_A = np.asarray(positions_A, float)
    cells_A = np.asarray(cells_A, float)
    if cells_A.ndim == 2:
        cells_A = np.broadcast_to(cells_A, (len(positions_A), 3, 3))
    frac = np.einsum("fai,fij->faj", positions_A, np.linalg.inv(cells_A))
    steps = np.diff(frac, axis=0)
    steps -= np.round(steps)
    cart_steps = np.einsum("fai,fij->faj", steps, cells_A[1:])
    disp = np.concatenate([np.zeros((1, *positions_A.shape[1:])), np.cumsum(cart_steps, axis=0)])
    return np.transpose(disp, (1, 0, 2))


def windowed_msd_A2(displacements: np.ndarray) -> np.ndarray:
    """MSD(lag) averaged over all time origins and the given atoms: [atom, frame, 3] -> [frame] in Å² (FFT)."""
    x = np.asarray(displacements, float)
    n = x.shape[1]
    if n == 0:
        return np.zeros(0)
    sq = np.sum(x**2, axis=2)  # [atom, frame]
    # Sum_{t} |r(t+lag) - r(t)|^2 = S1(lag) - 2 * autocorrelation(lag)
    padded = np.fft.rfft(x, n=2 * n, axis=1)
    autocorr = np.fft.irfft(padded * np.conj(padded), axis=1)[:, :n, :].sum(axis=2)
    total = 2.0 * sq.sum(axis=1, keepdims=True)
    cumulative = np.cumsum(sq, axis=1)
    s1 = np.empty_like(sq)
    for lag in range(n):  # S1(lag) = sum over t of |r(t)|^2 + |r(t+lag)|^2
        s1[:, lag] = total[:, 0] - (cumulative[:, lag - 1] if lag else 0.0) - (
            cumulative[:, -1] - cumulative[:, n - lag - 1] if lag else 0.0)
    counts = n - np.arange(n)
    msd_per_atom = (s1 - 2.0 * autocorr) / counts
    return msd_per_atom.mean(axis=0)


def count_hops(displacements: np.ndarray, hop_distance_A: float, smoothing_frames: int = 1) -> int:
    """Moves of more than ``hop_distance_A`` from where each ion last settled ([ion, frame, 3] input)."""
    disp = np.asarray(displacements, float)
    if smoothing_frames > 1 and disp.shape[1] >= smoothing_frames:
        kernel = np.ones(smoothing_frames) / smoothing_frames
        disp = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), 1, disp)
    hops = 0
    for trajectory in disp:
        anchor = trajectory[0]
        for point in trajectory[1:]:
            if np.linalg.norm(point - anchor) > hop_distance_A:
                hops += 1
                anchor = point
    return hops


def msd_exponent(time_fs: np.ndarray, msd_A2: np.ndarray) -> float:
    """Slope of log MSD vs log t over the fitted range (1 = diffusive, < 1 sub-diffusive)."""
    keep = (time_fs > 0) & (msd_A2 > 0)
    if keep.sum() < 3:
        return float("nan")
    return float(np.polyfit(np.log(time_fs[keep]), np.log(msd_A2[keep]), 1)[0])


# --- one trajectory ----------------------------------------------------------------------------------
def build_diffusion_analyzer(structure, displacements_A: np.ndarray, ion: str, temperature_K: float,
                             sample_interval_fs: float, smoothed: str | bool = "max"):
    """pymatgen ``DiffusionAnalyzer`` from the first-frame structure and [site, frame, 3] displacements.

    Returns (analyzer, smoothing actually used): ``max`` needs lags beyond 1 ps with enough
    observations; shorter runs use ``constant`` smoothing over half the run.
    """
    from pymatgen.analysis.diffusion.analyzer import DiffusionAnalyzer

    kwargs = dict(specie=ion, temperature=temperature_K, time_step=sample_interval_fs, step_skip=1)
    if smoothed == "max":
        try:
            return DiffusionAnalyzer(structure, displacements_A, smoothed="max", **kwargs), "max"
        except ValueError:  # "Not enough data to calculate diffusivity": run shorter than the 1 ps minimum lag
            pass
    n_frames = displacements_A.shape[1]
    if smoothed in ("max", "constant"):
        return DiffusionAnalyzer(structure, displacements_A, smoothed="constant", avg_nsteps=max(1, n_frames // 2),
                                 **kwargs), "constant"
    return DiffusionAnalyzer(structure, displacements_A, smoothed=False, **kwargs), "none"


def kinisi_diffusivity(frames_atoms: list, ion: str, sample_interval_fs: float, start_dt_fs: float,
                       n_samples: int = 1000, seed: int = 0, max_intervals: int = 100) -> dict[str, float]:
    """D from kinisi's Bayesian MSD regression: median and 95 % credible interval (cm²/s)."""
    import scipp as sc
    from kinisi.analyze import DiffusionAnalyzer as KinisiDiffusionAnalyzer

    n_frames = len(frames_atoms)
    stride = max(1, (n_frames - 1) // max_intervals)
    intervals = np.arange(1, n_frames, stride) * sample_interval_fs
    analyzer = KinisiDiffusionAnalyzer.from_ase(
        frames_atoms, specie=ion, time_step=sc.scalar(float(sample_interval_fs), unit="fs"),
        step_skip=sc.scalar(1, unit=sc.units.dimensionless),
        dt=sc.array(dims=["time interval"], values=intervals, unit="fs"),
        progress=False,
    )
    start = float(min(max(start_dt_fs, intervals[0]), intervals[len(intervals) // 2]))
    analyzer.diffusion(start_dt=sc.scalar(start, unit="fs"), n_samples=n_samples, progress=False,
                       random_state=np.random.RandomState(seed))
    samples = sc.to_unit(analyzer.D, "cm^2/s").values
    low, median, high = np.percentile(samples, [2.5, 50.0, 97.5])
    return {"diffusivity_median_cm2_per_s": float(median), "diffusivity_ci95_low_cm2_per_s": float(low),
            "diffusivity_ci95_high_cm2_per_s": float(high), "kinisi_start_dt_fs": start}


def block_diffusivity_error(displacements_A: np.ndarray, sample_interval_fs: float, n_blocks: int) -> float:
    """Standard error of D (cm²/s) over ``n_blocks`` consecutive blocks (windowed MSD fit in each)."""
    n_frames = displacements_A.shape[1]
    size = n_frames // n_blocks
    if n_blocks < 2 or size < 6:
        return float("nan")
    values = []
    for b in range(n_blocks):
        block = displacements_A[:, b * size:(b + 1) * size]
        block = block - block[:, :1]
        msd = windowed_msd_A2(block)
        lags = np.arange(len(msd)) * sample_interval_fs
        fit = slice(max(1, len(msd) // 5), max(3, len(msd) // 2))  # skip the ballistic start, poor long lags
        slope = np.polyfit(lags[fit], msd[fit], 1)[0]
        values.append(slope / 6.0 * 0.1)  # Å²/fs -> cm²/s is x0.1; 6 = 2d
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def analyze_frames(
    frames: dict[str, np.ndarray], ion: str, temperature_K: float, sample_interval_fs: float, *,
    charge: float | None = None, skip_time_ps: float = 0.0, smoothed: str = "max", uncertainty: str = "block",
    n_blocks: int = 5, kinisi_samples: int = 1000, seed: int = 0, hop_distance_A: float = 1.5,
    hop_smoothing_fs: float = 100.0, min_hops: int = 10, min_msd_exponent: float = 0.7,
) -> dict[str, Any]:
    """Diffusion of ``ion`` in frames as stored by ``battgen md`` (``positions_A``, ``cell_A``, ``numbers``).

    Returns the result dict (D, its error, σ, hops, flags) plus ``_msd`` arrays for ``msd.npz``.
    """
    from ase import Atoms
    from pymatgen.io.ase import AseAtomsAdaptor

    skip = int(round(skip_time_ps * 1000.0 / sample_interval_fs))
    positions = frames["positions_A"][skip:]
    cells = frames["cell_A"][skip:]
    numbers = frames["numbers"]
    if len(positions) < 4:
        raise ValueError(f"only {len(positions)} frames to analyse")
    displacements = unwrapped_displacements(positions, cells)
    first = Atoms(numbers=numbers, positions=positions[0], cell=cells[0], pbc=True)
    structure = AseAtomsAdaptor.get_structure(first)
    ion_indices = [i for i, site in enumerate(structure) if site.specie.symbol == ion]
    if not ion_indices:
        raise ValueError(f"no {ion} in the trajectory")
    analyzer, used = build_diffusion_analyzer(structure, displacements, ion, temperature_K, sample_interval_fs,
                                              smoothed)
    z = float(charge) if charge is not None else float(ion_charge(ion))
    volume = float(np.mean(np.abs(np.linalg.det(cells))))
    diffusivity = float(analyzer.diffusivity)
    result: dict[str, Any] = {
        "working_ion": ion, "charge": z, "temperature_K": float(temperature_K), "n_ions": len(ion_indices),
        "volume_A3": volume, "n_frames": int(len(positions)), "sample_interval_fs": float(sample_interval_fs),
        "time_ps": float((len(positions) - 1) * sample_interval_fs / 1000.0), "smoothing": used,
        "diffusivity_cm2_per_s": diffusivity,
        "diffusivity_fit_std_cm2_per_s": float(analyzer.diffusivity_std_dev),
        "conductivity_mS_per_cm": nernst_einstein_conductivity_mS_per_cm(
            diffusivity, len(ion_indices), volume, z, temperature_K),
        "haven_ratio": float(analyzer.haven_ratio) if np.isfinite(analyzer.haven_ratio) else None,
        "uncertainty_method": uncertainty,
    }
    error = float("nan")
    if uncertainty == "kinisi":
        images = [Atoms(numbers=numbers, positions=p, cell=c, pbc=True) for p, c in zip(positions, cells, strict=True)]
        kinisi = kinisi_diffusivity(images, ion, sample_interval_fs, start_dt_fs=min(1000.0, result["time_ps"] * 200.0),
                                    n_samples=kinisi_samples, seed=seed)
        result.update(kinisi)
        # Half the 95 % interval ~ 1.96 sigma for a Gaussian posterior: a one-sigma error for the Arrhenius fit.
        error = (kinisi["diffusivity_ci95_high_cm2_per_s"] - kinisi["diffusivity_ci95_low_cm2_per_s"]) / (2 * 1.96)
    elif uncertainty == "block":
        error = block_diffusivity_error(displacements[ion_indices], sample_interval_fs, n_blocks)
    result["diffusivity_err_cm2_per_s"] = None if not math.isfinite(error) else error

    smoothing_frames = max(1, int(round(hop_smoothing_fs / sample_interval_fs)))
    hops = count_hops(displacements[ion_indices], hop_distance_A, smoothing_frames)
    exponent = msd_exponent(np.asarray(analyzer.dt, float), np.asarray(analyzer.msd, float))
    # The windowed MSD over every lag (all species) for msd.npz and the figure.
    time_ps = np.arange(len(positions)) * sample_interval_fs / 1000.0
    species_msd = {}
    for z_number in sorted(set(numbers.tolist())):
        symbol = first[[i for i, n in enumerate(numbers) if n == z_number][0]].symbol
        species_msd[symbol] = windowed_msd_A2(displacements[numbers == z_number])
    flags = []
    if hops < min_hops:
        flags.append("too_few_hops")
    if math.isfinite(exponent) and exponent < min_msd_exponent:
        flags.append("sublinear_msd")
    half = len(time_ps) // 2  # the longest lag averaged over at least half the run
    if species_msd[ion][half] < hop_distance_A**2:
        flags.append("msd_plateau")
    if used != "max":
        flags.append("short_run")
    result.update(n_hops=hops, hops_per_ion=hops / len(ion_indices), msd_exponent=exponent, flags=flags,
                  diffusive=not ({"too_few_hops", "sublinear_msd", "msd_plateau"} & set(flags)))
    result["_msd"] = {"time_ps": time_ps, **{f"msd_A2_{s}": v for s, v in species_msd.items()}}
    return result


# --- Arrhenius ---------------------------------------------------------------------------------------
def arrhenius_fit(
    temperatures_K: list[float], diffusivities_cm2_per_s: list[float],
    diffusivity_errors_cm2_per_s: list[float] | None = None, *, n_ions: int | None = None,
    volume_A3: float | None = None, charge: float | None = None, extrapolate_to_K: float = 300.0,
) -> dict[str, Any]:
    """Ea (eV) ± error and D, σ extrapolated to ``extrapolate_to_K`` ± error.

    Central Ea and prefactor from pymatgen's ``fit_arrhenius`` (ln D vs 1/T). Errors: a straight-line fit
    of ln D vs 1/T with the covariance of slope and intercept — weighted by σ(ln D) = σ_D / D when D errors
    are given (absolute, ``cov='unscaled'``), otherwise scaled by the residual scatter (needs ≥ 3 points).
    σ needs the ions per volume (``n_ions``, ``volume_A3``) and ``charge``.
    """
    from pymatgen.analysis.diffusion.analyzer import fit_arrhenius

    temps = np.asarray(temperatures_K, float)
    diffs = np.asarray(diffusivities_cm2_per_s, float)
    if len(temps) < 2 or np.any(diffs <= 0):
        raise ValueError("an Arrhenius fit needs >= 2 temperatures with positive D")
    ea, prefactor, ea_std_pymatgen = fit_arrhenius(temps, diffs, mode="linear")
    x = 1.0 / temps
    y = np.log(diffs)
    cov = None
    if diffusivity_errors_cm2_per_s is not None and all(e is not None and e > 0 for e in diffusivity_errors_cm2_per_s):
        sigma_y = np.asarray(diffusivity_errors_cm2_per_s, float) / diffs
        (slope, intercept), cov = np.polyfit(x, y, 1, w=1.0 / sigma_y, cov="unscaled")
        error_source = "diffusivity_errors"
    elif len(temps) >= 3:
        (slope, intercept), cov = np.polyfit(x, y, 1, cov=True)
        error_source = "residual_scatter"
    else:
        slope, intercept = np.polyfit(x, y, 1)
        error_source = "none"
    result: dict[str, Any] = {
        "temperatures_K": temps.tolist(), "diffusivities_cm2_per_s": diffs.tolist(),
        "activation_energy_eV": float(ea), "prefactor_cm2_per_s": float(prefactor),
        "activation_energy_err_eV": None, "pymatgen_activation_energy_std_eV": ea_std_pymatgen,
        "error_source": error_source, "weighted_fit_activation_energy_eV": float(-slope * K_B_EV_PER_K),
        "extrapolate_to_K": float(extrapolate_to_K),
    }
    d_new = float(prefactor * np.exp(-ea / (K_B_EV_PER_K * extrapolate_to_K)))
    result["extrapolated_diffusivity_cm2_per_s"] = d_new
    rel_err = None
    if cov is not None:
        result["activation_energy_err_eV"] = float(math.sqrt(cov[0, 0]) * K_B_EV_PER_K)
        inv_t = 1.0 / extrapolate_to_K
        var_ln_d = cov[0, 0] * inv_t**2 + cov[1, 1] + 2 * cov[0, 1] * inv_t
        rel_err = math.sqrt(max(var_ln_d, 0.0))
        result["extrapolated_diffusivity_err_cm2_per_s"] = d_new * rel_err
    if n_ions and volume_A3 and charge:
        sigma = nernst_einstein_conductivity_mS_per_cm(d_new, n_ions, volume_A3, charge, extrapolate_to_K)
        result["extrapolated_conductivity_mS_per_cm"] = sigma
        # Delta method on ln σ (= ln D + const): the same relative error as D.
        result["extrapolated_conductivity_err_mS_per_cm"] = sigma * rel_err if rel_err is not None else None
    return result


# --- figures -----------------------------------------------------------------------------------------
def plot_msd(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for result in results:
        msd = result["_msd"]
        ion = result["working_ion"]
        ax.plot(msd["time_ps"], msd[f"msd_A2_{ion}"], label=f"{ion} {result['temperature_K']:g} K")
    ax.set_xlabel("time lag (ps)")
    ax.set_ylabel("MSD (Å$^2$)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_arrhenius(fit: dict[str, Any], errors: list[float] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pymatgen.analysis.diffusion.analyzer import get_arrhenius_plot

    errs = None if errors is None or any(e is None for e in errors) else np.asarray(errors, float)
    ax = get_arrhenius_plot(np.asarray(fit["temperatures_K"]), np.asarray(fit["diffusivities_cm2_per_s"]),
                            diffusivity_errors=errs, unit="eV")
    ax.figure.savefig(path, dpi=100)
    plt.close(ax.figure)


# --- files and command -------------------------------------------------------------------------------
def write_msd_file(path: Path, frames: dict[str, np.ndarray], sample_interval_fs: float | None = None) -> None:
    """``msd.npz`` of a ``battgen md`` phase: windowed MSD (Å²) per species vs lag time (ps)."""
    positions, cells, numbers = frames["positions_A"], frames["cell_A"], frames["numbers"]
    if sample_interval_fs is None:
        sample_interval_fs = float(frames["phase_time_fs"][1] - frames["phase_time_fs"][0])
    displacements = unwrapped_displacements(positions, cells)
    from ase.data import chemical_symbols

    arrays = {"time_ps": np.arange(len(positions)) * sample_interval_fs / 1000.0}
    for z in sorted(set(numbers.tolist())):
        arrays[f"msd_A2_{chemical_symbols[z]}"] = windowed_msd_A2(displacements[numbers == z])
    atomic_write_npz(path, **arrays)


def validate_diffusion_config(config: dict[str, Any]) -> dict[str, Any]:
    """Config with defaults filled in (:class:`~battgen.contracts.md.DiffusionSettings`)."""
    return DiffusionSettings.settings_dict(config)


def run_diffusion_command(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """``battgen diffusion``: analyse ``battgen md`` runs and/or fit Arrhenius over several temperatures."""
    from battgen.errors import InvalidInputError

    settings = validate_diffusion_config(config)
    workdir = Path(workdir)
    analysed = []
    for entry in settings["trajectories"]:
        run_dir = Path(entry) if Path(entry).is_absolute() else workdir / entry
        if not (run_dir / STATE_FILENAME).exists() or not (run_dir / SUMMARY_FILENAME).exists():
            raise InvalidInputError(f"{entry} is not a battgen md work directory (no {STATE_FILENAME})")
        md_summary = json.loads((run_dir / SUMMARY_FILENAME).read_text(encoding="utf-8"))
        frames = load_frames(run_dir, phase=settings["phase"])
        if len(frames.get("step", [])) < 4:
            raise InvalidInputError(f"{entry} has fewer than 4 {settings['phase']} frames")
        try:
            result = analyze_frames(
                frames, settings["working_ion"], md_summary["temperature_K"], md_summary["sample_interval_fs"],
                charge=settings["charge"], skip_time_ps=settings["skip_time_ps"], smoothed=settings["smoothed"],
                uncertainty=settings["uncertainty"], n_blocks=settings["n_blocks"],
                kinisi_samples=settings["kinisi_samples"], seed=settings["seed"],
                hop_distance_A=settings["hop_distance_A"], hop_smoothing_fs=settings["hop_smoothing_fs"],
                min_hops=settings["min_hops"], min_msd_exponent=settings["min_msd_exponent"],
            )
        except ValueError as exc:
            raise InvalidInputError(f"{entry}: {exc}") from exc
        result["source"] = str(entry)
        result["md_status"] = md_summary.get("status")
        analysed.append(result)

    files: dict[str, str] = {"results": RESULTS_FILENAME}
    if analysed:
        arrays = {}
        for result in analysed:
            label = f"{result['temperature_K']:g}K"
            for key, value in result["_msd"].items():
                arrays[f"{key}_{label}"] = value
        np.savez(workdir / MSD_FILENAME, **arrays)
        files["msd"] = MSD_FILENAME
        if settings["figures"]:
            plot_msd(analysed, workdir / MSD_FIGURE)
            files["msd_figure"] = MSD_FIGURE

    points = [{k: v for k, v in r.items() if k != "_msd"} for r in analysed] + list(settings["results"])
    arrhenius = None
    if len({p["temperature_K"] for p in points}) >= 2:
        reference = points[0]
        charge = settings["charge"] or reference.get("charge") or (
            ion_charge(settings["working_ion"]) if settings["working_ion"] else None)
        errors = [p.get("diffusivity_err_cm2_per_s") for p in points]
        try:
            arrhenius = arrhenius_fit(
                [p["temperature_K"] for p in points], [p["diffusivity_cm2_per_s"] for p in points],
                errors if all(e for e in errors) else None, n_ions=reference.get("n_ions"),
                volume_A3=reference.get("volume_A3"), charge=charge, extrapolate_to_K=settings["extrapolate_to_K"],
            )
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc
        if settings["figures"]:
            plot_arrhenius(arrhenius, errors if all(e for e in errors) else None, workdir / ARRHENIUS_FIGURE)
            files["arrhenius_figure"] = ARRHENIUS_FIGURE
    output = {"runs": points, "arrhenius": arrhenius, "units": UNITS}
    atomic_write_json(workdir / RESULTS_FILENAME, output, default=float)
    return {"files": files, **output}
