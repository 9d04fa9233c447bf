"""Every battgen base work chain on fake finished child nodes (the aiida-quantumespresso pattern): the generic
handlers of BattgenRestartWorkChain, keyed to BattgenCalcJob's exit codes, and each chain's own handlers and
exit codes. No CalcJob runs: ``generate_calc_job_node`` stands in for the child, ``generate_workchain``
instantiates the chain and runs its ``setup``."""

from __future__ import annotations

import io

import pytest
from aiida import orm
from aiida.engine import ExitCode
from aiida.plugins import CalculationFactory, WorkflowFactory

from aiida_battgen.calculations.base import BattgenCalcJob
from aiida_battgen.workchains.restart import BattgenRestartWorkChain

CALC_EXIT = BattgenCalcJob.exit_codes


def _model(kind: str, architecture: str) -> orm.Data:
    from aiida_battgen.data.model import ModelData

    node = ModelData()
    node.base.attributes.set("kind", kind)
    node.base.attributes.set("architecture", architecture)
    return node.store()


def _inputs(entry_point: str, code, batch, structure) -> dict:
    """The smallest valid inputs of each base chain's CalcJob namespace."""
    return {
        "battgen.mlip.relax_base": lambda: {"structures": batch, "parameters": orm.Dict({"max_steps": 10})},
        "battgen.mlip.md_base": lambda: {"structure": structure,
                                         "parameters": orm.Dict({"mlip": "chgnet", "timestep_fs": 2.0})},
        "battgen.generator.train_base": lambda: {"training_structures": batch,
                                                 "parameters": orm.Dict({"generator": "cdvae"})},
        "battgen.predictor.train_base": lambda: {"training_structures": batch, "parameters": orm.Dict(
            {"predictor": "alignn", "targets": ["formation_energy_per_atom_eV"]})},
        "battgen.mlip.train_base": lambda: {"frames": {"emt": orm.SinglefileData(io.BytesIO(b"1\n\nCu 0 0 0\n"),
                                                                                  filename="frames.extxyz")},
                                            "parameters": orm.Dict({})},
        "battgen.generate_base": lambda: {"model": _model("generator", "cdvae"),
                                          "parameters": orm.Dict({"generator": "cdvae", "n": 4, "seed": 7})},
        "battgen.predict_base": lambda: {"structures": batch, "model": _model("predictor", "alignn")},
        "battgen.insertion": lambda: {"structure": structure, "parameters": orm.Dict({"max_steps": 50})},
        "battgen.si_anode": lambda: {"structures": batch},
    }[entry_point]() | {"code": code}


# work chain entry point -> (its inputs namespace, its CalcJob's entry point)
BASE_CHAINS = {
    "battgen.mlip.relax_base": ("relax", "battgen.mlip.relax"),
    "battgen.mlip.md_base": ("md", "battgen.mlip.md"),
    "battgen.generator.train_base": ("train", "battgen.generator.train"),
    "battgen.predictor.train_base": ("train", "battgen.predictor.train"),
    "battgen.mlip.train_base": ("train", "battgen.mlip.train"),
    "battgen.generate_base": ("generate", "battgen.generate"),
    "battgen.predict_base": ("predict", "battgen.predict"),
    "battgen.insertion": ("insertion", "battgen.insertion"),
}


def _si_anode_base():
    from aiida_battgen.workchains.si_anode import SiAnodeBaseWorkChain

    return SiAnodeBaseWorkChain


@pytest.fixture(scope="module")
def licl():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(5.13), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # no symmetry search: fast


@pytest.fixture
def chain_for(generate_workchain, battgen_code, licl):
    """``chain_for(entry_point)``: the base chain set up on valid inputs, with its CalcJob entry point."""
    from aiida_battgen.data.batch import StructureBatchData
    from battgen.batch import StructureBatch

    def _chain(entry_point: str, **extra):
        batch = StructureBatchData(StructureBatch.from_structures([licl], [{"row_id": "licl"}]))
        structure = orm.StructureData(pymatgen=licl)
        if entry_point == "battgen.si_anode":  # the restart wrapper has no entry point of its own
            process_class, namespace, calc = _si_anode_base(), "si_anode", "battgen.si_anode"
        else:
            process_class, (namespace, calc) = WorkflowFactory(entry_point), BASE_CHAINS[entry_point]
        inputs = _inputs(entry_point, battgen_code, batch, structure)
        inputs.update(extra)
        return generate_workchain(process_class, {namespace: inputs}), calc

    return _chain


ALL_CHAINS = [*BASE_CHAINS, "battgen.si_anode"]


def inspect(process, node):
    """Run the handlers on ``node`` as the chain's next finished child."""
    process.ctx.children = [*process.ctx.get("children", []), node]
    process.ctx.iteration = len(process.ctx.children)
    return process.inspect_process()


