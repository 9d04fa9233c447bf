"""Channel analysis (Zeo++ through pyzeo) on known open-channel structures, checked against hand
calculations on the channel axis, an independent grid percolation estimate and exact packing sums."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from battgen.channels import grid
from battgen.channels.analysis import (
    ChannelAnalysis,
    analyze_batch,
    analyze_channels,
    framework_of,
    resolve_radii,
    run_channels_command,
)
from battgen.channels.reference_structures import hollandite_mno2, olivine_lifepo4, rutile_tio2
from battgen.cli import run_command
from battgen.errors import InvalidInputError

CRYSTAL_RADII = {"O": 1.26, "Ti": 0.8516666666666667, "Mn": 0.8775}  # pymatgen average Shannon crystal radii


def atom_spheres(structure: Structure, radii: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Centres (Å) of every atom in the 5×5×5 neighbouring cells and their radii."""
    shifts = np.array(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij")).reshape(3, -1).T @ structure.lattice.matrix
    centres = (structure.cart_coords[:, None, :] + shifts[None, :, :]).reshape(-1, 3)
    sphere_radii = np.repeat([radii[site.specie.symbol] for site in structure], len(shifts))
    return centres, sphere_radii


def clearance_A(structure: Structure, spheres: tuple[np.ndarray, np.ndarray], frac_points: np.ndarray) -> np.ndarray:
    """Hand calculation: distance from each point to the nearest atom surface, by brute force (no Zeo++)."""
    points = np.atleast_2d(frac_points) @ structure.lattice.matrix
    centres, sphere_radii = spheres
    return (np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=2) - sphere_radii[None, :]).min(axis=1)


def tunnel_bottleneck_A(structure: Structure, radii: dict[str, float], axis_xy: tuple[float, float],
                        n_slices: int = 40, half_width: float = 0.3) -> tuple[float, float]:
    """(bottleneck radius, widest radius) in Å of a tunnel along c. A sphere moving through the tunnel must
    cross every plane z = const, so its radius is at most the largest empty circle of each cross-section
    (grid over the window axis ± ``half_width`` in x and y, refined by Nelder–Mead); the bottleneck is the
    smallest of those over z (exact for a single tunnel). The path may wind off the axis (it does in rutile)."""
    from scipy.optimize import minimize

    centres, sphere_radii = atom_spheres(structure, radii)
    axis_cart = np.array([*axis_xy, 0.0]) @ structure.lattice.matrix
    near = np.linalg.norm((centres - axis_cart)[:, :2], axis=1) < half_width * structure.lattice.a * 1.5 + 4.0
    spheres = (centres[near], sphere_radii[near])
    grid_1d = np.linspace(-half_width, half_width, 25)
    gx, gy = np.meshgrid(grid_1d + axis_xy[0], grid_1d + axis_xy[1], indexing="ij")
    best = []
    for z in np.arange(n_slices + 1) / (2 * n_slices):  # z in [0, 1/2]: both cells have a mirror at z = 0 and 1/2
        points = np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)])
        values = clearance_A(structure, spheres, points)
        slice_best = values.max()
        for index in np.argsort(-values)[:2]:
            result = minimize(lambda xy: -clearance_A(structure, spheres, np.array([[xy[0], xy[1], z]]))[0],
                              x0=points[index][:2], method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-7})
            slice_best = max(slice_best, -result.fun)
        best.append(slice_best)
    return float(min(best)), float(max(best))


def test_reference_structures_have_the_published_geometry():
    hollandite = hollandite_mno2()
    assert hollandite.composition.reduced_formula == "MnO2" and len(hollandite) == 24
    for site in hollandite:
        if site.specie.symbol == "Mn":
            bonds = sorted(n.nn_distance for n in hollandite.get_neighbors(site, 2.3))
            assert len(bonds) == 6 and 1.87 < bonds[0] and bonds[-1] < 1.96  # MnO6, Mn–O 1.88–1.95 Å
    rutile = rutile_tio2()
    bonds = sorted(n.nn_distance for n in rutile.get_neighbors(rutile[0], 2.2))
    assert len(bonds) == 6
    assert bonds[0] == pytest.approx(1.949, abs=0.002) and bonds[-1] == pytest.approx(1.980, abs=0.002)
    olivine = olivine_lifepo4()
    p_site = next(s for s in olivine if s.specie.symbol == "P")
    assert all(1.52 < n.nn_distance < 1.56 for n in olivine.get_neighbors(p_site, 1.8))


