"""Si-anode channel stability (seed 004): capacity filter on known phases, seeded delithiation sampling that
spans the lithiation levels, the slope fit against synthetic data with a known slope and error, ranking,
and the ``battgen si-anode`` command with its checkpoint (cheap stand-in calculator and channel function)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from battgen.anode import silicon, slope
from battgen.batch import StructureBatch
from battgen.cli import EXIT_INVALID_INPUT, EXIT_OK, InvalidInputError, run_command


def li15si4(primitive: bool = True) -> Structure:
    """Li15Si4 (Cu15Si4 type, I-43d, a = 10.685 Å; Obrovac & Christensen, Electrochem. Solid-State Lett. 7,
    A93 (2004)): Si 16c x = 0.4584, Li 12a (3/8, 0, 1/4), Li 48e (0.1216, 0.1586, 0.9588) — Si isolated,
    Li–Si 2.60 Å. The conventional cell holds 76 atoms, the primitive (bcc) cell 38 (Li30Si8)."""
    structure = Structure.from_spacegroup(
        "I-43d", Lattice.cubic(10.685), ["Si", "Li", "Li"],
        [[0.4584, 0.4584, 0.4584], [0.375, 0.0, 0.25], [0.1216, 0.1586, 0.9588]])
    return structure.get_primitive_structure() if primitive else structure


def diamond_si() -> Structure:
    return Structure(Lattice.cubic(5.431), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]]).get_primitive_structure()


def li_si_zintl() -> Structure:
    """A LiSi-composition stand-in (rocksalt-like Li/Si, 1 Li per Si): capacity 954 mAh/g per Si, below 1500."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Li", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])


# --- capacity ----------------------------------------------------------------------------------------
def test_li15si4_capacity_per_si_and_per_lithiated_mass():
    """3579 mAh/g is the alloy-anode number (per gram of Si: 3.75 Li × F / M_Si); pymatgen's / MP's convention
    normalises by the lithiated mass instead (Li15Si4: 1857 mAh/g)."""
    structure = li15si4()
    per_si = silicon.compound_capacity_mAh_per_g(structure, "Li", "host")
    per_lithiated = silicon.compound_capacity_mAh_per_g(structure, "Li", "discharged")
    faraday_mAh = 96485.33212 / 3.6
    assert per_si == pytest.approx(3.75 * faraday_mAh / 28.0855, rel=1e-3)
    assert per_si == pytest.approx(3579, abs=1.0)
    assert per_lithiated == pytest.approx(1857, abs=1.0)
    assert silicon.compound_capacity_mAh_per_g(diamond_si(), "Li") == 0.0


def test_capacity_filter_keeps_only_li_si_compounds_above_threshold():
    li2o = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.61), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    batch = StructureBatch.from_structures(
        [li15si4(), li_si_zintl(), diamond_si(), li2o],
        [{"row_id": "li15si4"}, {"row_id": "lisi"}, {"row_id": "si"}, {"row_id": "li2o"}])
    passed, records = silicon.mine_candidates(batch, min_capacity_mAh_per_g=1500.0)
    assert passed.row_ids == ["li15si4"]
    assert passed.meta[0]["gravimetric_capacity_mAh_per_g"] == pytest.approx(3578.6, abs=1)
    reasons = {r["row_id"]: r["reason"] for r in records}
    assert reasons["lisi"].startswith("capacity 954 mAh/g")
    assert reasons["si"] == "contains no Li" and reasons["li2o"] == "contains no Si"
    # per lithiated mass, Li15Si4 (1857 mAh/g) still passes 1500 but not 2000
    assert silicon.mine_candidates(batch, min_capacity_mAh_per_g=2000.0, basis="discharged")[0].row_ids == []


