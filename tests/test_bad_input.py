"""Bad input at every public entry point: a clear message or exit code, and nothing half-stored.

One table per kind of entry point, sharing the same bad inputs (malformed CIF / extended XYZ / batch
files, empty batches, overlapping atoms, elements the model does not know, a model whose files do not
match its manifest, unknown protocol keys, negative or absurd thresholds, a missing Materials Project
API key):

* every ``battgen`` CLI command (``battgen.cli.COMMANDS``): exit code 2 and a phrase of the message; the
  working directory holds only what was there plus ``battgen-summary.yaml``;
* ``get_builder_from_protocol`` of every ``battgen.*`` work chain that has one: a named exception, and no
  node stored;
* every ``battgen.*`` calcfunction: a non-zero exit status with a phrase (or a named exception), and no
  new node but the failed process node itself (no outputs, no half-written batch).

A command, work chain or calcfunction whose module does not exist yet (being written in parallel) is
skipped with that reason. A command without a row fails ``test_every_command_has_bad_input_cases``; a
calcfunction without a bad-value row fails ``test_every_calcfunction_has_a_bad_value_case`` unless it is
listed there (every calcfunction, new ones included, gets the wrong-type check).
"""

from __future__ import annotations

import io

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiida import orm
from pymatgen.core import Lattice, Structure

from battgen.batch import StructureBatch
from battgen.cli import COMMANDS, EXIT_INVALID_INPUT, SUMMARY_FILENAME, run_command

# --- the bad inputs ------------------------------------------------------------------------------------

MALFORMED_CIF = """data_broken
_cell_length_a 5.13
_cell_length_b five
_symmetry_space_group_name_H-M 'P 1'
loop_
 _atom_site_label
 _atom_site_fract_x
 Li1 0.0 0.0
"""
MALFORMED_EXTXYZ = """2
Lattice="5.1 0 0 0 5.1 0 0 0 5.1" Properties=species:S:1:pos:R:3 pbc="T T T"
Li 0.0 0.0
Cl 2.5 2.5 two
"""


def _licl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.13), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _overlapping() -> Structure:
    """Two atoms 0.1 Å apart: no chemistry, a broken structure."""
    return Structure(Lattice.cubic(4.0), ["Li", "O"], [[0, 0, 0], [0.025, 0, 0]])


