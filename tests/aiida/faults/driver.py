"""The AiiDA side of the SLURM and fault-injection tests, run as a subprocess in the test's AIIDA_PATH so the
pytest process never switches profiles: ``python driver.py <command> --profile NAME [json]``.

Commands print one JSON document on their last stdout line:

* ``create-profile {"pg_port", "rmq_port"}``  PostgreSQL + RabbitMQ profile, localhost + battgen code;
* ``setup-slurm {"ssh_port", "ssh_key", "workdir", ...}``  the ``slurm`` computer (core.ssh + core.slurm), codes
  ``battgen@slurm``, ``battgen-smallmem@slurm`` (simulated small-memory node) and ``pw@slurm``;
* ``submit {"kind", ...}``  one process (relax, relax_calc, generate, md, pw, discovery, train, predict) → pk;
* ``wait {"pk", "timeout"}``  bounded wait, then ``describe``;
* ``describe {"pk"}``  state, exit status, outputs, descendants per process type, CalcJobs with their job ids
  and exit statuses, the shortlist (formula, energy) of a discovery, reports.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

# Tiny discovery: ~10 candidates, two relaxation jobs (candidates, references).
TINY_DISCOVERY = {
    "generation": {"n": 12, "conditions": {"max_per_seed": 6}},
    "preselection": {"top_k": 2},
    "relax": {"relax": {"parameters": {"max_steps": 30, "fmax": 0.2}}},
    "shortlist": {"top_k": 2, "max_values": {"e_above_hull_eV_per_atom": 2.0}},
    "known_materials": None,  # the MLIP-referenced hull: these runs are about faults, not novelty
}
SHORT_MD = {"mlip": "chgnet", "npt_time_ps": 0.0, "nvt_time_ps": 0.12, "timestep_fs": 2.0, "sample_every": 5,
            "chunk_steps": 20, "supercell_min_atoms": 16, "working_ion": "Li", "downsampled_max_frames": 20,
            "temperature_K": 900.0, "seed": 7}
SMALL_MEMORY_KB = 300_000  # the simulated node's `ulimit -v` when a job asks for a batch of more than 2 rows


def _options(spec: dict) -> dict:
    options = {"resources": {"num_machines": 1, "num_mpiprocs_per_machine": 1},
               "max_wallclock_seconds": int(spec.get("walltime", 600))}
    if spec.get("prepend_text"):
        options["prepend_text"] = spec["prepend_text"]
    return options


def create_profile(name: str, spec: dict) -> dict:
    from aiida.manage.configuration import get_config

    from aiida_battgen.tools.profiles import PostgresSettings, RabbitmqSettings, setup_all

    result = setup_all(name, postgres=True, postgres_settings=PostgresSettings(port=int(spec.get("pg_port", 5432))),
                       rabbitmq_settings=RabbitmqSettings(port=int(spec.get("rmq_port", 5672))))
    config = get_config()
    # Quick turnaround: failed transport tasks retry after 1 s (default 20 s, doubling), 1 s runner polling.
    for option, value in (("transport.task_retry_initial_interval", 1), ("transport.task_maximum_attempts", 8),
                          ("warnings.rabbitmq_version", False), ("runner.poll.interval", 1)):
        config.set_option(option, value, scope=name)
    config.store()
    return {"profile": name, "created": result["profile_created"]}


def setup_slurm(spec: dict) -> dict:
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    from aiida_battgen.tools.profiles import battgen_executable

    label = spec.get("label", "slurm")
    try:
        computer = orm.load_computer(label)
    except NotExistent:
        computer = orm.Computer(
            label=label, hostname=spec.get("host", "localhost"), description="single-node SLURM over SSH (tests)",
            transport_type=spec.get("transport", "core.ssh"), scheduler_type="core.slurm",
            workdir=spec["workdir"],
        ).store()
        computer.set_mpirun_command(["srun", "-n", "{tot_num_mpiprocs}"])
        computer.set_minimum_job_poll_interval(1.0)
        computer.set_default_mpiprocs_per_machine(2)
        computer.set_prepend_text("export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1")
    user = orm.User.collection.get_default()
    if not computer.is_user_configured(user):
        computer.configure(
            username=spec.get("ssh_user", "root"), port=int(spec.get("ssh_port", 22)), key_filename=spec["ssh_key"],
            look_for_keys=False, allow_agent=False, key_policy="AutoAddPolicy", load_system_host_keys=True,
            safe_interval=0.5, timeout=30,
        )
    codes = {}
    for code_label, prepend in (("battgen", ""), ("battgen-smallmem", SMALL_MEMORY_PREPEND)):
        try:
            code = orm.load_code(f"{code_label}@{label}")
        except NotExistent:
            code = orm.InstalledCode(label=code_label, computer=computer, filepath_executable=battgen_executable(),
                                     default_calc_job_plugin="battgen.mlip.relax", prepend_text=prepend).store()
        codes[code_label] = code.pk
    if Path("/usr/bin/pw.x").exists():
        try:
            code = orm.load_code(f"pw@{label}")
        except NotExistent:
            code = orm.InstalledCode(label="pw", computer=computer, filepath_executable="/usr/bin/pw.x",
                                     default_calc_job_plugin="quantumespresso.pw").store()
        codes["pw"] = code.pk
    with computer.get_transport() as transport:  # fails loudly here when ssh does not work
        transport.makedirs(spec["workdir"], ignore_existing=True)
        retval, stdout, stderr = transport.exec_command_wait("sinfo -h -o %T")
    return {"computer": computer.pk, "codes": codes, "sinfo": stdout.strip(), "sinfo_retval": retval}


# A simulated small-memory node: a job whose batch_size exceeds 2 rows gets `ulimit -v` (kB) too small
# for torch, like a batch that does not fit on a GPU. Reads the job's own config.yaml (plain shell: the job's
# PATH has no Python with PyYAML).
SMALL_MEMORY_PREPEND = (
    "batch_size=$(grep -oE 'batch_size: *[0-9]+' config.yaml | head -n1 | grep -oE '[0-9]+$')\n"
    f"if [ \"${{batch_size:-64}}\" -gt 2 ]; then ulimit -v {SMALL_MEMORY_KB}; fi"
)


def _relax_batch(n_rows: int, supercell: int = 1):
    """Strained LiCl rows; ``supercell`` > 1 makes each row a rattled supercell that takes seconds to relax."""
    import numpy as np
    from pymatgen.core import Lattice, Structure

    from aiida_battgen.data.batch import StructureBatchData
    from battgen.batch import StructureBatch

    structures, meta = [], []
    rng = np.random.default_rng(7)
    for index in range(n_rows):
        licl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.13 + 0.04 * index), ["Li", "Cl"],
                                         [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
        if supercell > 1:
            licl.make_supercell([supercell] * 3)
            licl = Structure(licl.lattice, licl.species, licl.cart_coords + rng.normal(0, 0.08, (len(licl), 3)),
                             coords_are_cartesian=True)
        structures.append(licl)
        meta.append({"row_id": f"licl-{index:02d}"})
    return StructureBatchData(StructureBatch.from_structures(structures, meta))


def _lithium_nitride():
    from aiida import orm
    from pymatgen.core import Lattice, Structure

    structure = Structure(Lattice.hexagonal(3.65, 3.88), ["N", "Li", "Li", "Li"],
                          [[0, 0, 0], [0, 0, 0.5], [1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0]])
    return orm.StructureData(pymatgen=structure)


def _labelled_hosts():
    from aiida_battgen.data.batch import StructureBatchData
    from aiida_battgen.tools.demo import primitive_builtin_hosts

    hosts = primitive_builtin_hosts()
    values = [-float(s.composition.average_electroneg) for s in hosts.structures]  # stand-in label
    return StructureBatchData(hosts.with_columns(formation_energy_per_atom_eV=values))


def submit(spec: dict) -> dict:
    from aiida import orm
    from aiida.engine import submit as submit_process
    from aiida.plugins import CalculationFactory, WorkflowFactory

    kind = spec["kind"]
    computer = spec.get("computer", "slurm")
    code = orm.load_code(f"{spec.get('code', 'battgen')}@{computer}")
    options = _options(spec)
    if kind in ("relax", "relax_calc"):
        structures = _relax_batch(int(spec.get("n_rows", 2)), int(spec.get("supercell", 1)))
        parameters = orm.Dict({"mlip": "chgnet", "fmax": spec.get("fmax", 0.1), "max_steps": spec.get("max_steps", 60)})
        if kind == "relax":
            process = WorkflowFactory("battgen.mlip.relax_base")
            builder = process.get_builder()
            builder.relax.code, builder.relax.structures, builder.relax.parameters = code, structures, parameters
            builder.relax.metadata.options = options
        else:
            builder = CalculationFactory("battgen.mlip.relax").get_builder()
            builder.code, builder.structures, builder.parameters = code, structures, parameters
            builder.metadata.options = options
    elif kind == "generate":
        builder = CalculationFactory("battgen.generate").get_builder()
        builder.code = code
        builder.seed_structures = _relax_batch(2)
        builder.parameters = orm.Dict({"generator": "substitution", "n": 6, "seed": 1,
                                       "conditions": {"threshold": 0.001, "max_per_seed": 3}})
        builder.metadata.options = options
    elif kind == "md":
        builder = WorkflowFactory("battgen.mlip.md_base").get_builder()
        builder.md.code = code
        builder.md.structure = _lithium_nitride()
        builder.md.parameters = orm.Dict({**SHORT_MD, **spec.get("md", {})})
        if spec.get("analysis", True):
            builder.md.analysis = orm.Dict({"uncertainty": "none", "min_hops": 1})
        builder.md.metadata.options = options
    elif kind == "pw":
        builder = _pw_builder(code, options)
    elif kind == "train":
        builder = WorkflowFactory("battgen.predictor.train_base").get_builder()
        builder.train.code = code
        builder.train.training_structures = _labelled_hosts()
        builder.train.parameters = orm.Dict({
            "predictor": "magpie-cnn", "targets": ["formation_energy_per_atom_eV"],
            "split": {"fractions": [0.6, 0.2, 0.2], "seed": 0},
            "hyperparameters": {"conv_filters": 4, "dense_units": [8], "batch_size": 4, "max_epochs": 3,
                                "checkpoint_every_epochs": 1}})
        builder.train.metadata.options = options
    elif kind == "predict":
        builder = WorkflowFactory("battgen.predict_base").get_builder()
        builder.predict.code = code
        builder.predict.model = orm.load_node(spec["model"])
        builder.predict.structures = _labelled_hosts()
        builder.predict.parameters = orm.Dict({"options": {"batch_size": int(spec.get("batch_size", 8))}})
        builder.predict.metadata.options = options
    elif kind == "discovery":
        from aiida_battgen.tools.demo import build_demo_inputs

        overrides = {**TINY_DISCOVERY, **spec.get("overrides", {})}
        builder = build_demo_inputs(code, "fast", overrides=overrides, host_names=spec.get("hosts", ["LiCoO2", "Li2O"]))
        builder.relax.relax.metadata.options = options
        del builder["shortlist_group_label"]
    else:
        raise ValueError(f"unknown kind {kind!r}")
    node = submit_process(builder)
    return {"pk": node.pk, "process_label": node.process_label}


def _pw_builder(code, options):
    from aiida import orm
    from aiida.plugins import CalculationFactory, DataFactory

    upf = DataFactory("pseudo.upf")
    pseudo = upf(open("/usr/share/espresso/pseudo/Si.pz-vbc.UPF", "rb"), filename="Si.pz-vbc.UPF")
    structure = orm.StructureData(cell=[[0.0, 2.715, 2.715], [2.715, 0.0, 2.715], [2.715, 2.715, 0.0]])
    structure.append_atom(position=(0.0, 0.0, 0.0), symbols="Si")
    structure.append_atom(position=(1.3575, 1.3575, 1.3575), symbols="Si")
    kpoints = orm.KpointsData()
    kpoints.set_kpoints_mesh([2, 2, 2])
    builder = CalculationFactory("quantumespresso.pw").get_builder()
    builder.code, builder.structure, builder.kpoints = code, structure, kpoints
    builder.pseudos = {"Si": pseudo}
    builder.parameters = orm.Dict({"CONTROL": {"calculation": "scf"},
                                   "SYSTEM": {"ecutwfc": 16.0, "ecutrho": 64.0},
                                   "ELECTRONS": {"conv_thr": 1e-6}})
    builder.metadata.options = {**options, "withmpi": False}
    return builder


def _pk_of(links, label: str) -> int | None:
    return links[label].pk if label in links else None


def _outputs(node) -> tuple[dict, list[str]]:
    """Output nodes by link label (first of each) and the labels linked more than once. Read from the link
    triples, not ``node.outputs``, whose nesting raises KeyError on a duplicate label — which is what a task
    re-delivered by the broker can leave behind (a CalcJob's outputs attached twice)."""
    from aiida.common.links import LinkType

    found, duplicates = {}, []
    # outputs only: a work chain's CALL links carry labels too (its ``shortlist`` calcfunction beside the
    # ``shortlist`` output it returns)
    for triple in node.base.links.get_outgoing(link_type=(LinkType.CREATE, LinkType.RETURN)).all():
        if triple.link_label in found:
            duplicates.append(triple.link_label)
        found.setdefault(triple.link_label, triple.node)
    return found, sorted(set(duplicates))


def describe(spec: dict) -> dict:
    from aiida import orm

    node = orm.load_node(spec["pk"])
    descendants = node.called_descendants if isinstance(node, orm.WorkflowNode) else []
    counts, stale = {}, {}
    calcjobs = []
    for child in [node, *descendants]:
        key = child.process_label
        target = counts if child.is_terminated else stale
        target[key] = target.get(key, 0) + 1
        if isinstance(child, orm.CalcJobNode):
            outputs, duplicated = _outputs(child)
            calcjobs.append({"pk": child.pk, "label": key, "exit_status": child.exit_status,
                             "state": child.process_state.value if child.process_state else None,
                             "job_id": child.get_job_id(), "remote_workdir": child.get_remote_workdir(),
                             "outputs": sorted(outputs), "duplicate_output_labels": duplicated,
                             "inputs": sorted(child.inputs),
                             "parent_folder_pk": _pk_of(child.inputs, "parent_folder"),
                             "remote_folder_pk": outputs["remote_folder"].pk if "remote_folder" in outputs else None,
                             "retrieved_files": sorted(outputs["retrieved"].base.repository.list_object_names())
                             if "retrieved" in outputs else None,
                             "walltime_s": child.get_option("max_wallclock_seconds"),
                             "rows_from_checkpoint": outputs["output_parameters"].get("rows_from_checkpoint")
                             if "output_parameters" in outputs else None})
    shortlist = []
    node_outputs, node_duplicated = _outputs(node)
    if "shortlist" in node_outputs:
        for meta, structure in node_outputs["shortlist"].get_batch():
            shortlist.append([structure.composition.reduced_formula, meta["row_id"],
                              round(float(meta.get("energy_per_atom_eV") or 0.0), 4),
                              round(float(meta.get("e_above_hull_eV_per_atom") or 0.0), 4)])
    reports = [log.message for log in orm.Log.collection.get_logs_for(node)]
    for child in descendants:
        reports += [f"{child.process_label}<{child.pk}>: {log.message}"
                    for log in orm.Log.collection.get_logs_for(child)]
    result = {
        "pk": node.pk, "process_label": node.process_label,
        "state": node.process_state.value if node.process_state else None,
        "exit_status": node.exit_status, "exit_message": node.exit_message, "terminated": node.is_terminated,
        "paused": node.paused, "wall_time_s": round((node.mtime - node.ctime).total_seconds(), 1),
        "outputs": sorted(node_outputs), "duplicate_output_labels": node_duplicated, "counts": counts, "stale": stale,
        "calcjobs": sorted(calcjobs, key=lambda c: c["pk"]), "shortlist": shortlist, "reports": reports[-40:],
    }
    for key in ("output_parameters", "model"):
        if key in node_outputs and isinstance(node_outputs[key], orm.Dict):
            result[key] = node_outputs[key].get_dict()
        elif key in node_outputs:
            result[key] = node_outputs[key].pk
    return result


def wait(spec: dict) -> dict:
    from aiida import orm

    deadline = time.monotonic() + float(spec.get("timeout", 300))
    node = orm.load_node(spec["pk"])
    while not node.is_terminated and time.monotonic() < deadline:
        time.sleep(1.0)
    return {**describe(spec), "waited_out": not node.is_terminated}


def main() -> None:
    command, profile = sys.argv[1], sys.argv[3]
    spec = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    if command == "create-profile":
        result = create_profile(profile, spec)
    else:
        from aiida import load_profile

        load_profile(profile)
        result = {"setup-slurm": setup_slurm, "submit": submit, "wait": wait, "describe": describe}[command](spec)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