def restarts(result, process) -> bool:
    return (result is None or result.status == 0) and not process.ctx.get("is_finished", False)


def test_every_base_chain_subclasses_the_restart_base():
    from importlib.metadata import entry_points

    wrappers = [ep.load() for ep in entry_points(group="aiida.workflows") if ep.name.endswith("_base")]
    wrappers.append(_si_anode_base())
    assert {w.__name__ for w in wrappers} >= {"MlipRelaxBaseWorkChain", "MdBaseWorkChain", "GenerateBaseWorkChain",
                                              "PredictBaseWorkChain", "PotentialTrainBaseWorkChain"}
    for wrapper in [*wrappers, WorkflowFactory("battgen.insertion")]:
        assert issubclass(wrapper, BattgenRestartWorkChain), wrapper
        # the generic handlers are the base's, not re-pasted: one definition each
        for name in ("handle_cli_rejected", "handle_outputs_lost", "handle_node_failure", "handle_out_of_walltime"):
            owners = [cls for cls in wrapper.__mro__ if name in vars(cls)]
            assert owners[0] is BattgenRestartWorkChain, (wrapper, name, owners)


def _fresh(process) -> None:
    """Forget earlier children and retries (one instantiated chain serves several cases: instantiating is slow)."""
    process.ctx.children = []
    process.ctx.retries = {}
    process.ctx.inputs.pop("parent_folder", None)
    process.ctx.is_finished = False


def _continued_from(process, node) -> bool:
    """Whether the next run continues from ``node``'s checkpoint (the base's resume: a ``parent_folder``)."""
    return "parent_folder" in process.ctx.inputs and process.ctx.inputs.parent_folder.uuid == node.outputs.remote_folder.uuid


@pytest.mark.parametrize("entry_point", ALL_CHAINS)
def test_generic_handlers(chain_for, generate_calc_job_node, entry_point):
    """CLI rejected (303/304) fails at once with 502; outputs lost (300/302) and node failure (140) resubmit, from
    the checkpoint where the CalcJob takes one, within ``defaults.outputs_lost_retries`` (then 501); an unreadable
    output (301) once; a walltime kill (120) continues with ``defaults.walltime_factor`` times the walltime."""
    process, calc = chain_for(entry_point)
    base_resume = process.resume_from_checkpoint.__func__ is BattgenRestartWorkChain.resume_from_checkpoint

    for label in ("ERROR_CLI_INVALID_INPUT", "ERROR_CLI_FAILED"):
        _fresh(process)
        result = inspect(process, generate_calc_job_node(calc, CALC_EXIT[label]))
        assert result == process.exit_codes.ERROR_CLI_REJECTED.format(status=CALC_EXIT[label].status), label

    budget = process.defaults.outputs_lost_retries
    for label in ("ERROR_MISSING_OUTPUT_FILES", "ERROR_SUMMARY_MISSING", "ERROR_SCHEDULER_NODE_FAILURE"):
        _fresh(process)
        node = generate_calc_job_node(calc, CALC_EXIT[label], remote_path="/tmp/lost-job")
        assert restarts(inspect(process, node), process), label
        if base_resume:
            assert _continued_from(process, node) == process.is_resumable(), label
        second = inspect(process, generate_calc_job_node(calc, CALC_EXIT[label]))
        if budget is None:  # a checkpointed command: every resubmission makes progress, max_iterations bounds them
            assert restarts(second, process), label
        else:
            assert second == process.exit_codes.ERROR_OUTPUTS_LOST_TWICE.format(status=CALC_EXIT[label].status), label

    _fresh(process)
    unreadable = CALC_EXIT.ERROR_OUTPUT_UNREADABLE
    assert restarts(inspect(process, generate_calc_job_node(calc, unreadable)), process)
    assert inspect(process, generate_calc_job_node(calc, unreadable)) == \
        process.exit_codes.ERROR_OUTPUTS_LOST_TWICE.format(status=unreadable.status)

    _fresh(process)
    process.ctx.inputs.metadata = {"options": {"max_wallclock_seconds": 600}}
    node = generate_calc_job_node(calc, CALC_EXIT.ERROR_SCHEDULER_OUT_OF_WALLTIME, remote_path="/tmp/killed-job")
    assert restarts(inspect(process, node), process)
    assert process.ctx.inputs.metadata["options"]["max_wallclock_seconds"] == int(600 * process.defaults.walltime_factor)
    if base_resume:
        assert _continued_from(process, node) == process.is_resumable()


