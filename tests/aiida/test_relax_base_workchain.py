"""MlipRelaxBaseWorkChain: one test per error handler on fake finished child nodes (the
aiida-quantumespresso pattern, with outputs taken from the recorded CLI folders), the merge calcfunction,
and an end-to-end run of the real CLI on localhost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiida import orm
from aiida.common import LinkType
from aiida.engine import ExitCode, ProcessState, run_get_node
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from aiida.plugins import WorkflowFactory
from pymatgen.core import Lattice, Structure

from aiida_battgen.calculations.relax import MlipRelaxCalculation
from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.parsers.relax import relax_arrays, relax_parameters
from aiida_battgen.calculations.functions.merge_relax_results import merge_relax_results
from aiida_battgen.workchains.relax_base import MlipRelaxBaseWorkChain
from battgen.batch import StructureBatch

FIXTURES = Path(__file__).parent / "fixtures" / "relax"
CALC_EXIT = MlipRelaxCalculation.exit_codes


@pytest.fixture
def generate_workchain(aiida_profile, battgen_code):
    """An instantiated (not running) work chain on the recorded input batch of ``case``."""

    def _generate(case: str = "success", parameters: dict | None = None) -> MlipRelaxBaseWorkChain:
        batch = StructureBatch.read(FIXTURES / case / "relaxed.jsonl.gz")
        inputs = {"relax": {"code": battgen_code, "structures": StructureBatchData(batch)}}
        if parameters is not None:
            inputs["relax"]["parameters"] = orm.Dict(parameters)
        process = instantiate_process(get_manager().get_runner(), MlipRelaxBaseWorkChain, **inputs)
        process.setup()
        return process

    return _generate


@pytest.fixture
def generate_relax_node(aiida_profile, aiida_localhost):
    """A finished MlipRelaxCalculation node with ``exit_code`` and, if ``case`` has them, its parsed outputs."""

    def _generate(exit_code: ExitCode | None = None, case: str | None = None) -> orm.CalcJobNode:
        node = orm.CalcJobNode(computer=aiida_localhost, process_type="aiida.calculations:battgen.mlip.relax")
        node.set_process_label("MlipRelaxCalculation")
        node.set_process_state(ProcessState.FINISHED)
        node.set_exit_status(exit_code.status if exit_code else 0)
        node.set_exit_message(exit_code.message if exit_code else None)
        node.store()
        if case is not None:
            folder = FIXTURES / case
            batch = StructureBatch.read(folder / "relaxed.jsonl.gz")
            import yaml

            summary = yaml.safe_load((folder / "battgen-summary.yaml").read_text())
            outputs = {
                "relaxed_structures": StructureBatchData(batch),
                "output_parameters": orm.Dict(relax_parameters(batch, summary["outputs"]["model"], summary["outputs"]["settings"])),
                "output_arrays": relax_arrays(batch),
            }
            for label, output in outputs.items():
                output.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label=label)
                output.store()
        return node

    return _generate


def inspect(process, node):
    process.ctx.children = [node]
    process.ctx.iteration = 1
    return process.inspect_process()


def restarts(result, process) -> bool:
    """The handler dealt with the failure and another iteration will run."""
    return (result is None or result.status == 0) and not process.ctx.is_finished


def test_entry_point():
    assert WorkflowFactory("battgen.mlip.relax_base") is MlipRelaxBaseWorkChain


def test_success_needs_no_handler(generate_workchain, generate_relax_node):
    process = generate_workchain("success")
    assert inspect(process, generate_relax_node(case="success")) is None
    assert process.ctx.is_finished


def test_handle_not_converged_restarts_rows_with_doubled_steps(generate_workchain, generate_relax_node):
    process = generate_workchain("not_converged", {"max_steps": 3, "fmax": 0.01})
    node = generate_relax_node(CALC_EXIT.WARNING_NOT_CONVERGED, "not_converged")
    assert restarts(inspect(process, node), process)
    assert process.ctx.inputs.parameters.get_dict() == {"max_steps": 6, "fmax": 0.01}
    restart = process.ctx.inputs.structures.get_batch()
    assert restart.row_ids == ["licl", "si2-strained"]
    # restarted from the last structures, not the inputs
    last = node.outputs.relaxed_structures.get_batch()
    assert restart.get("si2-strained")[1] == last.get("si2-strained")[1]
    assert process.ctx.pieces == [node.outputs.relaxed_structures]
    assert process.ctx.inputs.structures.creator.process_label == "select_relax_rows"  # provenance kept


def test_handle_exploded_retries_once_then_drops(generate_workchain, generate_relax_node):
    process = generate_workchain("exploded", {"maxstep": 0.2})
    node = generate_relax_node(CALC_EXIT.WARNING_EXPLODED, "exploded")
    assert restarts(inspect(process, node), process)
    assert process.ctx.inputs.parameters["maxstep"] == pytest.approx(0.1)
    assert process.ctx.inputs.structures.get_batch().row_ids == ["si2-sparse"]

    # The retry explodes again: the row is dropped, the converged LiCl kept, the chain finishes.
    second = generate_relax_node(CALC_EXIT.WARNING_EXPLODED, "exploded")
    process.ctx.children = [node, second]
    process.ctx.iteration = 2
    result = process.inspect_process()
    assert result == ExitCode(0) and process.ctx.is_finished
    assert process.ctx.dropped == ["si2-sparse"]
    merged = process.get_outputs(second)
    assert merged["relaxed_structures"].get_batch().row_ids == ["licl"]
    assert merged["output_parameters"]["dropped_row_ids"] == ["si2-sparse"]


def test_handle_unsupported_finishes_with_rows_flagged(generate_workchain, generate_relax_node):
    process = generate_workchain("unsupported")
    result = inspect(process, generate_relax_node(CALC_EXIT.WARNING_UNSUPPORTED_ELEMENTS, "unsupported"))
    assert result == ExitCode(0) and process.ctx.is_finished


@pytest.mark.parametrize("exit_code", ["ERROR_MISSING_OUTPUT_FILES", "ERROR_OUTPUT_UNREADABLE", "ERROR_SUMMARY_MISSING"])
def test_handle_outputs_lost_resubmits_once_then_fails(generate_workchain, generate_relax_node, exit_code):
    process = generate_workchain("success")
    structures_before = process.ctx.inputs.structures
    assert restarts(inspect(process, generate_relax_node(CALC_EXIT[exit_code])), process)
    assert process.ctx.inputs.structures is structures_before  # same inputs again
    result = inspect(process, generate_relax_node(CALC_EXIT[exit_code]))
    assert result == MlipRelaxBaseWorkChain.exit_codes.ERROR_OUTPUTS_LOST_TWICE.format(status=CALC_EXIT[exit_code].status)


def test_handle_walltime_continues_from_the_checkpoint(generate_workchain, generate_relax_node, aiida_localhost):
    process = generate_workchain("success")
    process.ctx.inputs.metadata = {"options": {"max_wallclock_seconds": 600}}
    node = generate_relax_node(CALC_EXIT.ERROR_SCHEDULER_OUT_OF_WALLTIME)
    remote = orm.RemoteData(computer=aiida_localhost, remote_path="/tmp/killed-job")
    remote.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label="remote_folder")
    remote.store()
    assert restarts(inspect(process, node), process)
    assert process.ctx.inputs.parent_folder.uuid == remote.uuid
    assert process.ctx.inputs.metadata["options"]["max_wallclock_seconds"] == 1200
    # A later restart with other settings (not converged -> more steps) must not reuse that checkpoint.
    process.ctx.children = [generate_relax_node(CALC_EXIT.WARNING_NOT_CONVERGED, "not_converged")]
    process.inspect_process()
    assert "parent_folder" not in process.ctx.inputs


@pytest.mark.parametrize("exit_code", ["ERROR_CLI_INVALID_INPUT", "ERROR_CLI_FAILED"])
def test_handle_cli_rejected_aborts_at_once(generate_workchain, generate_relax_node, exit_code):
    process = generate_workchain("success")
    result = inspect(process, generate_relax_node(CALC_EXIT[exit_code]))
    assert result.status == MlipRelaxBaseWorkChain.exit_codes.ERROR_CLI_REJECTED.status


def test_merge_replaces_rows_by_id_and_keeps_order(aiida_profile):
    first = StructureBatch.read(FIXTURES / "not_converged" / "relaxed.jsonl.gz")
    redo = StructureBatch.read(FIXTURES / "success" / "relaxed.jsonl.gz").select(lambda m, s: m["row_id"] == "licl")
    parameters = orm.Dict({"mlip": "chgnet", "weights_sha256": "abc", "fmax_eV_per_A": 0.01})
    merged = merge_relax_results(
        parameters=parameters, drop_row_ids=orm.List(["si2-strained"]),
        piece_00=StructureBatchData(first), piece_01=StructureBatchData(redo),
    )
    batch = merged["relaxed_structures"].get_batch()
    assert batch.row_ids == ["licl"]
    assert batch.get("licl")[0]["relax_status"] == "converged"  # the later piece wins
    assert merged["output_parameters"]["counts"]["converged"] == 1
    assert merged["output_parameters"]["weights_sha256"] == "abc"
    assert merged["relaxed_structures"].creator.process_label == "merge_relax_results"


@pytest.mark.slow
def test_end_to_end_restart_on_localhost(aiida_profile, battgen_code):
    """Si2 converges at once; strained Si needs restarts with more steps; merged by row_id at the end."""
    si2 = Structure(Lattice.from_parameters(3.84, 3.84, 3.84, 60, 60, 60), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    strained = si2.copy()
    strained.apply_strain(0.05)
    strained.perturb(0.05, min_distance=0.05, seed=1)
    licl = Structure(Lattice.from_parameters(3.63, 3.63, 3.63, 60, 60, 60), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    batch = StructureBatch.from_structures(
        [strained, licl, si2], [{"row_id": "si2-strained"}, {"row_id": "licl"}, {"row_id": "si2"}])
    builder = MlipRelaxBaseWorkChain.get_builder()
    builder.relax.code = battgen_code
    builder.relax.structures = StructureBatchData(batch)
    builder.relax.parameters = orm.Dict({"mlip": "chgnet", "fmax": 0.05, "max_steps": 4})
    results, node = run_get_node(builder)

    assert node.is_finished_ok, node.exit_message
    calcs = sorted(node.called, key=lambda n: n.ctime)
    relax_calcs = [c for c in calcs if c.process_type == "aiida.calculations:battgen.mlip.relax"]
    assert len(relax_calcs) >= 2
    assert relax_calcs[0].exit_status == CALC_EXIT.WARNING_NOT_CONVERGED.status
    assert relax_calcs[1].inputs.parameters["max_steps"] == 8
    assert relax_calcs[1].inputs.structures.n_rows < 3  # only the rows that needed it

    final = results["relaxed_structures"].get_batch()
    assert final.row_ids == ["si2-strained", "licl", "si2"]
    assert set(final.column("relax_status")) == {"converged"}
    assert results["relaxed_structures"].creator.process_label == "merge_relax_results"
    # both strained and unstrained Si end in the same minimum
    assert final.get("si2-strained")[0]["energy_per_atom_eV"] == pytest.approx(final.get("si2")[0]["energy_per_atom_eV"], abs=2e-3)
    assert results["output_parameters"]["counts"]["converged"] == 3
    assert json.dumps(results["output_parameters"].get_dict())  # plain JSON, queryable