def _unsupported_element() -> Structure:
    """Oganesson: no MLIP or predictor of ours (CHGNet knows Z <= 94) was trained on it."""
    return Structure(Lattice.cubic(5.0), ["Og", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def write_input(kind: str, path: Path) -> Path:
    """Write one kind of bad (or reference) input at ``path``."""
    if kind == "garbage_batch":
        path.write_bytes(b"\x00\x01 this is not gzip \xff" * 8)
    elif kind == "truncated_batch":
        good = path.with_name("good.jsonl.gz")
        StructureBatch.from_structures([_licl(), _licl()]).write(good)
        path.write_bytes(good.read_bytes()[:-40])
        good.unlink()
    elif kind == "empty_batch":
        StructureBatch().write(path)
    elif kind == "overlap_batch":
        StructureBatch.from_structures([_overlapping()], [{"row_id": "overlap", "energy_eV": -5.0}]).write(path)
    elif kind == "og_batch":
        StructureBatch.from_structures([_unsupported_element()], [{"row_id": "og", "energy_eV": -3.0}]).write(path)
    elif kind == "licl_batch":
        StructureBatch.from_structures([_licl()], [{"row_id": "licl", "energy_eV": -7.0}]).write(path)
    elif kind == "malformed_cif":
        path.write_text(MALFORMED_CIF)
    elif kind == "malformed_extxyz":
        path.write_text(MALFORMED_EXTXYZ)
    elif kind == "overlap_cif":
        _overlapping().to(filename=str(path))
    elif kind == "licl_extxyz":
        from ase.io import write
        from pymatgen.io.ase import AseAtomsAdaptor

        write(path, AseAtomsAdaptor.get_atoms(_licl()), format="extxyz")
    elif kind == "licl_structure_json":
        _licl().to(filename=str(path))
    elif kind == "og_structure_json":
        _unsupported_element().to(filename=str(path))
    elif kind == "overlap_structure_json":
        _overlapping().to(filename=str(path))
    elif kind in ("tampered_model", "tampered_cdvae_model"):
        from battgen.models import write_manifest

        path.mkdir()
        (path / "weights.pt").write_bytes(b"trained weights")
        if kind == "tampered_model":
            write_manifest(path, "predictor", "magpie-cnn", {"hidden": 8})
        else:
            write_manifest(path, "generator", "cdvae", {"hidden": 8})
        (path / "weights.pt").write_bytes(b"changed after training")
    else:
        raise ValueError(kind)
    return path


# --- battgen CLI --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliCase:
    command: str
    label: str
    config: dict[str, Any]
    phrase: str  # regular expression the summary's error (exit 2) or its outputs (exit 0) must match
    files: dict[str, str] = field(default_factory=dict)  # file name in the workdir -> kind (write_input)
    env: dict[str, str | None] = field(default_factory=dict)
    # 0 where bad rows of a batch are a per-row outcome by design (a relaxation marks the row and goes on
    # with the others): the outputs then say what happened to the row.
    exit_code: int = EXIT_INVALID_INPUT


CLI_CASES = [
    # relax (CHGNet)
    CliCase("relax", "malformed-batch", {}, r"cannot read the input batch.*unreadable",
            {"structures.jsonl.gz": "garbage_batch"}),
    CliCase("relax", "truncated-batch", {}, r"cannot read the input batch", {"structures.jsonl.gz": "truncated_batch"}),
    CliCase("relax", "empty-batch", {}, r"n_rows: 0", {"structures.jsonl.gz": "empty_batch"}, exit_code=0),
    CliCase("relax", "overlapping-atoms", {}, r"exploded: 1", {"structures.jsonl.gz": "overlap_batch"}, exit_code=0),
    CliCase("relax", "unsupported-element", {}, r"unsupported_element: 1[\s\S]*unsupported_elements:\n- Og",
            {"structures.jsonl.gz": "og_batch"}, exit_code=0),
    CliCase("relax", "negative-fmax", {"fmax": -0.05}, r"fmax must be a positive number",
            {"structures.jsonl.gz": "licl_batch"}),
    CliCase("relax", "zero-steps", {"max_steps": 0}, r"max_steps must be a positive integer",
            {"structures.jsonl.gz": "licl_batch"}),
    CliCase("relax", "unknown-mlip", {"mlip": "no-such-mlip"}, r"no-such-mlip", {"structures.jsonl.gz": "licl_batch"}),
    CliCase("relax", "unknown-key", {"fmax_eV": 0.1}, r"unknown relax setting", {"structures.jsonl.gz": "licl_batch"}),
    # screen
    CliCase("screen", "malformed-batch", {"input": "in.jsonl.gz"}, r"unreadable|not a",
            {"in.jsonl.gz": "garbage_batch"}),
    CliCase("screen", "empty-batch", {"input": "in.jsonl.gz"}, r"n_input: 0", {"in.jsonl.gz": "empty_batch"},
            exit_code=0),
    CliCase("screen", "overlapping-atoms", {"input": "in.jsonl.gz"}, r"n_passed: 0", {"in.jsonl.gz": "overlap_batch"},
            exit_code=0),
    CliCase("screen", "negative-distance", {"input": "in.jsonl.gz", "settings": {"min_distance_A": -0.5}},
            r"min_distance_A", {"in.jsonl.gz": "licl_batch"}),
    CliCase("screen", "unknown-key", {"input": "in.jsonl.gz", "thresholds": {}}, r"unknown config key",
            {"in.jsonl.gz": "licl_batch"}),
    # generate (substitution)
    CliCase("generate", "malformed-seeds", {"generator": "substitution", "n": 5, "input": "seeds.jsonl.gz"},
            r"unreadable|not a", {"seeds.jsonl.gz": "garbage_batch"}),
    CliCase("generate", "empty-seeds", {"generator": "substitution", "n": 5, "input": "seeds.jsonl.gz"},
            r"seed batch has no rows", {"seeds.jsonl.gz": "empty_batch"}),
    CliCase("generate", "negative-n", {"generator": "substitution", "n": -5, "input": "seeds.jsonl.gz"},
            r"\bn must be a non-negative integer, got -5", {"seeds.jsonl.gz": "licl_batch"}),
    CliCase("generate", "negative-threshold",
            {"generator": "substitution", "n": 5, "input": "seeds.jsonl.gz", "conditions": {"threshold": -1}},
            r"threshold", {"seeds.jsonl.gz": "licl_batch"}),
    CliCase("generate", "tampered-model", {"generator": "cdvae", "n": 2, "options": {"model": "model"}},
            r"changed since training", {"model": "tampered_cdvae_model"}),
    # train-generator / train-predictor
    CliCase("train-generator", "malformed-batch", {"generator": "cdvae", "train": "train.jsonl.gz"},
            r"unreadable|not a", {"train.jsonl.gz": "garbage_batch"}),
    CliCase("train-generator", "empty-batch", {"generator": "cdvae", "train": "train.jsonl.gz"},
            r"no training structures", {"train.jsonl.gz": "empty_batch"}),
    CliCase("train-predictor", "malformed-batch",
            {"predictor": "magpie-cnn", "train": "train.jsonl.gz", "targets": ["band_gap_eV"]},
            r"unreadable|not a", {"train.jsonl.gz": "garbage_batch"}),
    CliCase("train-predictor", "empty-batch",
            {"predictor": "magpie-cnn", "train": "train.jsonl.gz", "targets": ["band_gap_eV"]},
            r"no rows|empty|too few|at least", {"train.jsonl.gz": "empty_batch"}),
    # predict
    CliCase("predict", "tampered-model", {"predictor": "magpie-cnn", "model": "model", "input": "in.jsonl.gz"},
            r"changed since training", {"model": "tampered_model", "in.jsonl.gz": "licl_batch"}),
    CliCase("predict", "malformed-batch", {"predictor": "magpie-cnn", "model": "model", "input": "in.jsonl.gz"},
            r"changed since training|unreadable", {"model": "tampered_model", "in.jsonl.gz": "garbage_batch"}),
    # evaluate
    CliCase("evaluate", "malformed-batch", {"generated": "gen.jsonl.gz"}, r"unreadable|not a",
            {"gen.jsonl.gz": "garbage_batch"}),
    CliCase("evaluate", "empty-batch", {"generated": "gen.jsonl.gz"}, r"no rows|empty",
            {"gen.jsonl.gz": "empty_batch"}),
    # train-potential (NequIP)
    CliCase("train-potential", "malformed-extxyz", {"frames": ["frames.extxyz"]}, r"frames\.extxyz",
            {"frames.extxyz": "malformed_extxyz"}),
    # md
    CliCase("md", "overlapping-atoms", {}, r"overlapping|apart", {"structure.json": "overlap_structure_json"}),
    CliCase("md", "unsupported-element", {}, r"\['Og'\] not supported", {"structure.json": "og_structure_json"}),
    CliCase("md", "negative-temperature", {"temperature_K": -300}, r"temperature_K must be a positive number \(K\)",
            {"structure.json": "licl_structure_json"}),
    CliCase("md", "absurd-temperature", {"temperature_K": 1e7}, r"temperature_K: 1e\+07 K is above 10000 K",
            {"structure.json": "licl_structure_json"}),
    # diffusion
    CliCase("diffusion", "not-an-md-directory", {"trajectories": ["run"], "working_ion": "Li"},
            r"not a battgen md work directory"),
    # query-mp
    CliCase("query-mp", "missing-api-key", {"query": {"elements": ["Li", "O"], "limit": 5}},
            r"MP_API_KEY", env={"MP_API_KEY": None, "PMG_MAPI_KEY": None}),
    CliCase("query-mp", "key-in-config", {"query": {"elements": ["Li"]}, "api_key": "0123456789abcdef"},
            r"do not put the API key in the config"),
    # hull
    CliCase("hull", "malformed-batch", {"structures": "in.jsonl.gz"}, r"unreadable|not a",
            {"in.jsonl.gz": "garbage_batch"}),
    CliCase("hull", "empty-batch", {"structures": "in.jsonl.gz"}, r"none of the 0 rows|no rows|empty",
            {"in.jsonl.gz": "empty_batch"}),
    CliCase("hull", "unknown-key", {"structures": "in.jsonl.gz", "reference_batch": "in.jsonl.gz", "labl": "x"},
            r"unknown config key.*labl", {"in.jsonl.gz": "licl_batch"}),
    # channels (Zeo++)
    CliCase("channels", "malformed-cif", {"input": "host.cif"}, r"host\.cif", {"host.cif": "malformed_cif"}),
    CliCase("channels", "malformed-extxyz", {"input": "host.extxyz"}, r"host\.extxyz",
            {"host.extxyz": "malformed_extxyz"}),
    CliCase("channels", "negative-probe", {"input": "in.jsonl.gz", "probe_radius_A": -1.0}, r"probe_radius_A",
            {"in.jsonl.gz": "licl_batch"}),
    # insertion
    CliCase("insertion", "malformed-batch", {"input": "in.jsonl.gz"}, r"unreadable|not a",
            {"in.jsonl.gz": "garbage_batch"}),
    # si-anode
    CliCase("si-anode", "malformed-batch", {}, r"cannot read the input batch",
            {"structures.jsonl.gz": "garbage_batch"}),
    CliCase("si-anode", "negative-fmax", {"fmax": -1}, r"fmax", {"structures.jsonl.gz": "licl_batch"}),
]


def _command_module_exists(command: str) -> bool:
    import importlib.util

    module = COMMANDS[command].split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: f"{c.command}-{c.label}")
def test_cli_rejects_bad_input(case: CliCase, tmp_path, monkeypatch):
    if not _command_module_exists(case.command):
        pytest.skip(f"{COMMANDS[case.command]} does not exist yet (being written in parallel)")
    for name, value in case.env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    for name, kind in case.files.items():
        write_input(kind, tmp_path / name)
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))

    code, summary = run_command(case.command, case.config, tmp_path)

    assert code == case.exit_code, f"exit {code}: {summary.get('error')}\n{summary.get('traceback', '')}"
    if case.exit_code != EXIT_INVALID_INPUT:
        outputs = yaml.safe_dump(summary["outputs"], sort_keys=True)
        assert re.search(case.phrase, outputs), outputs
        return
    assert re.search(case.phrase, summary["error"], re.IGNORECASE), summary["error"]
    after = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert sorted(set(after) - set(before)) == [SUMMARY_FILENAME], "invalid input left files behind"