def test_walltime_factor_and_cap_are_class_level_knobs(chain_for, generate_calc_job_node, monkeypatch):
    from aiida.common import AttributeDict

    relax_base = WorkflowFactory("battgen.mlip.relax_base")
    monkeypatch.setattr(relax_base, "defaults", AttributeDict(
        {**relax_base.defaults, "walltime_factor": 3.0, "max_wallclock_seconds": 1500}))
    process, calc = chain_for("battgen.mlip.relax_base")
    process.ctx.inputs.metadata = {"options": {"max_wallclock_seconds": 600}}
    inspect(process, generate_calc_job_node(calc, CALC_EXIT.ERROR_SCHEDULER_OUT_OF_WALLTIME))
    assert process.ctx.inputs.metadata["options"]["max_wallclock_seconds"] == 1500  # 1800 capped


def test_walltime_unknown_and_not_resumable_is_a_plain_resubmission(chain_for, generate_calc_job_node):
    process, calc = chain_for("battgen.predict_base")
    walltime = CALC_EXIT.ERROR_SCHEDULER_OUT_OF_WALLTIME
    assert restarts(inspect(process, generate_calc_job_node(calc, walltime)), process)
    assert inspect(process, generate_calc_job_node(calc, walltime)).status == 501


# --- each chain's own handlers and exit codes ---------------------------------------------------------------
def test_md_unstable_halves_the_timestep_then_fails_with_its_own_exit_code(chain_for, generate_calc_job_node):
    md_exit = CalculationFactory("battgen.mlip.md").exit_codes
    process, calc = chain_for("battgen.mlip.md_base")
    node = generate_calc_job_node(calc, md_exit.ERROR_MD_UNSTABLE, remote_path="/tmp/unstable")
    assert restarts(inspect(process, node), process)
    assert process.ctx.inputs.parameters["timestep_fs"] == 1.0
    assert process.ctx.inputs.parent_folder.uuid == node.outputs.remote_folder.uuid
    process.ctx.inputs.parameters = orm.Dict({**process.ctx.inputs.parameters.get_dict(), "timestep_fs": 0.25})
    result = inspect(process, generate_calc_job_node(calc, md_exit.ERROR_MD_UNSTABLE))
    assert result.status == process.exit_codes.ERROR_TIMESTEP_TOO_SMALL.status == 510
    assert "0.25 fs" in result.message and result.status != process.exit_codes.ERROR_CLI_REJECTED.status


def test_md_budget_stop_continues_and_analysis_failure_is_its_own(chain_for, generate_calc_job_node):
    md_exit = CalculationFactory("battgen.mlip.md").exit_codes
    process, calc = chain_for("battgen.mlip.md_base")
    node = generate_calc_job_node(calc, md_exit.WARNING_MD_INCOMPLETE, remote_path="/tmp/budget")
    assert restarts(inspect(process, node), process)
    assert process.ctx.inputs.parent_folder.uuid == node.outputs.remote_folder.uuid
    result = inspect(process, generate_calc_job_node(calc, md_exit.ERROR_ANALYSIS_FAILED))
    assert result == process.exit_codes.ERROR_ANALYSIS_FAILED.format(status=md_exit.ERROR_ANALYSIS_FAILED.status)


@pytest.mark.parametrize("entry_point", ["battgen.generate_base", "battgen.predict_base"])
def test_out_of_memory_halves_the_batch_then_fails_with_its_own_exit_code(chain_for, generate_calc_job_node,
                                                                          entry_point):
    section = "conditions" if entry_point == "battgen.generate_base" else "options"
    process, calc = chain_for(entry_point)
    parameters = {**(process.ctx.inputs.parameters.get_dict() if "parameters" in process.ctx.inputs else {}),
                  section: {"batch_size": 3}}
    process.ctx.inputs.parameters = orm.Dict(parameters)
    oom = CalculationFactory(calc).exit_codes.ERROR_OUT_OF_MEMORY
    assert restarts(inspect(process, generate_calc_job_node(calc, oom)), process)
    assert process.ctx.inputs.parameters[section]["batch_size"] == 1
    result = inspect(process, generate_calc_job_node(calc, oom))
    assert result.status == process.exit_codes.ERROR_BATCH_SIZE_EXHAUSTED.status == 503


def test_nothing_generated_retries_with_the_next_seed_then_fails(chain_for, generate_calc_job_node):
    nothing = CalculationFactory("battgen.generate").exit_codes.ERROR_NOTHING_GENERATED
    process, calc = chain_for("battgen.generate_base")
    assert restarts(inspect(process, generate_calc_job_node(calc, nothing)), process)
    assert process.ctx.inputs.parameters["seed"] == 8
    result = inspect(process, generate_calc_job_node(calc, nothing))
    assert result.status == process.exit_codes.ERROR_NOTHING_GENERATED_TWICE.status == 510
    assert process.ctx.inputs.parameters["seed"] == 8  # no third seed


@pytest.mark.parametrize("entry_point", ["battgen.generator.train_base", "battgen.predictor.train_base",
                                         "battgen.mlip.train_base"])