@pytest.mark.parametrize(("structure", "axis", "reference_radius"), [
    # hand-calculated bottleneck radius of the tunnel (crystal radii O 1.26, Mn 0.8775, Ti 0.8517 Å):
    # hollandite 2×2 tunnel 1.2305 Å; rutile c-channel 0.4738 Å (the path winds off the axis)
    (hollandite_mno2(), (0.0, 0.0), 1.2305),
    (rutile_tio2(), (0.0, 0.5), 0.4738),
])
def test_channel_radius_matches_the_hand_calculation_of_the_tunnel(structure, axis, reference_radius):
    """The largest free sphere through a single straight tunnel has the radius of the narrowest of the
    largest empty circles of its cross-sections (hand calculation above); Zeo++ must agree within 0.1 Å."""
    bottleneck, widest = tunnel_bottleneck_A(structure, CRYSTAL_RADII, axis)
    assert bottleneck == pytest.approx(reference_radius, abs=2e-3)  # the numbers quoted above
    result = analyze_channels(structure)
    assert result.channel_radius_A == pytest.approx(bottleneck, abs=0.1)
    assert result.channel_radius_A == pytest.approx(bottleneck, abs=0.01)
    assert result.channel_radius_A == result.largest_free_sphere_A / 2
    # the widest spot of the tunnel is the largest included sphere of these frameworks
    assert result.largest_included_sphere_A / 2 == pytest.approx(widest, abs=0.01)
    assert result.channel_dimensionality == 1
    assert result.engine == "zeopp" and result.radii == "crystal"


def test_olivine_li_channel_is_one_dimensional_and_agrees_with_grid_percolation():
    """LiFePO4 with Li removed: 1-D channels along b. Zeo++ Df/2 = 0.618 Å (crystal radii); an independent
    grid percolation (0.08 Å voxels, bisection on the probe radius) must land within 0.1 Å."""
    olivine = olivine_lifepo4()
    result = analyze_channels(olivine, mobile_ion="Li")
    assert result.mobile_ion == "Li" and "Li" not in result.radii_A
    assert result.channel_radius_A == pytest.approx(0.618, abs=0.005)
    assert result.channel_dimensionality == 1
    framework = framework_of(olivine, "Li")
    clearance = grid.clearance_grid(framework, result.radii_A, spacing_A=0.08)
    assert grid.percolation_radius_A(clearance) == pytest.approx(result.channel_radius_A, abs=0.1)
    # with Li left in, the Li ions block the channel: a much smaller free sphere
    assert analyze_channels(olivine).channel_radius_A < result.channel_radius_A - 0.1


@pytest.mark.parametrize(("structure", "mobile_ion"), [
    (hollandite_mno2(), None), (rutile_tio2(), None), (olivine_lifepo4(), "Li"),
])
def test_cavd_engine_agrees_with_zeopp(structure, mobile_ion):
    """Both engines on the same radii: Di and Df to 1e-3 Å, the same dimensionality (CAVD's network as a
    periodic graph vs Zeo++'s free-sphere analysis and channel count); CAVD's Dif is over the whole
    percolating channel system, so it is at least Zeo++'s."""
    zeopp = analyze_channels(structure, mobile_ion=mobile_ion)
    cavd = analyze_channels(structure, mobile_ion=mobile_ion, engine="cavd")
    assert cavd.engine == "cavd"
    assert cavd.largest_included_sphere_A == pytest.approx(zeopp.largest_included_sphere_A, abs=1e-3)
    assert cavd.channel_radius_A == pytest.approx(zeopp.channel_radius_A, abs=1e-3)
    assert cavd.channel_dimensionality == zeopp.channel_dimensionality == 1
    assert cavd.largest_included_sphere_along_free_path_A >= zeopp.largest_included_sphere_along_free_path_A - 1e-3


