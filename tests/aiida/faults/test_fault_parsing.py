"""What the parsers make of a job killed by the scheduler, an emptied work directory and CPU out-of-memory
errors (no services needed; the real faults are in tests/aiida/test_faults.py)."""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.plugins import ParserFactory

pytestmark = pytest.mark.usefixtures("aiida_profile_clean")


def _killed_calcjob(computer, process_type: str, scheduler_status: int | None, files: dict[str, str]):
    node = orm.CalcJobNode(computer=computer)
    node.set_process_type(f"aiida.calculations:{process_type}")
    node.set_option("resources", {"num_machines": 1})
    node.set_option("error_filename", "battgen.err")
    node.store()
    if scheduler_status is not None:  # what CalcJob.parse_scheduler_output sets before the parser runs
        node.set_exit_status(scheduler_status)
    retrieved = orm.FolderData()
    for name, content in files.items():
        retrieved.base.repository.put_object_from_bytes(content.encode(), name)
    retrieved.base.links.add_incoming(node, LinkType.CREATE, "retrieved")
    retrieved.store()
    return node


@pytest.mark.parametrize(("process_type", "scheduler_status", "expected"), [
    ("battgen.mlip.relax", 120, 120),  # walltime: the relax wrapper resubmits with more time
    ("battgen.mlip.md", 120, 120),  # MD continues from its chunks
    ("battgen.mlip.relax", 140, 140),  # node failure
    ("battgen.mlip.relax", None, 302),  # no scheduler diagnosis: the summary is missing
])
def test_scheduler_diagnosis_wins_over_a_missing_summary(aiida_localhost, process_type, scheduler_status, expected):
    node = _killed_calcjob(aiida_localhost, process_type, scheduler_status, {"battgen.err": "relax: 40%"})
    exit_code = ParserFactory(process_type)(node).parse()
    assert exit_code.status == expected


def test_nothing_retrieved_is_reported(aiida_localhost, caplog):
    node = _killed_calcjob(aiida_localhost, "battgen.mlip.relax", None, {})
    parser = ParserFactory("battgen.mlip.relax")(node)
    assert parser.parse().status == 302
    assert "nothing was retrieved" in caplog.text


@pytest.mark.parametrize("error", [
    "RuntimeError: [enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 400000000 bytes. Error code 12 (Cannot allocate memory)",
    "ImportError: libtorch_cpu.so: failed to map segment from shared object",
    "OSError: [Errno 12] Cannot allocate memory",
])
def test_cpu_out_of_memory_is_recognised(error):
    node = orm.CalcJobNode()
    node.set_process_type("aiida.calculations:battgen.predict")
    exit_code = ParserFactory("battgen.predict")(node).classify_failure({"error": error})
    assert exit_code is not None and exit_code.status == 311
