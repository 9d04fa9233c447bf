"""Channel analysis of a framework: largest included / free sphere, channel radius, dimensionality, porosity.

Definitions (Zeo++, Willems et al., Microporous Mesoporous Mater. 149, 134 (2012)), all from atoms as hard
spheres of the stated radii:

- ``largest_included_sphere_A`` (Di): diameter of the largest sphere that fits anywhere in the void;
- ``largest_free_sphere_A`` (Df): diameter of the largest sphere that can travel through the whole crystal,
  i.e. along a percolating path; its radius is the bottleneck of the most open channel;
- ``largest_included_sphere_along_free_path_A`` (Dif): largest sphere that fits somewhere on that path;
- ``channel_radius_A`` = Df / 2: the radius of the largest free sphere, i.e. of the narrowest point
  (bottleneck) of the widest percolating channel. This is the "channel radius" R_t of seed 004 (the
  radius of the largest continuous Li⁺ migration channel, which CAVD reports as the bottleneck size of the
  percolating network with the mobile ion removed); use ``mobile_ion=`` to remove the ion first;
- ``channel_dimensionality``: 0–3, of the channels accessible to a probe of ``probe_radius_A`` (default
  0.9 × ``channel_radius_A``: the dimensionality of the widest channel system). With Zeo++ it is read from
  the number of channels found in the cell and in its 2×2×2 supercell (a channel periodic in d directions
  appears 2^(3−d) times in the supercell); the clearance grid is the fallback;
- ``void_fraction``: volume fraction outside every atomic sphere (geometric void, probe radius 0);
- ``packing_fraction``: Σ (4/3) π r³ over atoms / cell volume, with the same radii (spheres may overlap, so
  void + packing need not sum to 1).

Radii (``radii=``): ``"crystal"`` (default) = pymatgen's average Shannon crystal radius of each element
over its oxidation states (O 1.26 Å, Mn 0.88 Å, Li 0.90 Å), the atomic radius where no ionic radius is known —
the same convention as :func:`battgen.generate.conditions.channel_radius_A`; ``"zeopp"`` = Zeo++'s built-in
(CCDC covalent-like) radii; or a dict element → radius in Å.

Engines (same radii, same definitions, agree on Di, Df and dimensionality — tested on known structures and
200 MP-20 structures):

- ``"zeopp"`` (default): pyzeo in-process — Zeo++'s own free-sphere analysis for Di / Df / Dif; the
  dimensionality from the number of Zeo++ channels in the cell and in its 2×2×2 supercell;
- ``"cavd"``: the Voronoi network of CAVD 0.5.9 (its Zeo++ fork exposes nodes and edges) analysed as a
  periodic graph (:mod:`battgen.channels.network`): Di, Df and the dimensionality from one unit-cell
  decomposition. Its Dif is the largest included sphere anywhere in the percolating channel system (≥
  Zeo++'s Dif, which follows the single widest path). CAVD's own CIF entry points
  (``read_from_RemoveMigrantCif``, ``connValListCom``) stop on pymatgen-written CIFs with "Unable to find
  radius for Li_0 in table", so the framework is handed over as CSSR with explicit radii instead.

Void and packing fractions come from a clearance grid (:mod:`battgen.channels.grid`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Element, Structure
from tqdm.auto import tqdm

from battgen.channels import grid as _grid
from battgen.contracts.channels import (  # noqa: F401 - re-exported: the channels file names
    DEFAULT_GRID_SPACING_A, ENGINES, OUTPUT_BATCH, OUTPUT_FIGURE, OUTPUT_TABLE_CSV, OUTPUT_TABLE_JSON, RADII_SETS,
    ChannelSettings,
)

# Default probe for the dimensionality: this fraction of the channel radius, so that the dimensionality is
# that of the widest channel system (narrower side paths are ignored).
DEFAULT_PROBE_FRACTION_OF_CHANNEL_RADIUS = 0.9
UNITS = {
    "largest_included_sphere_A": "Å (diameter)",
    "largest_free_sphere_A": "Å (diameter)",
    "largest_included_sphere_along_free_path_A": "Å (diameter)",
    "channel_radius_A": "Å (radius = largest_free_sphere_A / 2)",
    "channel_dimensionality": "0-3",
    "void_fraction": "volume fraction",
    "packing_fraction": "volume fraction",
    "probe_radius_A": "Å",
    "grid_spacing_A": "Å",
    "seconds": "s",
}


class ChannelAnalysisError(RuntimeError):
    """The void analysis of a structure failed (engine error, empty framework)."""


@dataclass(frozen=True)
class ChannelAnalysis:
    """Result of :func:`analyze_channels`; lengths in Å (diameters unless the name says radius)."""

    largest_included_sphere_A: float
    largest_free_sphere_A: float
    largest_included_sphere_along_free_path_A: float
    channel_radius_A: float
    channel_dimensionality: int
    void_fraction: float
    packing_fraction: float
    probe_radius_A: float
    engine: str
    radii: str
    mobile_ion: str | None = None
    radii_A: dict[str, float] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def quiet_native_output() -> Iterator[None]:
    """Send what C/C++ code (Zeo++, CAVD) writes to file descriptors 1 and 2 to /dev/null."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def crystal_radius_A(symbol: str) -> float:
    element = Element(symbol)
    ionic = float(element.average_ionic_radius or 0.0)
    return ionic if ionic > 0 else float(element.atomic_radius or 1.0)


