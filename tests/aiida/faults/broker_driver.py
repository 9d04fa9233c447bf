"""The AiiDA side of the broker / database health tests, run as a subprocess in the test's AIIDA_PATH:
``python broker_driver.py <command> --profile NAME [json]``; one JSON document on the last stdout line.

* ``create-profile {"pg_port", "rmq_port"}`` / ``describe {"pk"}``: as in ``driver.py``;
* ``submit-long {"sleep_s"}``: aiida-core's ``MultiplyAddWorkChain`` (a calcfunction, then an
  ``ArithmeticAddCalculation`` job on localhost whose script first sleeps ``sleep_s``): a work chain and a
  CalcJob that live as long as we want, with no torch and almost no CPU;
* ``census``: every process node of the profile per process type, with its state (duplicates show here);
* ``submit {"kind", ...}``: as in ``driver.py`` (``"computer": "localhost"`` for the local code);
* ``failures``: the exception of every excepted process and the reports of every process.
"""

from __future__ import annotations

import json
import sys

import driver  # same folder: profile creation and process description are shared with the fault suite


def submit_long(spec: dict) -> dict:
    from aiida import orm
    from aiida.common.exceptions import NotExistent
    from aiida.engine import submit
    from aiida.plugins import WorkflowFactory

    sleep_s = int(spec.get("sleep_s", 60))
    label = f"bash-sleep{sleep_s}"
    try:
        code = orm.load_code(f"{label}@localhost")
    except NotExistent:
        code = orm.InstalledCode(label=label, computer=orm.load_computer("localhost"), filepath_executable="/bin/bash",
                                 default_calc_job_plugin="core.arithmetic.add",
                                 prepend_text=f"sleep {sleep_s}").store()
    builder = WorkflowFactory("core.arithmetic.multiply_add").get_builder()
    builder.code, builder.x, builder.y, builder.z = code, orm.Int(3), orm.Int(4), orm.Int(5)
    node = submit(builder)
    return {"pk": node.pk}


def census(spec: dict) -> dict:
    from aiida import orm

    rows: dict[str, dict[str, int]] = {}
    query = orm.QueryBuilder().append(orm.ProcessNode, project=["attributes.process_label",
                                                                 "attributes.process_state"])
    for label, state in query.iterall():
        rows.setdefault(label, {}).setdefault(state or "none", 0)
        rows[label][state or "none"] += 1
    return rows


def failures(spec: dict) -> dict:
    """The last lines of the exception of every excepted process, and every process's reports."""
    from aiida import orm

    found = {}
    for node in orm.QueryBuilder().append(orm.ProcessNode).all(flat=True):
        logs = [log.message for log in orm.Log.collection.get_logs_for(node)]
        if node.is_excepted or logs:
            found[f"{node.process_label}<{node.pk}>"] = {
                "exception": (node.exception or "").strip().splitlines()[-3:], "reports": logs[-5:]}
    return found


def main() -> None:
    command, profile = sys.argv[1], sys.argv[3]
    spec = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    if command == "create-profile":
        result = driver.create_profile(profile, spec)
    else:
        from aiida import load_profile

        load_profile(profile)
        result = {"submit-long": submit_long, "census": census, "failures": failures, "submit": driver.submit, "describe": driver.describe}[command](spec)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
