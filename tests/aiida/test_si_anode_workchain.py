"""Si-anode workflow in AiiDA: protocol, the slope calcfunction on a table with a known slope, source and
capacity steps, and (slow) the real ``battgen si-anode`` CLI on localhost with CHGNet and Zeo++: Li15Si4
gives 31 relaxed configurations (30 delithiated + the fully lithiated one) and a slope with an error bar;
a run stopped at its wall-time budget resumes from its checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node
from pymatgen.core import Lattice, Structure

from aiida_battgen.calculations import si_anode as si_anode_calc
from aiida_battgen.calculations.functions.channel_radius_slope import channel_radius_slope
from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.workchains.protocols.utils import UnknownProtocolKeyError
from aiida_battgen.workchains.si_anode import SiAnodeBaseWorkChain, SiAnodeWorkChain
from battgen.anode.silicon import run_si_anode_command as _RUN_SI_ANODE_COMMAND
from battgen.batch import StructureBatch


def li15si4() -> Structure:
    """Li15Si4 (I-43d, a = 10.685 Å, Obrovac & Christensen 2004; see tests/science/test_si_anode.py), primitive
    cell: 30 Li + 8 Si."""
    return Structure.from_spacegroup(
        "I-43d", Lattice.cubic(10.685), ["Si", "Li", "Li"],
        [[0.4584, 0.4584, 0.4584], [0.375, 0.0, 0.25], [0.1216, 0.1586, 0.9588]]).get_primitive_structure()


def compounds_batch() -> StructureBatchData:
    si = Structure(Lattice.cubic(5.431), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    lisi = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Li", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return StructureBatchData(StructureBatch.from_structures(
        [li15si4(), lisi, si], [{"row_id": "Li15Si4"}, {"row_id": "LiSi"}, {"row_id": "Si"}]))


# --- contracts with the science layer -------------------------------------------------------------------
def test_one_contract_for_both_layers():
    from battgen.anode import silicon
    from battgen.contracts import si_anode as contract

    assert si_anode_calc.SiAnodeCalculation.OUTPUT_FILES == contract.RETRIEVED_FILES
    assert silicon.SI_ANODE_DEFAULTS == contract.SiAnodeSettings.defaults()
    assert contract.SiAnodeSettings.job_fields() == {"input", "source", "restart", "progress"}


def test_protocols_resolve_and_reject_unknown_keys():
    assert set(SiAnodeWorkChain.get_available_protocols()) == {"si_anode_seed004", "fast"}
    seed = SiAnodeWorkChain.get_protocol_inputs("si_anode_seed004")["parameters"]
    assert (seed["n_configurations"], seed["min_capacity_mAh_per_g"], seed["mlip"], seed["fmax"]) == (
        30, 1500.0, "chgnet", 0.05)
    assert set(seed) <= set(si_anode_calc.SiAnodeSettings.parameter_fields())
    fast = SiAnodeWorkChain.get_protocol_inputs(
        "fast", overrides={"parameters": {"channel_options": {"engine": "cavd"}}})
    assert fast["parameters"]["n_configurations"] == 30 and fast["parameters"]["max_steps"] < seed["max_steps"]
    assert fast["parameters"]["channel_options"] == {"engine": "cavd", "radii": "crystal", "probe_radius_A": None,
                                                     "grid_spacing_A": 0.4}
    with pytest.raises(UnknownProtocolKeyError, match="parameters.n_config"):
        SiAnodeWorkChain.get_protocol_inputs("fast", overrides={"parameters": {"n_config": 3}})


def test_parameters_are_validated_before_submission():
    validate = si_anode_calc.validate_si_anode_parameters
    assert "unknown parameter(s) ['n_confs'] in `parameters`" in validate(orm.Dict({"n_confs": 3}))
    assert validate(orm.Dict({"n_configurations": 0})) == "parameters.n_configurations must be a positive integer, got 0"
    assert validate(orm.Dict({"max_removed_fraction": 2.0})) == "parameters.max_removed_fraction must be in (0, 1], got 2.0"
    assert "parameters.max_volume_factor must be a number > 1" in validate(orm.Dict({"max_volume_factor": 0.5}))
    assert "must differ" in validate(orm.Dict({"working_ion": "Si"}))
    assert si_anode_calc.validate_si_anode_parameters(orm.Dict({"n_configurations": 30, "fmax": 0.05})) is None


# --- calcfunction and cheap work-chain steps -----------------------------------------------------------
def _table(compounds: dict[str, tuple[list[float], list[float]]]) -> orm.ArrayData:
    ids, socs, radii = [], [], []
    for compound, (soc, radius) in compounds.items():
        ids += [compound] * len(soc)
        socs += list(soc)
        radii += list(radius)
    table = orm.ArrayData()
    table.set_array("compound_ids", np.array(ids, dtype=str))
    table.set_array("compound_formulas", np.array(ids, dtype=str))
    table.set_array("state_of_charge", np.array(socs, dtype=float))
    table.set_array("channel_radius_A", np.array(radii, dtype=float))
    table.set_array("used_in_fit", np.isfinite(np.array(radii, dtype=float)))
    return table


@pytest.mark.usefixtures("aiida_profile_clean")
def test_channel_radius_slope_calcfunction_ranks_by_absolute_slope():
    rng = np.random.default_rng(3)
    soc = np.linspace(0, 1, 31)
    table = _table({
        "mp-si.1": (soc.tolist(), (2.0 + 0.85 * soc + rng.normal(0, 0.05, soc.size)).tolist()),  # '.' in the id
        "SiGe": (soc.tolist(), (2.0 + 0.40 * soc + rng.normal(0, 0.05, soc.size)).tolist()),
        "broken": ([1.0, 0.5], [2.0, float("nan")]),
    })
    results, node = channel_radius_slope.run_get_node(configurations=table)
    assert node.is_finished_ok, node.exit_message
    fits = {f["compound"]: f for f in results["slopes"]["fits"]}
    si = fits["mp-si.1"]
    assert si["slope_A_per_unit_soc"] == pytest.approx(0.85, abs=3 * si["slope_err_A_per_unit_soc"])
    assert 0 < fits["mp-si.1"]["slope_err_A_per_unit_soc"] < 0.05
    ranking = results["ranking"]["ranking"]
    assert [r["compound"] for r in ranking] == ["SiGe", "mp-si.1", "broken"] and ranking[2]["rank"] is None
    assert results["figure"].filename.endswith(".png")
    # too few points everywhere, and a table without the needed columns
    _, node = channel_radius_slope.run_get_node(configurations=_table({"a": ([1.0, 0.0], [2.0, 1.0])}))
    assert node.exit_status == 351
    _, node = channel_radius_slope.run_get_node(configurations=orm.ArrayData())
    assert node.exit_status == 350


@pytest.mark.usefixtures("aiida_profile_clean")
def test_snapshot_source_and_capacity_filter_without_candidates(battgen_code, tmp_path):
    """A CIF source is read through batch_from_snapshot (Li–Si compounds only); nothing reaches 5000 mAh/g, so
    the chain stops with 351 before any calculation."""
    from aiida_battgen.data.snapshot import SourceSnapshotData

    li15si4().to(filename=str(tmp_path / "li15si4.cif"))
    builder = SiAnodeWorkChain.get_builder_from_protocol(
        battgen_code, snapshot=SourceSnapshotData(tmp_path / "li15si4.cif"), protocol="fast",
        overrides={"parameters": {"min_capacity_mAh_per_g": 5000.0}})
    results, node = run_get_node(builder)
    assert node.exit_status == SiAnodeWorkChain.exit_codes.ERROR_NO_CANDIDATES.status
    capacity = results["candidates"]
    assert capacity.n_rows == 0
    labels = {link.link_label for link in node.base.links.get_outgoing().all()}
    assert {"read_source", "capacity", "capacity_filter"} <= labels and "si_anode" not in labels


def test_exactly_one_source_is_required(aiida_profile, battgen_code):
    builder = SiAnodeWorkChain.get_builder_from_protocol(battgen_code, protocol="fast")
    with pytest.raises(ValueError, match="exactly one source"):
        run_get_node(builder)


# --- parser, on folders written by the real command with cheap stand-ins -------------------------------
def _write_run(workdir, monkeypatch, **config):
    """Run ``battgen si-anode`` through battgen.cli in ``workdir`` with Lennard-Jones and a volume-based
    stand-in for the void analysis; leaves exactly what the CalcJob would retrieve (plus extras)."""
    from ase.calculators.lj import LennardJones

    from battgen.anode import silicon
    from battgen.cli import run_command

    def fake_channels(structure, working_ion, options):
        return {"channel_radius_A": 0.5 * (structure.volume / len(structure)) ** (1 / 3)}

    original = _RUN_SI_ANODE_COMMAND  # not silicon.run_si_anode_command: that may be patched already
    monkeypatch.setattr(silicon, "run_si_anode_command", lambda cfg, wd: original(
        cfg, wd, calculator=LennardJones(sigma=2.3, epsilon=0.05, rc=5.0, smooth=True), channel_function=fake_channels))
    StructureBatch.from_structures([li15si4()], [{"row_id": "Li15Si4"}]).write(workdir / "structures.jsonl.gz")
    return run_command("si-anode", {"n_configurations": 4, "max_steps": 2, "progress": False, **config}, workdir)


@pytest.fixture
def parse_folder(aiida_profile, aiida_localhost):
    from aiida_battgen.parsers.si_anode import SiAnodeParser

    def _parse(folder):
        node = orm.CalcJobNode(computer=aiida_localhost, process_type="aiida.calculations:battgen.si_anode")
        node.set_option("resources", {"num_machines": 1, "num_mpiprocs_per_machine": 1})
        node.set_option("error_filename", "battgen.err")
        node.store()
        retrieved = orm.FolderData()
        for path in folder.iterdir():
            if path.name in si_anode_calc.SiAnodeCalculation.OUTPUT_FILES or path.name == "battgen-summary.yaml":
                retrieved.base.repository.put_object_from_file(str(path), path.name)
        retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label="retrieved")
        retrieved.store()
        return SiAnodeParser.parse_from_node(node, store_provenance=False)

    return _parse


def test_parser_success_incomplete_and_failures(tmp_path, monkeypatch, parse_folder):
    exit_codes = si_anode_calc.SiAnodeCalculation.exit_codes
    done = tmp_path / "done"
    done.mkdir()
    assert _write_run(done, monkeypatch)[0] == 0
    results, calc = parse_folder(done)
    assert calc.is_finished_ok, calc.exit_message
    assert len(results["relaxed_structures"].get_batch()) == 5
    table = results["configurations"]
    # 30 Li, 4 levels: round(7.5) = 8 (halves to even), 15, round(22.5) = 22, 30 removed
    assert list(table.get_array("state_of_charge")) == pytest.approx([1.0, 22 / 30, 0.5, 8 / 30, 0.0])
    assert list(table.get_array("compound_ids")) == ["Li15Si4"] * 5 and table.get_array("used_in_fit").all()
    assert list(table.get_array("compound_formulas")) == ["Li15Si4"] * 5
    assert list(table.get_array("formulas"))[-1] == "Si"
    assert results["compounds"]["compounds"][0]["passed"] and results["figure"].filename.endswith(".png")
    assert results["output_parameters"]["status"] == "completed"

    stopped = tmp_path / "stopped"
    stopped.mkdir()
    assert _write_run(stopped, monkeypatch, max_wall_time_s=0.0)[0] == 0
    results, calc = parse_folder(stopped)
    assert calc.exit_status == exit_codes.WARNING_INCOMPLETE.status and set(results) == {"output_parameters"}

    rejected = tmp_path / "rejected"
    rejected.mkdir()
    assert _write_run(rejected, monkeypatch, min_capacity_mAh_per_g=9000.0)[0] == 2
    assert parse_folder(rejected)[1].exit_status == exit_codes.ERROR_CLI_INVALID_INPUT.status

    (done / "battgen-summary.yaml").rename(tmp_path / "summary.yaml")
    assert parse_folder(done)[1].exit_status == exit_codes.ERROR_SUMMARY_MISSING.status
    (tmp_path / "summary.yaml").rename(done / "battgen-summary.yaml")
    (done / "channel_radius_vs_soc.png").unlink()
    assert parse_folder(done)[1].exit_status == exit_codes.ERROR_MISSING_OUTPUT_FILES.status
    table_path = done / "configurations.json"
    table_path.write_text(table_path.read_text()[:-50])
    assert parse_folder(done)[1].exit_status == exit_codes.ERROR_OUTPUT_UNREADABLE.status


# --- the real CLI on localhost (CHGNet + Zeo++) ---------------------------------------------------------
@pytest.mark.slow
@pytest.mark.usefixtures("aiida_profile_clean")
def test_li15si4_gives_30_relaxed_configurations_and_a_slope_with_an_error_bar(battgen_code):
    builder = SiAnodeWorkChain.get_builder_from_protocol(battgen_code, structures=compounds_batch(), protocol="fast")
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    assert results["candidates"].get_batch().row_ids == ["Li15Si4"]  # LiSi (954 mAh/g) and Si are filtered out
    relaxed = results["relaxed_structures"].get_batch()
    assert len(relaxed) == 31
    delithiated = [m for m in relaxed.meta if m["configuration_index"] > 0]
    assert len(delithiated) == 30
    assert sorted(m["n_working_ion_removed"] for m in delithiated) == list(range(1, 31))
    assert all(m["relax_status"] in ("converged", "not_converged") for m in relaxed.meta)
    table = results["configurations"]
    assert np.all(np.isfinite(table.get_array("channel_radius_A"))) and table.get_array("used_in_fit").all()
    assert table.base.attributes.get("units")["channel_radius_A"] == "Å"
    fit = results["slopes"]["fits"][0]
    assert fit["compound"] == "Li15Si4" and fit["n_points"] == 31
    assert math.isfinite(fit["slope_A_per_unit_soc"]) and fit["slope_err_A_per_unit_soc"] > 0
    assert results["ranking"]["ranking"][0]["compound"] == "Li15Si4"
    # the number in the graph comes from the calcfunction, fed by the parsed table
    creator = results["slopes"].base.links.get_incoming(link_type=LinkType.CREATE).one().node
    assert creator.process_label == "channel_radius_slope"
    assert creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC).one().node.uuid == table.uuid
    print(f"Li15Si4 (fast protocol): slope {fit['slope_A_per_unit_soc']:.3f} ± {fit['slope_err_A_per_unit_soc']:.3f} "
          f"Å per unit SOC over {fit['n_points']} configurations")


@pytest.mark.slow
@pytest.mark.usefixtures("aiida_profile_clean")
def test_budget_stops_resume_from_the_checkpoint(battgen_code):
    """A zero wall-time budget stops every call after one configuration (410): the restart wrapper resubmits
    with the previous remote folder, whose checkpoint the next call continues from, until both are done."""
    builder = SiAnodeBaseWorkChain.get_builder()
    builder.si_anode.code = battgen_code
    builder.si_anode.structures = StructureBatchData(
        StructureBatch.from_structures([li15si4()], [{"row_id": "Li15Si4"}]))
    builder.si_anode.parameters = orm.Dict({"n_configurations": 1, "max_steps": 2, "fmax": 0.5, "max_wall_time_s": 0.0,
                                            "channel_options": {"grid_spacing_A": 0.5}})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    calls = sorted(node.called, key=lambda n: n.ctime)
    assert [c.exit_status for c in calls] == [410, 0]
    assert all("parent_folder" in c.inputs for c in calls[1:])
    final = results["output_parameters"]
    assert (final["n_resumed_from_checkpoint"], final["n_relaxed_this_call"], final["n_finished"]) == (1, 1, 2)
    assert len(results["relaxed_structures"].get_batch()) == 2