# --- sampling ----------------------------------------------------------------------------------------
def test_delithiation_is_seeded_and_spans_the_lithiation_levels():
    structure = li15si4()
    configs = silicon.delithiated_configurations(structure, compound_id="c", n_configurations=30, seed=7)
    assert len(configs) == 31 and configs.row_ids[0] == "c/full" and configs.row_ids[-1] == "c/d30"
    li_sites = {i for i, site in enumerate(structure) if site.specie.symbol == "Li"}
    removed_counts = [m["n_working_ion_removed"] for m in configs.meta]
    assert removed_counts == list(range(31))  # 30 Li in the primitive cell: one more removed per level
    assert [m["state_of_charge"] for m in configs.meta] == pytest.approx(np.linspace(1, 0, 31))
    for meta, config in zip(configs.meta, configs.structures):
        removed = meta["removed_site_indices"]
        assert set(removed) <= li_sites and len(set(removed)) == meta["n_working_ion_removed"]
        assert config.composition["Li"] == 30 - len(removed) and config.composition["Si"] == 8
        kept = [i for i in range(len(structure)) if i not in removed]
        assert np.allclose(config.frac_coords, structure.frac_coords[kept])
    again = silicon.delithiated_configurations(structure, compound_id="c", n_configurations=30, seed=7)
    other = silicon.delithiated_configurations(structure, compound_id="c", n_configurations=30, seed=8)
    assert [m["removed_site_indices"] for m in again.meta] == [m["removed_site_indices"] for m in configs.meta]
    assert [m["removed_site_indices"] for m in other.meta] != [m["removed_site_indices"] for m in configs.meta]


def test_removal_counts_with_fewer_ions_than_configurations_and_a_partial_range():
    assert silicon.removal_counts(4, 8) == [1, 1, 2, 2, 2, 3, 4, 4]  # Python rounds halves to even
    assert silicon.removal_counts(30, 3, max_removed_fraction=0.5) == [5, 10, 15]
    with pytest.raises(ValueError):
        silicon.removal_counts(0, 3)


# --- slope -------------------------------------------------------------------------------------------
def test_slope_fit_recovers_a_known_slope_and_its_standard_error():
    rng = np.random.default_rng(0)
    soc = np.repeat(np.linspace(0, 1, 31), 20)  # many points: the estimated error must match the theory
    sigma = 0.1
    radius = 1.9 + 0.85 * soc + rng.normal(0, sigma, soc.size)
    fit = slope.fit_channel_radius_slope(soc, radius)
    expected_err = sigma / math.sqrt(np.sum((soc - soc.mean()) ** 2))
    assert fit.slope_A_per_unit_soc == pytest.approx(0.85, abs=3 * expected_err)
    assert fit.slope_err_A_per_unit_soc == pytest.approx(expected_err, rel=0.1)
    assert fit.intercept_A == pytest.approx(1.9, abs=0.03) and fit.n_points == soc.size
    # the same numbers as numpy's weighted-less polyfit with its scaled covariance
    coefficients, covariance = np.polyfit(soc, radius, 1, cov=True)
    assert fit.slope_A_per_unit_soc == pytest.approx(coefficients[0])
    assert fit.slope_err_A_per_unit_soc == pytest.approx(math.sqrt(covariance[0, 0]))
    assert fit.pearson_r > 0.8 and fit.spearman_rho > 0.8


def test_slope_fit_exact_line_flat_line_and_too_few_points():
    exact = slope.fit_channel_radius_slope([0, 0.5, 1.0], [2.0, 1.8, 1.6])
    assert exact.slope_A_per_unit_soc == pytest.approx(-0.4)
    assert exact.slope_err_A_per_unit_soc == pytest.approx(0, abs=1e-12)
    flat = slope.fit_channel_radius_slope([0, 0.5, 1.0], [2.0, 2.0, 2.0])
    assert flat.slope_A_per_unit_soc == 0.0 and flat.slope_err_A_per_unit_soc == 0.0 and flat.pearson_r == 0.0
    with pytest.raises(ValueError, match="at least 3"):
        slope.fit_channel_radius_slope([0, 1, np.nan], [1, 2, 3])
    with pytest.raises(ValueError, match="same state of charge"):
        slope.fit_channel_radius_slope([0.5, 0.5, 0.5], [1, 2, 3])


def test_ranking_by_absolute_slope_puts_unfitted_compounds_last():
    groups = {
        "si": ([0, 0.5, 1], [1.0, 1.45, 1.85]),         # slope 0.85
        "sige": ([0, 0.5, 1], [1.5, 1.3, 1.1]),          # slope -0.4: smaller |slope|, more stable
        "single": ([1.0], [2.0]),
    }
    fits = slope.fit_compounds(groups)
    ranking = slope.rank_by_abs_slope(fits)
    assert [r["compound"] for r in ranking] == ["sige", "si", "single"]
    assert ranking[0]["rank"] == 1 and ranking[2]["rank"] is None and "at least 3" in ranking[2]["reason"]


def test_figure_is_written(tmp_path):
    groups = {"a": ([0, 0.5, 1], [1.0, 1.4, 1.9]), "b": ([1.0], [2.0])}
    path = slope.plot_channel_radius_vs_soc(groups, slope.fit_compounds(groups), tmp_path / "fig.png")
    assert path.stat().st_size > 5000


