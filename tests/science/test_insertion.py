"""Insertion potentials: the formula against hand calculations and its sign convention, channel sites from
the Zeo++ Voronoi network, the command (cheap Lennard-Jones stand-in calculator and real CHGNet), Bader."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.calculators.lj import LennardJones

from battgen.channels.analysis import analyze_channels
from battgen.channels.reference_structures import hollandite_mno2, olivine_lifepo4, rutile_tio2
from battgen.cli import run_command
from battgen.insertion import potential
from battgen.insertion.potential import (
    ION_CHARGES,
    bader_charges,
    charge_transfer_e,
    insert_ions,
    insertion_potentials,
    insertion_voltage_V,
    parse_acf,
)
from battgen.insertion.sites import choose_sites, find_insertion_sites


def test_voltage_formula_by_hand():
    """V = −(E(host+n) − E(host) − n E_ref) / (n z).

    Li (z = 1), n = 1: E_host = −100.0, E(host+Li) = −104.5, E_ref = −1.9 → ΔE = −104.5 + 100 + 1.9 = −2.6 eV
    → V = +2.6 V. Ca (z = 2), n = 2: E(host+2Ca) = −110.0, E_ref = −1.98 → ΔE = −110 + 100 + 3.96 = −6.04 eV
    → V = 6.04 / 4 = 1.51 V. Seed 001's Li value: E_ref(Li) = −1.8978 eV.
    """
    assert insertion_voltage_V(-104.5, -100.0, 1, -1.9, 1) == pytest.approx(2.6, abs=1e-12)
    assert insertion_voltage_V(-110.0, -100.0, 2, -1.98, 2) == pytest.approx(1.51, abs=1e-12)
    # sign: an ion that binds less strongly than in its metal gives a negative potential (no insertion)
    assert insertion_voltage_V(-101.0, -100.0, 1, -1.8978, 1) == pytest.approx(-0.8978, abs=1e-12)
    # z divides: the same energy change per ion is a third of the potential for Al3+
    assert insertion_voltage_V(-104.5, -100.0, 1, -1.9, 3) == pytest.approx(2.6 / 3, abs=1e-12)
    with pytest.raises(ValueError):
        insertion_voltage_V(-1.0, -1.0, 0, -1.0, 1)
    with pytest.raises(ValueError):
        insertion_voltage_V(float("nan"), -1.0, 1, -1.0, 1)
    assert ION_CHARGES == {"Li": 1, "Na": 1, "K": 1, "Mg": 2, "Ca": 2, "Zn": 2, "Al": 3}


def test_hollandite_sites_sit_in_the_tunnels():
    """The widest site is the 2×2 tunnel centre (0, 0, 1/2) and (1/2, 1/2, 0) — where K/Ba sit in hollandite —
    with the radius of the largest included sphere; the 1×1 channels form a second, narrower channel."""
    site_types = find_insertion_sites(hollandite_mno2())
    widest = site_types[0]
    assert widest.label == "site-1" and widest.channel == "channel-1" and len(widest.frac_coords) == 2
    centres = sorted(tuple(np.round(np.array(c) % 1.0, 3) % 1.0) for c in widest.frac_coords)
    assert centres == [(0.0, 0.0, 0.5), (0.5, 0.5, 0.0)]
    assert widest.radius_A == pytest.approx(analyze_channels(hollandite_mno2()).largest_included_sphere_A / 2, abs=0.01)
    assert [t.radius_A for t in site_types] == sorted((t.radius_A for t in site_types), reverse=True)
    assert {t.channel for t in site_types} == {"channel-1", "channel-2"}
    assert all(t.min_distance_A >= 1.6 for t in site_types)


def test_olivine_li_sites_are_found_when_li_is_removed():
    site_types = find_insertion_sites(olivine_lifepo4(), mobile_ion="Li")
    li_sites = np.array([s.frac_coords for s in olivine_lifepo4() if s.specie.symbol == "Li"])
    lattice = olivine_lifepo4().lattice
    found = [t for t in site_types if lattice.get_all_distances(t.frac_coords, li_sites).min() < 0.3]
    assert found and len(found[0].frac_coords) == 4  # the Li 4a sites are one site type


def test_choose_sites_spreads_the_ions():
    host = rutile_tio2() * (1, 1, 2)
    site = find_insertion_sites(host)[0]
    chosen = choose_sites(host, site.frac_coords, 2)
    assert host.lattice.get_all_distances(chosen[0], chosen[1])[0, 0] == pytest.approx(
        max(host.lattice.get_all_distances(site.frac_coords[0], site.frac_coords)[0]), abs=1e-6)
    inserted = insert_ions(host, site, "Li", 2)
    assert inserted.composition["Li"] == 2 and len(inserted) == len(host) + 2
    with pytest.raises(ValueError, match="only"):
        choose_sites(host, site.frac_coords, len(site.frac_coords) + 1)


def test_pipeline_with_a_cheap_calculator_is_self_consistent():
    """Lennard-Jones stand-in: every row's V equals the formula applied to its own energies, and a given
    reference energy is used and named."""
    results, site_types, structures = insertion_potentials(
        rutile_tio2(), ["Li", "Mg"], [1], calculator=LennardJones(sigma=1.5, epsilon=0.01, rc=4.0),
        reference_energies_eV_per_atom={"Li": -1.8978, "Mg": -1.5}, max_steps=3, supercell=[1, 1, 2],
        progress=False,
    )
    assert {(r.ion, r.channel) for r in results} == {("Li", "channel-1"), ("Mg", "channel-1")}
    for r, s in zip(results, structures):
        assert r.voltage_V == pytest.approx(insertion_voltage_V(r.energy_inserted_eV, r.energy_host_eV, r.n_ions,
                                                                r.reference_energy_eV_per_atom, ION_CHARGES[r.ion]))
        assert r.insertion_energy_per_ion_eV == pytest.approx(-r.voltage_V * ION_CHARGES[r.ion])
        assert r.reference.startswith("given") and s.composition[r.ion] == 1
    with pytest.raises(ValueError, match="unknown working ion"):
        insertion_potentials(rutile_tio2(), ["Xe"], [1], calculator=LennardJones())


def test_parse_acf_and_charge_transfer(tmp_path):
    """A Bader ACF.dat in the format of the Henkelman code (two atoms: Li, O)."""
    (tmp_path / "ACF.dat").write_text(
        "    #         X           Y           Z       CHARGE      MIN DIST   ATOMIC VOL\n"
        " --------------------------------------------------------------------------------\n"
        "    1    0.0000      0.0000      0.0000      0.1500      0.9000      5.0000\n"
        "    2    1.5000      1.5000      1.5000      7.8500      1.1000     15.0000\n"
        " --------------------------------------------------------------------------------\n"
        "    VACUUM CHARGE:               0.0000\n"
        "    VACUUM VOLUME:               0.0000\n"
        "    NUMBER OF ELECTRONS:         8.0000\n")
    parsed = parse_acf(tmp_path / "ACF.dat")
    assert parsed["charges_e"] == [0.15, 7.85] and parsed["n_electrons"] == 8.0
    assert parsed["atomic_volumes_A3"] == [5.0, 15.0]
    # Li with 1 valence electron (PAW Li) keeps 0.15 e: it gave away 0.85 e
    assert charge_transfer_e(parsed["charges_e"], ["Li", "O"], {"Li": 1, "O": 6}, [0]) == pytest.approx([0.85])
    with pytest.raises(FileNotFoundError):
        parse_acf(tmp_path / "missing" / "ACF.dat")


def test_bader_without_the_binary_gives_a_message(tmp_path, monkeypatch):
    monkeypatch.setattr(potential.shutil, "which", lambda name: None)
    (tmp_path / "CHGCAR").write_text("not a real CHGCAR")
    result = bader_charges(tmp_path / "CHGCAR")
    assert result["available"] is False and "no 'bader' binary" in result["message"]


@pytest.mark.parametrize("config", [
    {}, {"input": "host.jsonl.gz", "ions": ["Xe"]}, {"input": "host.jsonl.gz", "n_ions": [0]},
    {"input": "host.jsonl.gz", "supercell": [1, 1]}, {"input": "host.jsonl.gz", "cell_filter": "bogus"},
    {"input": "host.jsonl.gz", "reference_energies_eV_per_atom": {"Li": "low"}}, {"input": "host.jsonl.gz", "typo": 1},
    {"input": "missing.cif"},
])
def test_insertion_command_rejects_bad_input(tmp_path, config):
    from battgen.batch import StructureBatch

    StructureBatch.from_structures([rutile_tio2()]).write(tmp_path / "host.jsonl.gz")
    code, summary = run_command("insertion", config, tmp_path)
    assert code == 2, summary.get("error")
    assert not (tmp_path / "insertion.csv").exists()


@pytest.mark.slow
def test_real_chgnet_li_insertion_in_rutile(tmp_path):
    """One Li in the c-channel of a 1×1×2 rutile cell, fixed cell, 40 FIRE steps, bulk bcc Li relaxed with
    CHGNet as the reference: Li inserts (V > 0, here about 0.9 V; experiments on nano-rutile give ~1.5 V
    at low Li content) and the table, figure, batch and Bader message are written."""
    from battgen.batch import StructureBatch

    StructureBatch.from_structures([rutile_tio2()], [{"row_id": "rutile"}]).write(tmp_path / "host.jsonl.gz")
    config = {"input": "host.jsonl.gz", "ions": ["Li"], "n_ions": [1], "supercell": [1, 1, 2], "max_steps": 40,
              "fmax": 0.1, "progress": False, "bader": {"density_file": "CHGCAR"}}
    code, summary = run_command("insertion", config, tmp_path)
    assert code == 0, summary.get("error")
    table = json.loads((tmp_path / "insertion.json").read_text())
    row = table["rows"][0]
    assert row["ion"] == "Li" and row["channel"] == "channel-1"
    assert row["reference"].startswith("bulk Li") and -2.1 < row["reference_energy_eV_per_atom"] < -1.7
    assert 0.2 < row["voltage_V"] < 2.5
    import shutil

    if shutil.which("bader") is None:  # no binary here: a message, not a crash
        assert summary["outputs"]["bader"]["available"] is False and "bader" in summary["outputs"]["bader"]["message"]
    assert (tmp_path / "insertion.png").stat().st_size > 1000
    inserted = StructureBatch.read(tmp_path / "inserted.jsonl.gz")
    assert inserted.meta[0]["row_id"] == "rutile-Li1-site-1" and inserted.structures[0].composition["Li"] == 1
    assert table["formula"].startswith("V = -(E(host+n ion)")
