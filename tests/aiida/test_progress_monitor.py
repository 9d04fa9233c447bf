"""Progress users can see, and threads from resources: the ``battgen.progress`` monitor on a real local
CalcJob (localhost, core.direct), ``aiida-battgen status``, the demo's console filter and daemon-mode
printer, and ``--threads`` derived from ``metadata.options``."""

from __future__ import annotations

import json
import logging

import pytest
from aiida import orm
from aiida.common.folders import SandboxFolder
from aiida.common.links import LinkType
from aiida.engine import ProcessState, run_get_node
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from click.testing import CliRunner

from aiida_battgen.calculations.monitors import progress_monitor
from aiida_battgen.calculations.relax import MlipRelaxCalculation
from aiida_battgen.data.batch import StructureBatchData
from aiida_battgen.tools.demo import DemoConsoleFilter, print_progress_changes
from aiida_battgen.tools.progress import PROGRESS_EXTRA, calcjob_progress, progress_monitor_dict
from aiida_battgen.workchains.relax_base import MlipRelaxBaseWorkChain
from battgen.batch import StructureBatch
from battgen.progress import PROGRESS_FILENAME


def invoke_cli(args: list[str]):
    """Run ``aiida-battgen ARGS``; then put back the database log handler the CLI's logging setup drops."""
    from aiida.common.log import configure_logging

    from aiida_battgen.cli import cmd_root

    try:
        return CliRunner().invoke(cmd_root, args)
    finally:
        configure_logging(with_orm=True)


def _progress_logs(node) -> list[str]:
    return [log.message for log in orm.Log.collection.get_logs_for(node) if log.message.startswith("progress: ")]


@pytest.mark.slow
def test_monitor_reports_progress_of_a_real_local_job(aiida_profile, battgen_code, small_batch):
    """MlipRelaxBaseWorkChain attaches the monitor; the CHGNet job's progress lands in its process report,
    in the node extra and in the retrieved files; ``status`` prints it."""
    rows = [(meta, structure) for meta, structure in small_batch if meta["row_id"].startswith("licl")]  # stable ones
    batch = StructureBatch([s for _, s in rows] * 3, [{"row_id": f"{m['row_id']}-{i}"} for i in (0, 1, 2) for m, _ in rows])
    inputs = {"relax": {"code": battgen_code, "structures": StructureBatchData(batch),
                        "parameters": orm.Dict({"mlip": "chgnet", "fmax": 0.1, "max_steps": 30}),
                        "monitors": {"progress": progress_monitor_dict(interval_s=1)}}}
    _, workchain = run_get_node(MlipRelaxBaseWorkChain, **inputs)
    assert workchain.is_finished_ok, workchain.exit_message
    job = workchain.called[0]
    assert job.inputs.monitors.progress["entry_point"] == "battgen.progress"

    lines = _progress_logs(job)
    assert lines, "the monitor wrote no progress line into the report"
    assert lines[-1].startswith("progress: relax (chgnet): 6/6 struct (100%)") and lines[-1].endswith("[finished]")
    assert len(lines) == len(set(lines))  # only reported when the progress moved
    assert job.base.extras.get(PROGRESS_EXTRA)["done"] == 6

    retrieved = json.loads(job.outputs.retrieved.base.repository.get_object_content(PROGRESS_FILENAME))
    assert (retrieved["done"], retrieved["total"], retrieved["status"]) == (6, 6, "finished")
    assert calcjob_progress(job)[1] == "retrieved"

    result = invoke_cli(["status", str(workchain.pk)])
    assert result.exit_code == 0, result.output
    assert f"MlipRelaxBaseWorkChain<{workchain.pk}>" in result.output
    assert f"MlipRelaxCalculation<{job.pk}> iteration_01 [finished]: relax (chgnet): 6/6 struct (100%)" in result.output

    summary = job.outputs.retrieved.base.repository.get_object_content("battgen-summary.yaml")
    assert "torch_num_threads: 1" in summary  # one cpu in the default resources -> one thread


def test_default_monitor_attached_unless_given(aiida_profile, battgen_code, small_batch):
    structures = StructureBatchData(small_batch)
    process = instantiate_process(get_manager().get_runner(), MlipRelaxBaseWorkChain,
                                  relax={"code": battgen_code, "structures": structures})
    process.setup()
    assert process.ctx.inputs.monitors["progress"]["minimum_poll_interval"] == 30
    own = progress_monitor_dict(interval_s=5)
    process = instantiate_process(get_manager().get_runner(), MlipRelaxBaseWorkChain,
                                  relax={"code": battgen_code, "structures": structures, "monitors": {"progress": own}})
    process.setup()
    assert process.ctx.inputs.monitors["progress"]["minimum_poll_interval"] == 5


def _running_job(aiida_localhost, workdir, caller_label="relax_candidates"):
    top = orm.WorkflowNode().store()
    caller = orm.WorkflowNode()
    caller.base.links.add_incoming(top, LinkType.CALL_WORK, caller_label)
    caller.store()
    job = orm.CalcJobNode(computer=aiida_localhost, process_type="aiida.calculations:battgen.mlip.relax")
    job.set_process_label("MlipRelaxCalculation")
    job.set_process_state(ProcessState.WAITING)
    job.set_remote_workdir(str(workdir))
    job.base.links.add_incoming(caller, LinkType.CALL_CALC, "iteration_01")
    job.store()
    return top, job