# --- the command ---------------------------------------------------------------------------------------
def _lj_calculator():
    from ase.calculators.lj import LennardJones

    return LennardJones(sigma=2.3, epsilon=0.05, rc=5.0, smooth=True)


def _fake_channels(structure, working_ion, options):
    """Stand-in for the Zeo++ analysis: radius grows with the volume per atom (Å)."""
    return {"channel_radius_A": 0.5 * (structure.volume / len(structure)) ** (1 / 3), "largest_included_sphere_A": None,
            "channel_dimensionality": 3}


def _write_input(workdir, structures: dict[str, Structure]):
    StructureBatch.from_structures(list(structures.values()), [{"row_id": k} for k in structures]).write(
        workdir / silicon.INPUT_FILENAME)


def _run(config, workdir):
    return silicon.run_si_anode_command(config, workdir, calculator=_lj_calculator(), channel_function=_fake_channels)


CHEAP = {"n_configurations": 6, "max_steps": 3, "fmax": 0.5, "progress": False}


def test_command_writes_table_slopes_and_figure(tmp_path):
    _write_input(tmp_path, {"li15si4": li15si4(), "si": diamond_si()})
    outputs = _run(CHEAP, tmp_path)
    assert outputs["status"] == "completed" and outputs["n_candidates"] == 1 and outputs["n_finished"] == 7
    for name in outputs["files"].values():
        assert (tmp_path / name).exists(), name
    table = json.loads((tmp_path / silicon.TABLE_JSON_FILENAME).read_text())
    assert table["units"]["channel_radius_A"] == "Å" and len(table["rows"]) == 7
    socs = [row["state_of_charge"] for row in table["rows"]]
    assert socs == pytest.approx([1.0] + [1 - k / 6 for k in range(1, 7)])
    capacities = [row["gravimetric_capacity_mAh_per_g"] for row in table["rows"]]
    assert capacities[0] == pytest.approx(3578.6, abs=1) and capacities[-1] == 0.0
    slopes = json.loads((tmp_path / silicon.SLOPES_FILENAME).read_text())
    fit = slopes["fits"]["li15si4"]
    assert fit["n_points"] == 7 and fit["slope_err_A_per_unit_soc"] > 0
    assert fit["slope_A_per_unit_soc"] < 0  # the stand-in radius grows with the volume per atom as Li leaves
    assert outputs["ranking"][0]["compound"] == "li15si4"
    ranking_csv = (tmp_path / silicon.SLOPES_TABLE_FILENAME).read_text().splitlines()
    assert ranking_csv[0].startswith("rank,compound,formula,slope_A_per_unit_soc") and ranking_csv[1].startswith(
        "1,li15si4,Li15Si4,")
    relaxed = StructureBatch.read(tmp_path / silicon.RELAXED_FILENAME)
    assert relaxed.row_ids == [f"li15si4/{s}" for s in ["full"] + [f"d{i:02d}" for i in range(1, 7)]]
    compounds = json.loads((tmp_path / silicon.COMPOUNDS_FILENAME).read_text())["compounds"]
    assert [c["passed"] for c in compounds] == [True, False]


def test_command_resumes_from_its_checkpoint_after_a_budget_stop_and_a_kill(tmp_path):
    _write_input(tmp_path, {"li15si4": li15si4()})
    config = {**CHEAP, "max_wall_time_s": 0.0}
    first = _run(config, tmp_path)
    assert first["status"] == "incomplete" and first["n_finished"] == 1 and "slopes" not in first["files"]
    # a kill in the middle of writing the next line leaves a torn line behind: it is ignored
    with open(tmp_path / silicon.CHECKPOINT_FILENAME, "a", encoding="utf-8") as handle:
        handle.write('{"meta": {"row_id": "li15si4/d01", "trunc')
    second = _run(config, tmp_path)
    assert second["n_resumed_from_checkpoint"] == 1 and second["n_relaxed_this_call"] == 1
    final = _run(CHEAP, tmp_path)
    assert final["status"] == "completed"
    assert (final["n_resumed_from_checkpoint"], final["n_relaxed_this_call"]) == (2, 5)
    assert len(StructureBatch.read(tmp_path / silicon.RELAXED_FILENAME)) == 7
    # the resumed run gives exactly what an uninterrupted one gives
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _write_input(fresh, {"li15si4": li15si4()})
    silicon.run_si_anode_command(CHEAP, fresh, calculator=_lj_calculator(), channel_function=_fake_channels)
    resumed = json.loads((tmp_path / silicon.SLOPES_FILENAME).read_text())["fits"]["li15si4"]
    uninterrupted = json.loads((fresh / silicon.SLOPES_FILENAME).read_text())["fits"]["li15si4"]
    assert resumed["slope_A_per_unit_soc"] == pytest.approx(uninterrupted["slope_A_per_unit_soc"])
    # a checkpoint from other settings is not silently mixed in
    with pytest.raises(InvalidInputError, match="other settings"):
        silicon.run_si_anode_command({**CHEAP, "seed": 1}, tmp_path, calculator=_lj_calculator(),
                                     channel_function=_fake_channels)