def test_void_and_packing_fractions():
    """Packing fraction = Σ 4/3 π r³ / V exactly; void fraction of one sphere in a box = 1 − its volume
    fraction (grid estimate within 1 %); in a crystal void ≥ 1 − packing (overlaps count twice in packing)."""
    box = Structure(Lattice.cubic(8.0), ["O"], [[0.5, 0.5, 0.5]])
    lone = analyze_channels(box, radii={"O": 1.5}, probe_radius_A=0.5, grid_spacing_A=0.2)
    sphere = 4 / 3 * math.pi * 1.5**3 / 512
    assert lone.packing_fraction == pytest.approx(sphere, rel=1e-9)
    assert lone.void_fraction == pytest.approx(1 - sphere, abs=0.01)
    assert lone.channel_dimensionality == 3
    for structure in (hollandite_mno2(), rutile_tio2()):
        result = analyze_channels(structure)
        expected = sum(4 / 3 * math.pi * CRYSTAL_RADII[s.specie.symbol] ** 3 for s in structure) / structure.volume
        assert result.packing_fraction == pytest.approx(expected, rel=1e-9)
        assert 0 < result.void_fraction < 1
        assert result.void_fraction >= 1 - result.packing_fraction - 0.01
    # the open 2×2 tunnels leave more void than rutile's narrow channels
    assert analyze_channels(hollandite_mno2()).void_fraction > analyze_channels(rutile_tio2()).void_fraction


def test_dimensionality_follows_the_probe_and_the_radii_sets():
    rutile = rutile_tio2()
    assert analyze_channels(rutile, probe_radius_A=0.45).channel_dimensionality == 1
    assert analyze_channels(rutile, probe_radius_A=0.6).channel_dimensionality == 0  # wider than the bottleneck
    zeopp = analyze_channels(rutile, radii="zeopp")
    label, radii = resolve_radii(rutile, "zeopp")
    assert zeopp.radii == "zeopp" and zeopp.radii_A == radii
    assert zeopp.channel_radius_A != pytest.approx(analyze_channels(rutile).channel_radius_A, abs=0.01)
    with pytest.raises(ValueError, match="not for"):
        analyze_channels(rutile, radii={"O": 1.4})
    with pytest.raises(ValueError, match="engine"):
        analyze_channels(rutile, engine="voronoi")
    with pytest.raises(ValueError, match="nothing left"):
        analyze_channels(Structure(Lattice.cubic(3.5), ["Li"], [[0, 0, 0]]), mobile_ion="Li")


def test_zeo_output_is_silenced(capfd):
    analyze_channels(rutile_tio2())
    captured = capfd.readouterr()
    assert "Voronoi" not in captured.out and "Voronoi" not in captured.err


def test_as_dict_has_unit_suffixed_fields():
    data = analyze_channels(rutile_tio2()).as_dict()
    for key in ("largest_included_sphere_A", "largest_free_sphere_A", "largest_included_sphere_along_free_path_A",
                "channel_radius_A", "channel_dimensionality", "void_fraction", "packing_fraction", "engine"):
        assert key in data
    assert json.loads(json.dumps(data)) == data


def test_batch_keeps_going_past_a_bad_structure():
    results = analyze_batch([rutile_tio2(), Structure(Lattice.cubic(3.5), ["Li"], [[0, 0, 0]])], mobile_ion="Li",
                            progress=False)
    assert isinstance(results[0], ChannelAnalysis) and isinstance(results[1], str) and "nothing left" in results[1]