def test_training_resumes_from_its_checkpoint_and_model_invalid_is_its_own(chain_for, generate_calc_job_node,
                                                                           entry_point, tmp_path):
    train_exit = CalculationFactory(BASE_CHAINS[entry_point][1]).exit_codes
    process, calc = chain_for(entry_point)
    (tmp_path / "model" / "checkpoints").mkdir(parents=True)
    (tmp_path / "model" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    node = generate_calc_job_node(calc, train_exit.WARNING_TRAINING_INTERRUPTED, remote_path=str(tmp_path))
    assert restarts(inspect(process, node), process)
    assert process.ctx.inputs.parent_folder.uuid == node.outputs.remote_folder.uuid
    # killed before its first checkpoint: train from the start
    empty = generate_calc_job_node(calc, CALC_EXIT.ERROR_SCHEDULER_OUT_OF_WALLTIME, remote_path=str(tmp_path / "none"))
    assert restarts(inspect(process, empty), process)
    assert "parent_folder" not in process.ctx.inputs
    invalid = train_exit.ERROR_MODEL_INVALID
    assert restarts(inspect(process, generate_calc_job_node(calc, invalid)), process)
    result = inspect(process, generate_calc_job_node(calc, invalid))
    assert result.status == process.exit_codes.ERROR_MODEL_INVALID_TWICE.status == 510


def test_insertion_not_converged_doubles_the_steps(chain_for, generate_calc_job_node):
    not_converged = CalculationFactory("battgen.insertion").exit_codes.WARNING_NOT_CONVERGED
    process, calc = chain_for("battgen.insertion")
    assert restarts(inspect(process, generate_calc_job_node(calc, not_converged)), process)
    assert process.ctx.inputs.parameters["max_steps"] == 100


def test_si_anode_budget_stop_continues_from_the_checkpoint(chain_for, generate_calc_job_node):
    incomplete = CalculationFactory("battgen.si_anode").exit_codes.WARNING_INCOMPLETE
    process, calc = chain_for("battgen.si_anode")
    for _ in range(3):  # every call makes progress: no retry budget
        node = generate_calc_job_node(calc, incomplete, remote_path="/tmp/si-anode")
        assert restarts(inspect(process, node), process)
        assert process.ctx.inputs.parent_folder.uuid == node.outputs.remote_folder.uuid


def test_success_needs_no_handler(chain_for, generate_calc_job_node):
    process, calc = chain_for("battgen.insertion")
    assert inspect(process, generate_calc_job_node(calc)) is None
    assert process.ctx.is_finished


def test_own_exit_codes_do_not_reuse_the_generic_ones():
    generic = {code.status for code in BattgenRestartWorkChain.spec().exit_codes.values()}
    for entry_point in ALL_CHAINS:
        chain = _si_anode_base() if entry_point == "battgen.si_anode" else WorkflowFactory(entry_point)
        own = {code.status: label for label, code in chain.spec().exit_codes.items() if code.status not in generic}
        assert all(status >= 510 or status >= 700 for status in own), (entry_point, own)
    assert ExitCode(0).status == 0


@pytest.mark.parametrize("exit_code", ["ERROR_OUT_OF_MEMORY", "ERROR_SCHEDULER_OUT_OF_MEMORY"])
def test_relax_out_of_memory_halves_batch_max_atoms_from_the_checkpoint_then_fails(chain_for, generate_calc_job_node,
                                                                                  exit_code):
    oom = getattr(CalculationFactory("battgen.mlip.relax").exit_codes, exit_code)
    process, calc = chain_for("battgen.mlip.relax_base")
    process.ctx.inputs.parameters = orm.Dict({"max_steps": 10, "engine": "batched"})
    node = generate_calc_job_node(calc, oom, remote_path="/tmp/oom")
    assert restarts(inspect(process, node), process)
    assert process.ctx.inputs.parameters["batch_max_atoms"] == 200  # half the CPU default of 400
    assert process.ctx.inputs.parent_folder.uuid == node.outputs.remote_folder.uuid  # finished rows kept
    process.ctx.inputs.parameters = orm.Dict({"max_steps": 10, "engine": "batched", "batch_max_atoms": 2})
    result = inspect(process, generate_calc_job_node(calc, oom))  # LiCl cell: 2 atoms, one structure in flight
    assert result.status == process.exit_codes.ERROR_BATCH_SIZE_EXHAUSTED.status == 503


def test_relax_out_of_memory_with_the_ase_engine_fails_at_once(chain_for, generate_calc_job_node):
    oom = CalculationFactory("battgen.mlip.relax").exit_codes.ERROR_OUT_OF_MEMORY
    process, calc = chain_for("battgen.mlip.relax_base")
    result = inspect(process, generate_calc_job_node(calc, oom))
    assert result.status == process.exit_codes.ERROR_BATCH_SIZE_EXHAUSTED.status == 503