def test_every_command_has_bad_input_cases():
    assert sorted(set(COMMANDS) - {case.command for case in CLI_CASES}) == []


def test_cli_exit_code_of_the_console_script(tmp_path, battgen_executable):
    """The same rejection through the installed ``battgen`` script a CalcJob runs: exit 2, one file left."""
    import subprocess

    write_input("garbage_batch", tmp_path / "structures.jsonl.gz")
    (tmp_path / "config.yaml").write_text("fmax: 0.1\n")
    result = subprocess.run([battgen_executable, "relax", "--config", "config.yaml", "--workdir", "."],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == EXIT_INVALID_INPUT, result.stderr
    assert "invalid_input: cannot read the input batch" in result.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["config.yaml", SUMMARY_FILENAME, "structures.jsonl.gz"])


# --- AiiDA: shared helpers -----------------------------------------------------------------------------


def _battgen_entry_points(group: str) -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=group) if ep.name.startswith("battgen.")}


def _load(entry_point) -> Any:
    """The entry point's object, or a skip naming the module that does not exist yet."""
    try:
        return entry_point.load()
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"{entry_point.value} cannot be loaded yet (being written in parallel): {exc}")


def _count_nodes(node_class=None) -> int:
    return orm.QueryBuilder().append(node_class or orm.Node).count()