_ZEOPP_TABLE_READY = False


def zeopp_radius_A(symbol: str) -> float:
    """Zeo++'s default radius (CCDC table: O 1.52, Li 1.82, Ti 2.0 Å)."""
    global _ZEOPP_TABLE_READY
    from pyzeo.extension import initializeRadTable, lookupRadius

    if Element(symbol).Z > 96:  # Zeo++ ends the whole process on an element missing from its table
        raise ValueError(f"no Zeo++ default radius for {symbol}; pass radii as a dict")
    if not _ZEOPP_TABLE_READY:
        initializeRadTable()
        _ZEOPP_TABLE_READY = True
    return float(lookupRadius(symbol.encode()))


def resolve_radii(structure: Structure, radii: str | dict[str, float]) -> tuple[str, dict[str, float]]:
    """(label, element → radius in Å) for every element of ``structure``."""
    symbols = sorted({site.specie.symbol for site in structure})
    if isinstance(radii, dict):
        missing = [s for s in symbols if s not in radii]
        if missing:
            raise ValueError(f"radii given for {sorted(radii)} but not for {missing}")
        return "custom", {s: float(radii[s]) for s in symbols}
    if radii == "crystal":
        return radii, {s: crystal_radius_A(s) for s in symbols}
    if radii == "zeopp":
        return radii, {s: zeopp_radius_A(s) for s in symbols}
    raise ValueError(f"radii must be one of {RADII_SETS} or a dict element -> Å, got {radii!r}")


def framework_of(structure: Structure, mobile_ion: str | None) -> Structure:
    """``structure`` without its mobile ions (the framework they move through); oxidation states dropped."""
    framework = structure.copy()
    framework.remove_oxidation_states()
    if mobile_ion:
        if not Element.is_valid_symbol(mobile_ion):
            raise ValueError(f"mobile_ion {mobile_ion!r} is not an element symbol")
        framework.remove_species([mobile_ion])
    if len(framework) == 0:
        raise ValueError(f"nothing left after removing the mobile ion {mobile_ion}")
    return framework


def _zeopp_spheres(framework: Structure, radii_A: dict[str, float], scratch: Path) -> tuple[float, float, float]:
    """(Di, Df, Dif) in Å from Zeo++'s free-sphere analysis, run in ``scratch``."""
    from pymatgen.io.zeopp import ZeoCssr
    from pyzeo.extension import AtomNetwork

    cssr, rad, res = scratch / "framework.cssr", scratch / "framework.rad", scratch / "framework.res"
    ZeoCssr(framework).write_file(str(cssr))
    rad.write_text("".join(f"{symbol} {radius}\n" for symbol, radius in radii_A.items()))
    network = AtomNetwork.read_from_CSSR(str(cssr), rad_flag=True, rad_file=str(rad))
    network.calculate_free_sphere_parameters(str(res))
    fields = res.read_text().split()[1:4] if res.exists() else []
    if len(fields) != 3:
        raise ChannelAnalysisError(f"Zeo++ wrote no free-sphere parameters for {framework.composition.reduced_formula}")
    return float(fields[0]), float(fields[1]), float(fields[2])


def _zeopp_dimensionality(framework: Structure, radii_A: dict[str, float], probe_radius_A: float,
                          scratch: Path) -> int | None:
    """Dimensionality of the Zeo++ channels for ``probe_radius_A``; None when the count is ambiguous."""
    from pymatgen.io.zeopp import ZeoCssr
    from pyzeo.extension import AtomNetwork

    counts = []
    for size in (1, 2):
        cssr = scratch / f"framework_{size}.cssr"
        ZeoCssr(framework * (size, size, size)).write_file(str(cssr))
        network = AtomNetwork.read_from_CSSR(str(cssr), rad_flag=True, rad_file=str(scratch / "framework.rad"))
        voronoi = network.perform_voronoi_decomposition()[0]
        channels, _ = voronoi.find_channels(probe_radius_A)
        counts.append(len(channels))
    if counts[0] == 0:
        return 0
    copies = counts[1] / counts[0]
    return {1.0: 3, 2.0: 2, 4.0: 1, 8.0: 1}.get(copies)


