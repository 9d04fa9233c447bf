"""Candidate insertion sites in the channels of a host, from the Zeo++ Voronoi network.

Voronoi nodes are the points locally farthest from the framework atoms (each is the centre of the
largest empty sphere there). Candidates are nodes whose empty sphere has a radius ≥ ``min_site_radius_A``
and whose centre lies ≥ ``min_distance_A`` from every framework atom; nodes closer than ``merge_tol_A``
are merged (largest sphere kept). Candidates are grouped into **site types** = orbits of the host's space
group, numbered by decreasing sphere radius (``site-1`` is the most open site). Site types are then grouped
by **channel**: two types share a channel when their sites lie in one connected region of the void that a
probe of ``channel_probe_fraction`` × ``min_site_radius_A`` can explore (clearance grid of
:mod:`battgen.channels.grid`); channels are numbered by their widest site (``channel-1`` is the widest).
In trigonal MoVO the heptagonal, hexagonal and triangular channels come out as different channels; in
hollandite the 2×2 tunnel (centre and off-centre sites) is ``channel-1`` and the 1×1 channels another.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from battgen.channels import grid as _grid
from battgen.channels.analysis import framework_of, quiet_native_output, resolve_radii


@dataclass
class SiteType:
    """One symmetry-distinct kind of insertion site; ``frac_coords`` lists every member in the host cell."""

    label: str
    radius_A: float
    channel: str
    min_distance_A: float
    frac_coords: list[list[float]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"label": self.label, "channel": self.channel, "radius_A": self.radius_A,
                "min_distance_A": self.min_distance_A, "multiplicity": len(self.frac_coords),
                "frac_coords": self.frac_coords}


def voronoi_nodes(framework: Structure, radii_A: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(fractional coordinates, sphere radii in Å) of the Zeo++ Voronoi nodes of ``framework``."""
    from pymatgen.io.zeopp import get_voronoi_nodes

    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch), quiet_native_output():
        nodes, _, _ = get_voronoi_nodes(framework, rad_dict=radii_A)
    coords = np.array([site.frac_coords for site in nodes]) % 1.0
    return coords.reshape(-1, 3), np.array(nodes.site_properties.get("voronoi_radius", []), dtype=float)


def _merge(structure: Structure, coords: np.ndarray, radii: np.ndarray, tol_A: float):
    order = np.argsort(-radii)
    kept: list[int] = []
    for index in order:
        if kept:
            distances = structure.lattice.get_all_distances(coords[index], coords[kept])[0]
            if distances.min() < tol_A:
                continue
        kept.append(int(index))
    return coords[kept], radii[kept]


def find_insertion_sites(
    host: Structure,
    *,
    radii: str | dict[str, float] = "crystal",
    mobile_ion: str | None = None,
    min_site_radius_A: float = 0.5,
    min_distance_A: float = 1.6,
    merge_tol_A: float = 0.5,
    symprec: float = 0.1,
    channel_probe_fraction: float = 0.8,
    grid_spacing_A: float = 0.2,
) -> list[SiteType]:
    """Site types in ``host`` (mobile ions removed first if ``mobile_ion``), widest first."""
    framework = framework_of(host, mobile_ion)
    _, radii_A = resolve_radii(framework, radii)
    coords, sphere_radii = voronoi_nodes(framework, radii_A)
    if len(coords) == 0:
        return []
    distances = framework.lattice.get_all_distances(coords, framework.frac_coords).min(axis=1)
    keep = (sphere_radii >= min_site_radius_A) & (distances >= min_distance_A)
    coords, sphere_radii, distances = coords[keep], sphere_radii[keep], distances[keep]
    if len(coords) == 0:
        return []
    coords, sphere_radii = _merge(framework, coords, sphere_radii, merge_tol_A)

    try:
        operations = SpacegroupAnalyzer(framework, symprec=symprec).get_symmetry_operations(cartesian=False)
    except Exception:  # noqa: BLE001 - spglib fails on some cells; then every site is its own type
        operations = []
    orbit_of = [-1] * len(coords)
    orbits: list[list[int]] = []
    for i in range(len(coords)):
        if orbit_of[i] >= 0:
            continue
        images = np.array([op.operate(coords[i]) for op in operations] or [coords[i]]) % 1.0
        members = [j for j in range(len(coords)) if orbit_of[j] < 0 and
                   framework.lattice.get_all_distances(coords[j], images).min() < merge_tol_A]
        for j in members:
            orbit_of[j] = len(orbits)
        orbits.append(members)

    site_types = []
    for members in orbits:
        radius = float(max(sphere_radii[j] for j in members))
        nearest = float(framework.lattice.get_all_distances(coords[members[0]], framework.frac_coords).min())
        site_types.append(SiteType("", radius, "", nearest, [list(map(float, coords[j])) for j in members]))
    site_types.sort(key=lambda t: -t.radius_A)
    for number, site_type in enumerate(site_types, start=1):
        site_type.label = f"site-{number}"
    _assign_channels(framework, radii_A, site_types, channel_probe_fraction * min_site_radius_A, grid_spacing_A)
    return site_types


def _assign_channels(framework: Structure, radii_A: dict[str, float], site_types: list[SiteType],
                     probe_radius_A: float, spacing_A: float) -> None:
    """Group site types whose sites share a void region into channels (``channel-1`` = widest)."""
    clearance = _grid.clearance_grid(framework, radii_A, spacing_A)
    labels = _grid.periodic_labels(clearance >= probe_radius_A)
    shape = np.array(labels.shape)
    regions = []
    offsets = np.array(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij")).reshape(3, -1).T
    for site_type in site_types:
        region = set()
        for coords in site_type.frac_coords:
            # the voxel of largest clearance next to the site (the site is a local clearance maximum)
            around = (np.floor((np.array(coords) % 1.0) * shape).astype(int) + offsets) % shape
            best = around[np.argmax(clearance[around[:, 0], around[:, 1], around[:, 2]])]
            if labels[tuple(best)] > 0:
                region.add(int(labels[tuple(best)]))
        regions.append(region)
    group = list(range(len(site_types)))  # union of site types sharing a region; list order = widest first
    for i in range(len(site_types)):
        for j in range(i):
            if regions[i] & regions[j]:
                old, new = group[i], group[j]
                group = [new if g == old else g for g in group]
    numbers: dict[int, int] = {}
    for site_type, g in zip(site_types, group):
        numbers.setdefault(g, len(numbers) + 1)
        site_type.channel = f"channel-{numbers[g]}"


def choose_sites(structure: Structure, candidates: list[list[float]], n: int) -> list[list[float]]:
    """``n`` of ``candidates`` (fractional), greedily as far from each other as possible (first = first)."""
    if n > len(candidates):
        raise ValueError(f"{n} ions requested but the site type has only {len(candidates)} sites in the cell")
    chosen = [candidates[0]]
    remaining = list(candidates[1:])
    while len(chosen) < n:
        spread = [structure.lattice.get_all_distances(c, chosen).min() for c in remaining]
        chosen.append(remaining.pop(int(np.argmax(spread))))
    return chosen
