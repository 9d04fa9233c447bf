"""Channel-analysis throughput on 1,000 real structures (MP-20 subset CIFs from the shared data).

Ours: :func:`battgen.channels.analysis.analyze_batch` — pyzeo in-process, one scratch directory and one
output silencer for the whole batch; per structure Di / Df / Dif, channel radius, channel dimensionality
(Zeo++ channels in the cell and its 2×2×2 supercell) and void / packing fractions (clearance grid).
Baseline, same run and same radii: ``pymatgen.io.zeopp.get_free_sphere_params`` per structure (its
``ScratchDir`` file round trip, run from an empty directory so nothing extra is copied), which gives only
Di / Df / Dif. For a like-for-like number the free-sphere part of ours is also timed alone
(``spheres_per_s``), and Df of ours and of the baseline are compared on every structure (``identical``).

The CAVD engine (same outputs from CAVD's Voronoi network) is timed too (``cavd_per_s``).

Usage: ``python benchmarks/channels.py [--n 1000]``; last line:
``structures=<n> seconds=<ours> per_s=<ours> baseline_per_s=<pymatgen.io.zeopp>
spheres_per_s=<ours, Di/Df/Dif only> cavd_per_s=<engine cavd> identical=<true|false>`` (one line).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from pymatgen.core import Structure

from battgen.channels.analysis import (
    ChannelAnalysis,
    _zeopp_spheres,
    analyze_batch,
    quiet_native_output,
    resolve_radii,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
csv.field_size_limit(sys.maxsize)


def shared_data_dir() -> Path:
    return Path(os.environ.get("BATTGEN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def load_structures(n: int) -> list[Structure]:
    path = shared_data_dir() / "mp20_mini_slices" / "raw_mp20_dataset_mini.csv"
    if not path.exists():
        sys.exit(f"shared data not found at {path} (set BATTGEN_SHARED_DATA)")
    structures = []
    with open(path, newline="", encoding="utf-8") as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in csv.DictReader(handle):
            structure = Structure.from_str(row["cif"], fmt="cif")
            if structure.is_ordered:
                structures.append(structure.remove_oxidation_states())
            if len(structures) == n:
                break
    return structures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    import pymatgen.io.zeopp  # noqa: F401 - imported before any timing (it pulls in pandas)

    structures = load_structures(args.n)
    radii = [resolve_radii(s, "crystal")[1] for s in structures]
    print(f"{len(structures)} MP-20 structures, {min(map(len, structures))}-{max(map(len, structures))} atoms",
          file=sys.stderr, flush=True)

    started = time.perf_counter()
    results = analyze_batch(structures, progress=True)
    seconds = time.perf_counter() - started

    started = time.perf_counter()
    cavd_results = analyze_batch(structures, progress=True, engine="cavd")
    cavd_seconds = time.perf_counter() - started

    started = time.perf_counter()
    spheres = []
    with tempfile.TemporaryDirectory() as scratch, quiet_native_output():
        for structure, radii_A in zip(structures, radii):
            try:
                spheres.append(_zeopp_spheres(structure, radii_A, Path(scratch)))
            except Exception:  # noqa: BLE001 - counted as a failure like in analyze_batch
                spheres.append(None)
    spheres_seconds = time.perf_counter() - started

    from pymatgen.io.zeopp import get_free_sphere_params

    baseline = []
    with tempfile.TemporaryDirectory() as empty, contextlib.chdir(empty), quiet_native_output():
        started = time.perf_counter()
        for structure, radii_A in zip(structures, radii):
            try:
                params = get_free_sphere_params(structure, rad_dict=radii_A)
                baseline.append(params["free_sph_max_dia"] if params else None)
            except Exception:  # noqa: BLE001
                baseline.append(None)
        baseline_seconds = time.perf_counter() - started

    ours_df = [r.largest_free_sphere_A if isinstance(r, ChannelAnalysis) else None for r in results]
    compared = [(a, b) for a, b in zip(ours_df, baseline) if a is not None and b is not None]
    identical = len(compared) == sum(abs(a - b) < 1e-4 for a, b in compared) and len(compared) >= 0.95 * len(structures)
    n = len(structures)
    n_failed = sum(not isinstance(r, ChannelAnalysis) for r in results)
    dims = [r.channel_dimensionality for r in results if isinstance(r, ChannelAnalysis)]
    cavd_agree = sum(isinstance(a, ChannelAnalysis) and isinstance(b, ChannelAnalysis)
                     and abs(a.largest_free_sphere_A - b.largest_free_sphere_A) < 2e-3
                     and a.channel_dimensionality == b.channel_dimensionality for a, b in zip(results, cavd_results))
    print(f"cavd engine: same Df and dimensionality as zeopp on {cavd_agree} of {n}", file=sys.stderr, flush=True)
    print(f"ours: {n - n_failed} analysed, {n_failed} failed; dimensionality counts "
          f"{ {d: dims.count(d) for d in range(4)} }; Df agrees with pymatgen.io.zeopp on {len(compared)} structures",
          file=sys.stderr, flush=True)
    print(f"structures={n} seconds={seconds:.2f} per_s={n / seconds:.1f} baseline_per_s={n / baseline_seconds:.1f} "
          f"spheres_per_s={n / spheres_seconds:.1f} cavd_per_s={n / cavd_seconds:.1f} "
          f"identical={'true' if identical else 'false'}")


if __name__ == "__main__":
    main()