def analyze_channels(
    structure: Structure,
    *,
    engine: str = "zeopp",
    probe_radius_A: float | None = None,
    mobile_ion: str | None = None,
    radii: str | dict[str, float] = "crystal",
    grid_spacing_A: float = DEFAULT_GRID_SPACING_A,
    scratch_dir: str | Path | None = None,
    quiet: bool = True,
) -> ChannelAnalysis:
    """Void/channel analysis of ``structure`` (see the module docstring for every definition).

    ``mobile_ion`` (e.g. ``"Li"``) is removed first, so the channels are those of the framework the ion
    moves through. ``probe_radius_A`` (Å) sets which space counts as accessible for
    ``channel_dimensionality`` (default 0.9 × channel radius). ``scratch_dir``: where the engine's temporary
    files go (a fresh temporary directory when None). ``channel_radius_A`` = ``largest_free_sphere_A`` / 2.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if probe_radius_A is not None and not (probe_radius_A >= 0 and math.isfinite(probe_radius_A)):
        raise ValueError(f"probe_radius_A must be a finite number ≥ 0, got {probe_radius_A}")
    if not (grid_spacing_A > 0):
        raise ValueError(f"grid_spacing_A must be > 0, got {grid_spacing_A}")
    framework = framework_of(structure, mobile_ion)
    label, radii_A = resolve_radii(framework, radii)

    with contextlib.ExitStack() as stack:
        scratch = Path(scratch_dir) if scratch_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if quiet:
            stack.enter_context(quiet_native_output())
        if engine == "zeopp":
            di, df, dif = _zeopp_spheres(framework, radii_A, scratch)
            probe = DEFAULT_PROBE_FRACTION_OF_CHANNEL_RADIUS * df / 2.0 if probe_radius_A is None else probe_radius_A
            dimensionality = _zeopp_dimensionality(framework, radii_A, probe, scratch) if df > 0 else 0
        else:
            from battgen.channels import network as _network

            void_network = _network.cavd_network(framework, radii_A, scratch)
            di, df, dif = _network.free_sphere_diameters_A(void_network)
            probe = DEFAULT_PROBE_FRACTION_OF_CHANNEL_RADIUS * df / 2.0 if probe_radius_A is None else probe_radius_A
            dimensionality = _network.dimensionality(void_network, probe) if df > 0 else 0

    # only the sign of the clearance is needed for the void fraction: search just beyond the largest atom
    clearance = _grid.clearance_grid(framework, radii_A, grid_spacing_A, max(radii_A.values()) + 0.5)
    if dimensionality is None:  # Zeo++'s channel count was ambiguous: the grid, with full clearances
        full = _grid.clearance_grid(framework, radii_A, grid_spacing_A)
        dimensionality = _grid.accessible_dimensionality(full, probe)
    volume = framework.lattice.volume
    packing = sum(4.0 / 3.0 * math.pi * radii_A[site.specie.symbol] ** 3 for site in framework) / volume
    return ChannelAnalysis(
        largest_included_sphere_A=di,
        largest_free_sphere_A=df,
        largest_included_sphere_along_free_path_A=dif,
        channel_radius_A=df / 2.0,
        channel_dimensionality=int(dimensionality),
        void_fraction=float(np.mean(clearance > 0.0)),
        packing_fraction=float(packing),
        probe_radius_A=float(probe),
        engine=engine,
        radii=label,
        mobile_ion=mobile_ion,
        radii_A=radii_A,
    )


# Columns of the results table, in order (units in :data:`UNITS`).
RESULT_COLUMNS = (
    "row_id", "formula", "largest_included_sphere_A", "largest_free_sphere_A",
    "largest_included_sphere_along_free_path_A", "channel_radius_A", "channel_dimensionality",
    "void_fraction", "packing_fraction", "probe_radius_A", "engine", "radii", "mobile_ion", "error",
)


def analyze_batch(
    structures: Iterable[Structure],
    *,
    progress: bool = True,
    total: int | None = None,
    **settings: Any,
) -> list[ChannelAnalysis | str]:
    """:func:`analyze_channels` on every structure, one scratch directory and one output silencer for all.

    Returns one :class:`ChannelAnalysis` per structure, or the error message (a string) where the analysis
    failed, so one bad cell does not stop a batch of thousands.
    """
    results: list[ChannelAnalysis | str] = []
    if total is None and hasattr(structures, "__len__"):
        total = len(structures)  # type: ignore[arg-type]
    # the progress bar writes to a copy of stderr taken before Zeo++'s output is sent to /dev/null
    with tempfile.TemporaryDirectory() as scratch, os.fdopen(os.dup(2), "w") as progress_stream, \
            quiet_native_output():
        bar = tqdm(structures, total=total, desc=f"channels ({settings.get('engine', 'zeopp')})", unit="struct",
                   disable=not progress, file=progress_stream)
        for structure in bar:
            try:
                results.append(analyze_channels(structure, scratch_dir=scratch, quiet=False, **settings))
            except (ChannelAnalysisError, ValueError, RuntimeError, OSError) as exc:
                results.append(f"{type(exc).__name__}: {exc}")
    return results


def _result_row(row_id: str, structure: Structure, result: ChannelAnalysis | str) -> dict[str, Any]:
    row: dict[str, Any] = {"row_id": row_id, "formula": structure.composition.reduced_formula}
    if isinstance(result, str):
        row["error"] = result
        return row
    data = result.as_dict()
    data.pop("radii_A")
    row.update(data, error=None)
    return row


def plot_channels(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Figure: channel radius histogram by dimensionality, and void fraction against channel radius."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if r.get("error") is None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for dim in range(4):
        radii = [r["channel_radius_A"] for r in good if r["channel_dimensionality"] == dim]
        if radii:
            left.hist(radii, bins=30, alpha=0.6, label=f"{dim}-D ({len(radii)})")
    left.set_xlabel("channel radius = largest free sphere / 2 (Å)")
    left.set_ylabel("structures")
    left.legend(title="channel dimensionality")
    scatter = right.scatter([r["channel_radius_A"] for r in good], [r["void_fraction"] for r in good],
                            c=[r["channel_dimensionality"] for r in good], cmap="viridis", vmin=0, vmax=3, s=12)
    fig.colorbar(scatter, ax=right, label="channel dimensionality")
    right.set_xlabel("channel radius (Å)")
    right.set_ylabel("void fraction")
    fig.suptitle(title or f"Channel analysis of {len(good)} structures (Zeo++)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path




def _read_input(path: Path):
    from battgen.sources.files import read_input_batch

    if not path.exists():
        raise FileNotFoundError(f"input file {path.name} not found in the working directory")
    return read_input_batch(path)


def run_channels_command(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """``battgen channels``: config ``input`` (batch ``.jsonl.gz``, ``.extxyz`` or ``.cif`` in the working
    directory), optional ``mobile_ion``, ``probe_radius_A`` (Å), ``radii`` (``crystal`` / ``zeopp`` /
    element → Å), ``grid_spacing_A``, ``engine`` (``zeopp``).

    Writes ``channels.jsonl.gz`` (the input rows with the result columns), ``channels.csv`` and
    ``channels.json`` (table with units) and ``channels.png``.
    """
    from battgen.batch import BatchFormatError
    from battgen.errors import InvalidInputError
    from battgen.report import write_csv

    if "input" not in config:
        raise InvalidInputError("config needs 'input': the structure file (batch .jsonl.gz, .extxyz, .cif)")
    checked = ChannelSettings.from_config(config)
    settings = {key: getattr(checked, key) for key in ("engine", "probe_radius_A", "mobile_ion", "radii",
                                                       "grid_spacing_A")}
    try:
        batch = _read_input(workdir / str(config["input"]))
    except (BatchFormatError, ValueError, TypeError, FileNotFoundError) as exc:
        raise InvalidInputError(str(exc)) from exc
    if len(batch) == 0:
        raise InvalidInputError(f"input {config['input']} holds no structures")

    started = time.perf_counter()
    results = analyze_batch([s for _, s in batch], progress=checked.progress, **settings)
    seconds = time.perf_counter() - started
    rows = [_result_row(meta["row_id"], structure, result) for (meta, structure), result in zip(batch, results)]

    columns = {key: [row.get(key) for row in rows] for key in RESULT_COLUMNS if key not in ("row_id", "formula")}
    columns["channel_error"] = columns.pop("error")
    for key in ("engine", "radii", "mobile_ion", "probe_radius_A"):
        columns[f"channel_{key}" if not key.startswith("channel") else key] = columns.pop(key)
    batch.with_columns(**columns).write(workdir / OUTPUT_BATCH)
    write_csv(rows, RESULT_COLUMNS, workdir / OUTPUT_TABLE_CSV)
    (workdir / OUTPUT_TABLE_JSON).write_text(
        json.dumps({"units": UNITS, "settings": settings, "rows": rows}, indent=1), encoding="utf-8")
    plot_channels(rows, workdir / OUTPUT_FIGURE)

    n_failed = sum(isinstance(r, str) for r in results)
    return {
        "output": OUTPUT_BATCH,
        "table_csv": OUTPUT_TABLE_CSV,
        "table_json": OUTPUT_TABLE_JSON,
        "figure": OUTPUT_FIGURE,
        "n_input": len(batch),
        "n_analysed": len(batch) - n_failed,
        "n_failed": n_failed,
        "seconds": round(seconds, 3),
        "structures_per_s": round(len(batch) / seconds, 3) if seconds > 0 else None,
        "settings": settings,
        "units": UNITS,
    }