def test_channels_command_writes_table_figure_and_batch(tmp_path):
    from battgen.batch import StructureBatch

    batch = StructureBatch.from_structures([hollandite_mno2(), rutile_tio2(), olivine_lifepo4()],
                                           [{"row_id": "hollandite"}, {"row_id": "rutile"}, {"row_id": "olivine"}])
    batch.write(tmp_path / "in.jsonl.gz")
    code, summary = run_command("channels", {"input": "in.jsonl.gz", "mobile_ion": "Li", "progress": False}, tmp_path)
    assert code == 0, summary.get("error")
    outputs = summary["outputs"]
    assert outputs["n_analysed"] == 3 and outputs["units"]["channel_radius_A"].startswith("Å")
    table = json.loads((tmp_path / "channels.json").read_text())
    radii = {row["row_id"]: row["channel_radius_A"] for row in table["rows"]}
    assert radii["hollandite"] == pytest.approx(1.2305, abs=0.005)
    assert radii["olivine"] == pytest.approx(0.618, abs=0.005)
    assert (tmp_path / "channels.png").stat().st_size > 1000
    header = (tmp_path / "channels.csv").read_text().splitlines()[0]
    assert header.startswith("row_id,formula,largest_included_sphere_A")
    analysed = StructureBatch.read(tmp_path / "channels.jsonl.gz")
    assert analysed.column("channel_dimensionality") == [1, 1, 1]

    # a CIF input works too
    rutile_tio2().to(filename=str(tmp_path / "rutile.cif"))
    code, summary = run_command("channels", {"input": "rutile.cif", "progress": False}, tmp_path)
    assert code == 0 and summary["outputs"]["n_analysed"] == 1


@pytest.mark.parametrize("config", [
    {}, {"input": "missing.jsonl.gz"}, {"input": "in.jsonl.gz", "radii": "bogus"},
    {"input": "in.jsonl.gz", "mobile_ion": "Xx"}, {"input": "in.jsonl.gz", "probe_radius_A": -1},
    {"input": "in.jsonl.gz", "engine": "voronoi"}, {"input": "in.jsonl.gz", "typo": 1},
])
def test_channels_command_rejects_bad_input(tmp_path, config):
    from battgen.batch import StructureBatch

    StructureBatch.from_structures([rutile_tio2()]).write(tmp_path / "in.jsonl.gz")
    with pytest.raises(InvalidInputError):
        run_channels_command(config, tmp_path)
    code, _ = run_command("channels", config, tmp_path)
    assert code == 2 and not (tmp_path / "channels.csv").exists()


@pytest.mark.shared_data
def test_real_mp20_structures(shared_data):
    """Twenty MP-20 structures (mp20_mini_slices): every analysis finishes with sane numbers."""
    from battgen.sources.files import read_mp20_csv

    batch, _ = read_mp20_csv(shared_data / "mp20_mini_slices" / "raw_mp20_dataset_mini.csv", max_rows=20)
    results = analyze_batch([s for _, s in batch], progress=False)
    good = [r for r in results if isinstance(r, ChannelAnalysis)]
    assert len(good) >= 18
    for r in good:
        assert 0 <= r.largest_free_sphere_A <= r.largest_included_sphere_along_free_path_A + 1e-6
        assert r.largest_included_sphere_along_free_path_A <= r.largest_included_sphere_A + 1e-6
        assert 0 <= r.channel_dimensionality <= 3 and 0 < r.void_fraction < 1


@pytest.mark.shared_data
def test_engines_agree_on_real_structures(shared_data):
    """Forty MP-20 structures: CAVD's network graph and Zeo++ give the same Di, Df and dimensionality."""
    from battgen.sources.files import read_mp20_csv

    batch, _ = read_mp20_csv(shared_data / "mp20_mini_slices" / "raw_mp20_dataset_mini.csv", max_rows=40)
    structures = [s for _, s in batch]
    zeopp = analyze_batch(structures, progress=False)
    cavd = analyze_batch(structures, progress=False, engine="cavd")
    compared = 0
    for a, b in zip(zeopp, cavd):
        if isinstance(a, ChannelAnalysis) and isinstance(b, ChannelAnalysis):
            compared += 1
            assert b.largest_included_sphere_A == pytest.approx(a.largest_included_sphere_A, abs=2e-3)
            assert b.largest_free_sphere_A == pytest.approx(a.largest_free_sphere_A, abs=2e-3)
            assert b.channel_dimensionality == a.channel_dimensionality
    assert compared >= 38