# --- AiiDA: work chain builders --------------------------------------------------------------------------

WORKFLOW_ENTRY_POINTS = sorted(_battgen_entry_points("aiida.workflows"))


def _builder_arguments(parameters, localhost) -> dict[str, Any]:
    """Unstored stand-ins for the required arguments of ``get_builder_from_protocol``, by name."""
    from aiida_battgen.data.batch import StructureBatchData
    from aiida_battgen.data.model import ModelData

    def batch():
        return StructureBatchData(StructureBatch.from_structures([_licl()]))

    recipes = {
        "code": lambda: orm.InstalledCode(label="bad-input", computer=localhost, filepath_executable="/bin/true"),
        "structure": lambda: orm.StructureData(pymatgen=_licl()),
        "structures": batch, "seed_structures": batch, "candidates": batch,
        "models": dict, "voltage_model": ModelData,
    }
    arguments = {}
    for name, parameter in parameters.items():
        if name == "cls" or parameter.default is not parameter.empty or parameter.kind in (
                parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name not in recipes:
            pytest.skip(f"no stand-in for the required builder argument {name!r} in this table")
        arguments[name] = recipes[name]()
    return arguments


@pytest.mark.parametrize("bad", ["unknown-key", "unknown-nested-key", "unknown-protocol"])
@pytest.mark.parametrize("entry_point", WORKFLOW_ENTRY_POINTS)
def test_builder_rejects_bad_protocol_input(entry_point, bad, aiida_profile, aiida_localhost):
    import inspect

    workchain = _load(_battgen_entry_points("aiida.workflows")[entry_point])
    if not hasattr(workchain, "get_builder_from_protocol"):
        pytest.skip(f"{entry_point} has no get_builder_from_protocol (built from its ports)")
    arguments = _builder_arguments(inspect.signature(workchain.get_builder_from_protocol).parameters, aiida_localhost)
    if bad == "unknown-key":
        arguments["overrides"], phrase = {"no_such_key": 1}, r"unknown protocol key 'no_such_key'"
    elif bad == "unknown-nested-key":
        nested = sorted(k for k, v in workchain.get_protocol_inputs().items() if isinstance(v, dict))
        if not nested:
            pytest.skip(f"{entry_point}'s protocol has no nested settings")
        arguments["overrides"] = {nested[0]: {"no_such_key": 1}}
        phrase = rf"unknown protocol key '{nested[0]}\.no_such_key'"
    else:
        arguments["protocol"], phrase = "no-such-protocol", r"unknown protocol 'no-such-protocol'"
    before = _count_nodes()

    with pytest.raises((KeyError, ValueError)) as caught:
        workchain.get_builder_from_protocol(**arguments)

    assert re.search(phrase, str(caught.value)), str(caught.value)
    assert _count_nodes() == before, "a rejected builder stored nodes"


# Values a builder accepts (they are well-formed) but the work chain's input validator must refuse at
# launch, before anything is stored.
DISCOVERY_BAD_VALUES = [
    ("negative-top-k", {"shortlist": {"top_k": -1}}, r"shortlist.top_k` must be a positive integer"),
    ("zero-preselection", {"preselection": {"top_k": 0}}, r"preselection.top_k` must be a positive integer"),
    ("negative-n", {"generation": {"n": -10}}, r"`n` must be a positive integer"),
    ("unknown-generator", {"generation": {"generator": "alchemy"}}, r"unknown generator 'alchemy'"),
    ("trained-generator-without-model", {"generation": {"generator": "cdvae"}},
     r"needs a trained model as `generator_models.cdvae`"),
    ("typo-in-a-shortlist-column", {"shortlist": {"max_values": {"e_above_hull": 0.1}}},
     r"`shortlist.max_values.e_above_hull`: no step before `shortlist` writes such a column.*e_above_hull_eV_per_atom"),
]


@pytest.mark.parametrize("label, overrides, phrase", DISCOVERY_BAD_VALUES, ids=[c[0] for c in DISCOVERY_BAD_VALUES])
def test_discovery_launch_rejects_bad_values(label, overrides, phrase, aiida_profile, aiida_localhost):
    from aiida.engine import run_get_node
    from aiida.plugins import WorkflowFactory

    from aiida_battgen.data.batch import StructureBatchData

    code = orm.InstalledCode(label="bad-input", computer=aiida_localhost, filepath_executable="/bin/true")
    builder = WorkflowFactory("battgen.discovery").get_builder_from_protocol(
        code, seed_structures=StructureBatchData(StructureBatch.from_structures([_licl()])), protocol="fast",
        overrides=overrides)
    before = _count_nodes()

    with pytest.raises(ValueError) as caught:
        run_get_node(builder)

    assert re.search(phrase, str(caught.value)), str(caught.value)
    assert _count_nodes() == before, "a rejected launch stored nodes"


# --- AiiDA: calcfunctions --------------------------------------------------------------------------------

CALCULATION_ENTRY_POINTS = _battgen_entry_points("aiida.calculations")


def _batch_node(kind: str = "licl"):
    from aiida_battgen.data.batch import StructureBatchData

    structures = {"licl": [_licl()], "empty": [], "overlap": [_overlapping()], "og": [_unsupported_element()],
                  "two": [_licl(), _licl()]}[kind]
    meta = [{"row_id": f"{kind}-{i}", "energy_eV": -7.0} for i in range(len(structures))]
    if kind == "licl":
        meta = [{"row_id": "licl"}]  # no energy_eV: cannot go on a hull
    return StructureBatchData(StructureBatch(structures, meta))


def _tampered_model_node(tmp_path: Path):
    """A ModelData whose stored weights no longer match the sha256 in its manifest."""
    from aiida_battgen.data.model import ModelData
    from battgen.models import write_manifest

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.pt").write_bytes(b"trained weights")
    write_manifest(model_dir, "predictor", "magpie-cnn", {"hidden": 8})
    node = ModelData.from_directory(model_dir)
    node.base.repository.put_object_from_bytes(b"changed after training", "weights.pt")
    return node


def _snapshot_node(tmp_path: Path, name: str, kind: str):
    from aiida_battgen.data.snapshot import SourceSnapshotData

    return SourceSnapshotData(write_input(kind, tmp_path / name))


def _dict(**values):
    return orm.Dict(values)


@dataclass(frozen=True)
class FunctionCase:
    entry_point: str
    label: str
    inputs: Any  # callable(tmp_path) -> dict of input nodes (stored before counting)
    phrase: str  # regular expression the exit message (or the raised error) must match
    exit_status: int | None  # None: the call must raise (the process excepts or never starts)


def _ints(*names, dynamic: str | None = None):
    def make(_):
        inputs = {name: orm.Int(1) for name in names}
        if dynamic:
            inputs[dynamic] = orm.Int(1)
        return inputs
    return make


FUNCTION_CASES = [
    # screening
    FunctionCase("battgen.screen_validity", "empty-batch", lambda _: {"structures": _batch_node("empty")},
                 r"input batch `structures` has no rows", 320),
    FunctionCase("battgen.screen_validity", "negative-distance",
                 lambda _: {"structures": _batch_node(), "parameters": _dict(min_distance_A=-0.5)},
                 r"min_distance_A", 321),
    FunctionCase("battgen.screen_charge_neutrality", "unknown-key",
                 lambda _: {"structures": _batch_node(), "parameters": _dict(pauling=True)},
                 r"unknown key\(s\) \['pauling'\]", 321),
    FunctionCase("battgen.screen_uniqueness", "negative-tolerance",
                 lambda _: {"structures": _batch_node(), "parameters": _dict(ltol=-0.2)}, r"ltol", 321),
    FunctionCase("battgen.screen_novelty", "empty-reference",
                 lambda _: {"structures": _batch_node(), "reference": _batch_node("empty")},
                 r"input batch `reference` has no rows", 320),
    FunctionCase("battgen.merge_known_materials", "not-a-reference-file",
                 lambda _: {"Li_O": orm.SinglefileData(io.BytesIO(b"material_id,cif\n"), filename="Li-O.csv")},
                 r"invalid Materials Project snapshot: Li_O", 334),
    # generation
    FunctionCase("battgen.generate_substitution", "empty-seeds",
                 lambda _: {"seeds": _batch_node("empty"), "parameters": _dict(n=5), "seed": orm.Int(0)},
                 r"input batch `seeds` has no rows", 320),
    FunctionCase("battgen.generate_substitution", "negative-threshold",
                 lambda _: {"seeds": _batch_node(), "parameters": _dict(n=5, conditions={"threshold": -1.0}),
                            "seed": orm.Int(0)}, r"threshold", 321),
    FunctionCase("battgen.generate_substitution", "absurd-n",
                 lambda _: {"seeds": _batch_node(), "parameters": _dict(n=-3), "seed": orm.Int(0)},
                 r"'n' must be a positive integer", 321),
    # sources
    FunctionCase("battgen.batch_from_snapshot", "overlapping-atoms-cif",
                 lambda tmp: {"snapshot": _snapshot_node(tmp, "stacked.cif", "overlap_cif")},
                 r"no usable structure in stacked\.cif.*overlapping_atoms", 310),
    FunctionCase("battgen.batch_from_snapshot", "unknown-filter",
                 lambda tmp: {"snapshot": _snapshot_node(tmp, "good.extxyz", "licl_extxyz"),
                              "parameters": _dict(element=["Li"])}, r"unknown parameter\(s\) \['element'\]", 210),
    FunctionCase("battgen.batch_from_snapshot", "negative-max-sites",
                 lambda tmp: {"snapshot": _snapshot_node(tmp, "good.extxyz", "licl_extxyz"),
                              "parameters": _dict(max_sites=-4)}, r"max_sites must be a positive integer", 210),
    # stability
    FunctionCase("battgen.energy_above_hull", "no-energies",
                 lambda _: {"structures": _batch_node(), "reference": _batch_node("two")},
                 r"none of the 1 candidate rows has energy_eV", 330),
    FunctionCase("battgen.energy_above_hull", "unknown-key",
                 lambda _: {"structures": _batch_node("two"), "reference": _batch_node("two"),
                            "parameters": _dict(compatability="MP2020")}, r"compatability", 333),
    FunctionCase("battgen.elemental_references", "unsupported-element", lambda _: {"batch": _batch_node("og")},
                 r"Og", 331),
    FunctionCase("battgen.elemental_reference_structure", "unsupported-element",
                 lambda _: {"element": orm.Str("Og")}, r"no elemental reference: .*Og", 331),
    FunctionCase("battgen.elemental_reference_structure", "not-an-element",
                 lambda _: {"element": orm.Str("Lithium")}, r"no elemental reference", 331),
    # selection and bookkeeping
    FunctionCase("battgen.shortlist", "negative-top-k",
                 lambda _: {"structures": _batch_node(), "parameters": _dict(top_k=-1)}, r"top_k", 321),
    FunctionCase("battgen.shortlist", "unknown-key",
                 lambda _: {"structures": _batch_node(), "parameters": _dict(max_value={"x": 1})}, r"max_value", 321),
    FunctionCase("battgen.extract_structure", "missing-row",
                 lambda _: {"structures": _batch_node(), "row_id": orm.Str("nope")},
                 r"no row 'nope'", 322),
    FunctionCase("battgen.merge_batches", "duplicate-row-ids",
                 lambda _: {"a": _batch_node("two"), "b": _batch_node("two")}, r"duplicate row_id", 323),
    FunctionCase("battgen.select_relax_rows", "unknown-status",
                 lambda _: {"structures": _batch_node(), "statuses": orm.List(["not_converged", "exlpoded"])},
                 r"unknown relax status\(es\) \['exlpoded'\]", 321),
    FunctionCase("battgen.funnel_summary", "unknown-stage", lambda _: {"typo_stage": _batch_node()},
                 r"unknown funnel stage", None),
    FunctionCase("battgen.count_rows", "names-do-not-match",
                 lambda _: {"stage_names": orm.List(["a", "b"]), "stage_00": _batch_node()},
                 r"2 stage names for 1 batches", 321),
    # properties
    FunctionCase("battgen.campaign_finetune_set", "round-zero",
                 lambda _: {"previous": _batch_node(), "survivors": _batch_node("two"), "round_index": orm.Int(0)},
                 r"`round_index` must be a round number >= 1", 321),
    FunctionCase("battgen.campaign_summary", "unknown-label",
                 lambda _: {"parameters": _dict(name="x"), "round1_batch": _batch_node()},
                 r"input label\(s\) \['round1_batch'\] name no round batch", 322),
    FunctionCase("battgen.capacity", "fraction-above-one",
                 lambda _: {"structures": _batch_node(), "parameters": _dict(working_ion="Li", fraction=2.0)},
                 r"`fraction` must be in \(0, 1\]", 321),
    FunctionCase("battgen.capacity", "not-an-element",
                 lambda _: {"structures": _batch_node(), "parameters": _dict(working_ion="Lithium")},
                 r"must be an element symbol", 321),
    FunctionCase("battgen.predict_properties", "wrong-model-hash",
                 lambda tmp: {"structures": _batch_node(), "model": _tampered_model_node(tmp)},
                 r"changed since training", None),
    FunctionCase("battgen.predict_properties", "empty-batch",
                 lambda tmp: {"structures": _batch_node("empty"), "model": _tampered_model_node(tmp)},
                 r"has no rows", 320),
    FunctionCase("battgen.predicted_energy_above_hull", "unknown-key",
                 lambda _: {"structures": _batch_node(), "reference_entries": orm.List([]),
                            "parameters": _dict(colum="x")}, r"unknown keys \['colum'\]", 333),
    FunctionCase("battgen.evaluate_generation", "empty-batch", lambda _: {"generated": _batch_node("empty")},
                 r"has no rows", 320),
    FunctionCase("battgen.arrhenius_fit", "one-temperature",
                 lambda _: {"extrapolate_to_K": orm.Float(300.0),
                            "run_0": _dict(diffusion={"temperature_K": 1000.0, "diffusivity_cm2_per_s": 1e-5})},
                 r"two or more temperatures", 340),
    FunctionCase("battgen.attach_conductivity", "ids-do-not-match",
                 lambda _: {"structures": _batch_node(), "row_ids": orm.List(["licl", "x"]),
                            "run_0": _dict()}, r"2 row ids for 1 runs", 321),
]


def _is_calcfunction(obj) -> bool:
    from aiida.orm import CalcFunctionNode

    return getattr(obj, "is_process_function", False) and obj.node_class is CalcFunctionNode


def _run_and_check(function, inputs: dict, phrase: str, exit_status: int | None) -> None:
    """Run ``function``; check the message and that at most the failed process node itself was stored."""
    from aiida.common.links import LinkType

    for node in inputs.values():
        node.store()
    data_before, processes_before = _count_nodes(orm.Data), _count_nodes(orm.ProcessNode)
    try:
        _, node = function.run_get_node(**inputs)
    except Exception as exc:  # noqa: BLE001 - the contract: a clear message, whatever the type
        assert exit_status is None, f"raised {type(exc).__name__}: {exc}; expected exit status {exit_status}"
        assert re.search(phrase, str(exc)), f"{type(exc).__name__}: {exc}"
        node = None
    else:
        message = node.exit_message or ""
        if exit_status is None:  # a documented failure that is an exit code of any value is fine too
            assert node.exit_status not in (0, None), f"finished with {node.exit_status}"
        else:
            assert node.exit_status == exit_status, f"exit {node.exit_status}: {message}"
        assert re.search(phrase, message), message
    assert _count_nodes(orm.Data) == data_before, "a rejected call stored data nodes"
    assert _count_nodes(orm.ProcessNode) - processes_before <= 1
    if node is not None:
        assert not node.is_finished_ok
        assert not node.base.links.get_outgoing(link_type=LinkType.CREATE).all(), "outputs of a rejected call"


@pytest.mark.parametrize("case", FUNCTION_CASES, ids=lambda c: f"{c.entry_point.removeprefix('battgen.')}-{c.label}")
def test_calcfunction_rejects_bad_input(case: FunctionCase, aiida_profile, tmp_path):
    function = _load(CALCULATION_ENTRY_POINTS[case.entry_point])
    _run_and_check(function, case.inputs(tmp_path), case.phrase, case.exit_status)


@pytest.mark.parametrize("entry_point", sorted(CALCULATION_ENTRY_POINTS))
def test_calcfunction_rejects_wrong_input_types(entry_point, aiida_profile, tmp_path):
    """Every calcfunction, whoever wrote it: an Int on every port fails port validation, nothing stored."""
    import inspect

    function = _load(CALCULATION_ENTRY_POINTS[entry_point])
    if not _is_calcfunction(function):
        pytest.skip(f"{entry_point} is a CalcJob, not a calcfunction")
    parameters = inspect.signature(function.__wrapped__ if hasattr(function, "__wrapped__") else function).parameters
    names = [n for n, p in parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    dynamic = "bogus_0" if any(p.kind is p.VAR_KEYWORD for p in parameters.values()) else None
    _run_and_check(function, _ints(*names, dynamic=dynamic)(tmp_path),
                   r"not of the right type|not structure batches|unknown funnel stage", None)


def test_every_calcfunction_has_a_bad_value_case():
    """A calcfunction with no row in FUNCTION_CASES is listed here (new ones by others get the type check)."""
    covered = {case.entry_point for case in FUNCTION_CASES}
    missing = []
    for name, entry_point in sorted(CALCULATION_ENTRY_POINTS.items()):
        try:
            obj = entry_point.load()
        except (ImportError, AttributeError):
            continue
        if _is_calcfunction(obj) and name not in covered:
            missing.append(name)
    # Figures, merges of relaxation results and the DFT / insertion / channel functions written in parallel
    # are covered by the type check only (they have no user-facing parameters to get wrong, or are new).
    allowed = {"battgen.cathode_screen_figure", "battgen.merge_relax_results", "battgen.dft_formation_energy",
               "battgen.dft_energy_above_hull", "battgen.electrode_voltage", "battgen.insertion_voltage",
               "battgen.channel_radius_slope", "battgen.dft_relax_results"}
    assert set(missing) <= allowed, f"calcfunctions without a bad-value case: {sorted(set(missing) - allowed)}"


# --- AiiDA: data nodes built from user files ---------------------------------------------------------------


@pytest.mark.parametrize("name, kind, phrase", [
    ("bad.cif", "malformed_cif", r"not a usable structure source: bad\.cif: not a readable CIF file"),
    ("bad.extxyz", "malformed_extxyz", r"not a usable structure source: bad\.extxyz"),
    ("bad.jsonl.gz", "garbage_batch", r"not a usable structure source"),
], ids=["malformed-cif", "malformed-extxyz", "garbage-snapshot"])
def test_source_snapshot_rejects_malformed_files(name, kind, phrase, aiida_profile, tmp_path):
    from aiida_battgen.data.snapshot import SourceSnapshotData

    path = write_input(kind, tmp_path / name)
    before = _count_nodes()
    with pytest.raises(ValueError, match=phrase):
        SourceSnapshotData(path).store()
    assert _count_nodes() == before


def test_model_node_rejects_files_that_do_not_match_the_manifest(aiida_profile, tmp_path):
    from aiida_battgen.data.model import ModelData
    from battgen.models import ModelFormatError

    write_input("tampered_model", tmp_path / "model")
    before = _count_nodes()
    with pytest.raises(ModelFormatError, match=r"changed since training: \['weights.pt'\]"):
        ModelData.from_directory(tmp_path / "model")
    assert _count_nodes() == before
    (tmp_path / "other").mkdir()
    stored_then_changed = _tampered_model_node(tmp_path / "other")
    assert not stored_then_changed.verify()  # what predict_properties and the CalcJobs check before use


def _model_node(kind: str, architecture: str):
    from aiida_battgen.data.model import ModelData

    node = ModelData()
    node.base.attributes.set("kind", kind)
    node.base.attributes.set("architecture", architecture)
    return node


SCREEN_BAD_VALUES = [
    ("mg_cathode_screen", "negative-temperature", {"parameters": {"temperatures_K": [-300.0]}},
     r"`temperatures_K` must be a non-empty list of temperatures in \(0, 10000\] K"),
    ("mg_cathode_screen", "negative-conductivity-cut", {"parameters": {"min_conductivity_mS_per_cm": -1.0}},
     r"`min_conductivity_mS_per_cm` must be a non-negative number"),
    ("mg_cathode_screen", "voltage-as-text", {"parameters": {"min_voltage_V": "3 V"}},
     r"`min_voltage_V` must be a number in V"),
    ("mg_cathode_screen", "negative-md-candidates", {"parameters": {"max_md_candidates": -1}},
     r"`max_md_candidates` must be a non-negative integer"),
    ("property_screen", "threshold-as-text",
     {"parameters": {"thresholds": [{"column": "predicted_average_voltage_V", "min": "three"}]}},
     r"threshold bounds must be finite numbers"),
    ("property_screen", "threshold-without-bound", {"parameters": {"thresholds": [{"column": "x"}]}},
     r"each threshold needs `column` and `max` and/or `min`"),
]


@pytest.mark.parametrize("workflow, label, overrides, phrase", SCREEN_BAD_VALUES,
                         ids=[f"{c[0]}-{c[1]}" for c in SCREEN_BAD_VALUES])
def test_screen_launch_rejects_bad_thresholds(workflow, label, overrides, phrase, aiida_profile, aiida_localhost):
    from aiida.engine import run_get_node
    from aiida.plugins import WorkflowFactory

    from aiida_battgen.data.batch import StructureBatchData

    candidates = StructureBatchData(StructureBatch.from_structures([_licl()]))
    code = orm.InstalledCode(label="bad-input", computer=aiida_localhost, filepath_executable="/bin/true")
    before = _count_nodes()

    # The cathode screen's `parameters` port validator already refuses the builder; the property screen's
    # input validator refuses the launch.
    with pytest.raises(ValueError) as caught:
        if workflow == "mg_cathode_screen":
            builder = WorkflowFactory(f"battgen.{workflow}").get_builder_from_protocol(
                code, candidates, _model_node("predictor", "voltage-cgcnn"), protocol="fast", overrides=overrides)
        else:
            builder = WorkflowFactory(f"battgen.{workflow}").get_builder_from_protocol(
                candidates, {"voltage": _model_node("predictor", "voltage-cgcnn")}, protocol="mg_cathode_seed002",
                overrides=overrides)
        run_get_node(builder)

    assert re.search(phrase, str(caught.value)), str(caught.value)
    assert _count_nodes() == before, "a rejected launch stored nodes"