def _write_progress(workdir, done, status="running", total=3):
    state = {"progress_format_version": 1, "command": "relax", "status": status, "stage": "relax (chgnet)",
             "done": done, "total": total, "unit": "struct", "current": f"row-{done}", "elapsed_s": 10.0 * done,
             "rate_per_s": 0.1 if done else None, "eta_s": 10.0 * (total - done) if done else None}
    (workdir / PROGRESS_FILENAME).write_text(json.dumps(state))


def test_monitor_reports_only_when_progress_moves(aiida_profile, aiida_localhost, tmp_path):
    _, job = _running_job(aiida_localhost, tmp_path)
    with aiida_localhost.get_transport() as transport:
        assert progress_monitor(job, transport) is None  # no file yet: nothing reported
        assert _progress_logs(job) == []
        _write_progress(tmp_path, 1)
        progress_monitor(job, transport)
        progress_monitor(job, transport)  # unchanged: no second line
        (tmp_path / PROGRESS_FILENAME).write_text('{"done": 2, "sta')  # torn (never with the CLI): skipped
        assert progress_monitor(job, transport) is None
        _write_progress(tmp_path, 2)
        progress_monitor(job, transport)
    assert _progress_logs(job) == [
        "progress: relax (chgnet): 1/3 struct (33%), current row-1, 0.1 struct/s, ETA 20s, elapsed 10s [running]",
        "progress: relax (chgnet): 2/3 struct (67%), current row-2, 0.1 struct/s, ETA 10s, elapsed 20s [running]",
    ]
    assert calcjob_progress(job) == (json.loads((tmp_path / PROGRESS_FILENAME).read_text()), "remote")
    assert calcjob_progress(job, live=False)[1] == "monitor"


def test_status_of_a_running_job_reads_the_remote_file(aiida_profile, aiida_localhost, tmp_path):
    top, job = _running_job(aiida_localhost, tmp_path)
    result = invoke_cli(["status", str(top.pk)])
    assert result.exit_code == 0, result.output
    assert f"MlipRelaxCalculation<{job.pk}> relax_candidates/iteration_01 [waiting]: no progress file yet" in result.output
    _write_progress(tmp_path, 2)
    result = invoke_cli(["status", top.uuid])
    assert "relax (chgnet): 2/3 struct (67%), current row-2" in result.output and "(from remote)" in result.output
    result = invoke_cli(["status", "999999"])
    assert result.exit_code != 0


def test_demo_console_shows_progress_and_drops_routine_reports(aiida_profile, aiida_localhost, tmp_path, capsys):
    _, job = _running_job(aiida_localhost, tmp_path)
    emitted = []

    class Collect(logging.Handler):
        def emit(self, record):
            emitted.append(record.getMessage())

    handler = Collect()
    console = DemoConsoleFilter(handler)
    handler.addFilter(console)
    logger = logging.getLogger("test-demo-console")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        logging.LoggerAdapter(logger, {"dbnode_id": job.pk}).log(25, "progress: relax (chgnet): 1/3 struct (33%)")
        logger.log(25, "[36|MlipRelaxBaseWorkChain|run_process]: launching MlipRelaxCalculation<38> iteration #1")
        logger.log(25, "[36|MlipRelaxBaseWorkChain|on_terminated]: remote folders will not be cleaned")
        logger.warning("CalcJob<104> already marked as `CalcJobState.STASHING`, skipping task_monitor_job")
        logger.warning("CalcJob<104> monitoring failed")  # not a known-harmless line: kept
        logger.log(25, "[13|DiscoveryWorkChain|run_relaxations]: launched MlipRelaxBaseWorkChain<36> for 2 candidates")
    finally:
        logger.removeHandler(handler)
    assert emitted == ["relax_candidates: relax (chgnet): 1/3 struct (33%)",
                       "CalcJob<104> monitoring failed",
                       "[13|DiscoveryWorkChain|run_relaxations]: launched MlipRelaxBaseWorkChain<36> for 2 candidates"]


def test_daemon_mode_prints_each_change_once(aiida_profile, aiida_localhost, tmp_path, capsys):
    top, job = _running_job(aiida_localhost, tmp_path)
    shown: dict[int, str] = {}
    assert print_progress_changes(top, shown) == []
    _write_progress(tmp_path, 1)
    assert print_progress_changes(top, shown) == [
        "relax_candidates: relax (chgnet): 1/3 struct (33%), current row-1, 0.1 struct/s, ETA 20s, elapsed 10s [running]"]
    assert print_progress_changes(top, shown) == []
    assert "relax_candidates: relax (chgnet): 1/3" in capsys.readouterr().out


@pytest.mark.parametrize(("options", "threads"), [
    ({"resources": {"num_machines": 1}}, 1),
    ({"resources": {"num_machines": 1, "num_mpiprocs_per_machine": 4}}, 4),
    ({"resources": {"num_machines": 1, "num_mpiprocs_per_machine": 1, "num_cores_per_mpiproc": 8}}, 8),
    ({"resources": {"num_machines": 1, "num_mpiprocs_per_machine": 4}, "num_threads": 2}, 2),
])
def test_threads_follow_the_resources(aiida_profile, battgen_code, small_batch, options, threads):
    inputs = {"code": battgen_code, "structures": StructureBatchData(small_batch).store(), "metadata": {"options": options}}
    process = instantiate_process(get_manager().get_runner(), MlipRelaxCalculation, **inputs)
    with SandboxFolder() as folder:
        calcinfo = process.prepare_for_submission(folder)
    assert calcinfo.codes_info[0].cmdline_params[-2:] == ["--threads", str(threads)]
    assert PROGRESS_FILENAME in calcinfo.retrieve_list