class _SigtermAtCall:
    """Lennard-Jones that sends SIGTERM to its own process at the n-th force evaluation (a walltime kill)."""

    def __new__(cls, n_call: int):
        import os
        import signal

        from ase.calculators.lj import LennardJones

        class Killer(LennardJones):
            calls = 0

            def calculate(self, *args, **kwargs):
                Killer.calls += 1
                if Killer.calls == n_call:
                    os.kill(os.getpid(), signal.SIGTERM)
                super().calculate(*args, **kwargs)

        return Killer(sigma=2.3, epsilon=0.05, rc=5.0, smooth=True)


def test_sigterm_drops_only_the_configuration_in_flight(tmp_path):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    _write_input(tmp_path, {"li15si4": li15si4()})
    # one force call per configuration (they converge at once at fmax 0.5): the third one is killed
    killed = silicon.run_si_anode_command({**CHEAP, "fmax": 5.0}, tmp_path, calculator=_SigtermAtCall(3),
                                          channel_function=_fake_channels)
    assert killed["status"] == "incomplete" and killed["stop_reason"].startswith("SIGTERM")
    assert killed["n_finished"] == 2
    assert signal.getsignal(signal.SIGTERM) is before
    resumed = _run({**CHEAP, "fmax": 5.0}, tmp_path)
    assert resumed["status"] == "completed" and resumed["n_resumed_from_checkpoint"] == 2
    assert resumed["n_finished"] == 7


@pytest.mark.parametrize("config, message", [
    ({"n_configurations": 0}, "n_configurations"),
    ({"max_removed_fraction": 1.5}, "max_removed_fraction"),
    ({"capacity_basis": "mass"}, "capacity_basis"),
    ({"host_element": "Xx"}, "host_element"),
    ({"mlip": "nonexistent"}, "nonexistent"),
    ({"unknown_key": 1}, "unknown si-anode setting"),
    ({"min_capacity_mAh_per_g": 5000.0}, "no compound"),
    ({"input": "missing.jsonl.gz"}, "cannot read the input batch"),
])
def test_bad_input_exits_2_with_a_clear_message(tmp_path, config, message):
    _write_input(tmp_path, {"li15si4": li15si4()})
    code, summary = run_command("si-anode", {"progress": False, **config}, tmp_path)
    assert code == EXIT_INVALID_INPUT and message in summary["error"]
    assert not (tmp_path / silicon.RELAXED_FILENAME).exists()


def test_command_reads_a_cif_source(tmp_path):
    li15si4(primitive=False).to(filename=str(tmp_path / "li15si4.cif"))
    outputs = silicon.run_si_anode_command({**CHEAP, "source": "li15si4.cif", "primitive_cell": True,
                                            "n_configurations": 3}, tmp_path,
                                           calculator=_lj_calculator(), channel_function=_fake_channels)
    assert outputs["n_candidates"] == 1 and outputs["n_finished"] == 4
    first = StructureBatch.read(tmp_path / silicon.CONFIGURATIONS_FILENAME).structures[0]
    assert len(first) == 38  # primitive cell of the 76-atom conventional one


def test_exit_ok_through_the_cli_framework(tmp_path, monkeypatch):
    """The registered command runs through battgen.cli (summary with outputs and units)."""
    _write_input(tmp_path, {"li15si4": li15si4()})
    original = silicon.run_si_anode_command
    monkeypatch.setattr(silicon, "run_si_anode_command", lambda config, workdir: original(
        config, workdir, calculator=_lj_calculator(), channel_function=_fake_channels))
    code, summary = run_command("si-anode", {**CHEAP, "n_configurations": 3}, tmp_path)
    assert code == EXIT_OK, summary.get("error")
    assert summary["outputs"]["units"]["slope_A_per_unit_soc"].startswith("Å per unit SOC")
