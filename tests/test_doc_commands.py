"""Every shell line of README.md and docs/ runs, through the real CLI (issue 17, item 2).

A shell line is a line of a fenced ``bash`` / ``sh`` / ``shell`` / ``console`` block in README.md or any
docs/**/*.md. Each one is either run here by ``bash -c`` exactly as written (only ``<pk>`` / ``<cluster>``
placeholders filled in, in a temporary AIIDA_PATH and working directory), or listed in ``NOT_RUN_HERE``
with the reason. ``test_every_shell_line_is_run_or_listed`` fails when a line is added to the docs without
either, or when a listed line is no longer in the docs. The demo and the lines that read its results are
``slow`` (minutes); CI runs them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", flags=re.S | re.M)

README_DEMO = ('python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ".[all]" '
               '&& PATH="$PWD/.venv/bin:$PATH" aiida-battgen demo')
README_TESTS = ('python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ".[all,tests]" '
                '&& PATH="$PWD/.venv/bin:$PATH" pytest')
CANDIDATES = "aiida-battgen candidates --max-ehull 0.1 --element Li   # shortlisted candidates by criteria"
LINEAGE = "aiida-battgen lineage <pk>                              # a candidate's steps back to its source (pk, UUID or label)"
ARCHIVE = "verdi archive create run.aiida -G battgen/demo/shortlist   # export with the whole lineage"
COMPUTER_SETUP = "verdi computer setup --config docs/templates/computer-slurm.yaml          # edit the <...> first"
COMPUTER_CONFIGURE = "verdi computer configure core.ssh -n <cluster> --config docs/templates/computer-ssh.yaml"
COMPUTER_TEST = "verdi computer test <cluster>"
CODE_CREATE = "verdi code create core.code.installed -n --config docs/templates/code-battgen.yaml"
EXAMPLE_HOSTS = "python examples/discover_builtin_hosts.py --hosts LiCoO2,Li2O,LiCl,Si --overrides examples/tiny.yaml"
EXAMPLE_FILE = "python examples/discover_from_file.py <your.cif> --overrides examples/tiny.yaml"
EXAMPLE_QUERY = "python examples/query_candidates.py --max-ehull 2.0 --group examples/shortlist"
EXAMPLE_ARCHIVE = ("python examples/archive_round_trip.py --group examples/shortlist --target-profile battgen-copy "
                   "run.aiida")
CLUSTER_VENV = "python3 -m venv ~/venvs/battgen"
CLUSTER_CLONE = "git clone <url of the aiida-battgen repository> ~/src/aiida-battgen"
CLUSTER_INSTALL = ('~/venvs/battgen/bin/pip install -c ~/src/aiida-battgen/constraints.txt '
                   '-e "$HOME/src/aiida-battgen[all]"')
CLUSTER_WHEEL = "pip wheel --no-deps -w dist ."

NOT_RUN_HERE = {
    README_TESTS: "it is the test suite itself: CI runs it verbatim (.ci/run step 1, checked by tests/test_readme.py)",
    COMPUTER_TEST: "needs a real SSH login to a SLURM cluster (the suite opens none; tests/aiida/test_slurm.py "
                   "covers a local SLURM where CI provisioned one)",
    CLUSTER_VENV: "runs on the cluster, in the user's home",
    CLUSTER_CLONE: "runs on the cluster; the repository URL is the user's",
    CLUSTER_INSTALL: "a package install on the cluster (the suite installs nothing)",
}
# Lines whose install prefix is not run here (the suite installs nothing; CI's venv is that of the README's
# test command) but whose command after the last `&&` is.
RUN_AFTER_INSTALL = {README_DEMO: 'PATH="$PWD/.venv/bin:$PATH" aiida-battgen demo'}


def shell_lines() -> dict[str, str]:
    """{line: file it is in} for every line of a shell block of the docs."""
    lines = {}
    for path in DOC_FILES:
        for block in FENCE.findall(path.read_text()):
            for line in block.splitlines():
                if line.strip():
                    lines[line.rstrip()] = str(path.relative_to(ROOT))
    return lines


RUN_HERE: set[str] = set()  # filled by the @runs decorator below


def runs(*lines: str):
    RUN_HERE.update(lines)
    return lambda test: test


def test_every_shell_line_is_run_or_listed():
    lines = shell_lines()
    assert lines, "no shell block found in the docs"
    covered = RUN_HERE | set(NOT_RUN_HERE) | set(RUN_AFTER_INSTALL)
    missing = {line: where for line, where in lines.items() if line not in covered}
    assert not missing, f"shell lines run by no test and not in NOT_RUN_HERE: {missing}"
    stale = sorted(covered - set(lines))
    assert not stale, f"lines this test runs or lists that are no longer in the docs: {stale}"


def _env(aiida_path: Path) -> dict[str, str]:
    return {**os.environ, "AIIDA_PATH": str(aiida_path), "PATH": f"{BIN}:{os.environ['PATH']}",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def sh(line: str, cwd: Path, env: dict, timeout: float = 300, **placeholders) -> subprocess.CompletedProcess:
    """Run one doc line with bash exactly as written (placeholders filled); fail with its output."""
    command = line
    for key, value in placeholders.items():
        command = command.replace(f"<{key}>", str(value))
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"`{command}` exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


# --- docs/cluster.md: computer and code from the templates (placeholders filled with localhost values) ------------


@runs(COMPUTER_SETUP, COMPUTER_CONFIGURE, CODE_CREATE)
def test_cluster_templates_set_up_computer_and_code(tmp_path):
    # A temporary HOME: the SSH template names ~/.ssh/id_ed25519, which verdi checks exists (an empty file
    # here; nothing connects, and no key is made).
    env = {**_env(tmp_path / "aiida"), "HOME": str(tmp_path / "home")}
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    (tmp_path / "home" / ".ssh" / "id_ed25519").touch()
    subprocess.run([str(BIN / "verdi"), "presto", "--profile-name", "docs"], env=env, capture_output=True,
                   check=True, timeout=300)
    templates = tmp_path / "docs" / "templates"
    templates.mkdir(parents=True)
    values = {"<cluster>": "docs-cluster", "<login.cluster.example.org>": "localhost", "<cores per node>": "2",
              "<memory per node in kB>": "1000000", "<you>": "battgen-user"}
    for template in (ROOT / "docs" / "templates").glob("*.yaml"):
        text = template.read_text()
        for key, value in values.items():
            text = text.replace(key, value)
        assert "<" not in re.sub(r"#.*", "", text), f"{template.name} has a placeholder this test does not fill"
        (templates / template.name).write_text(text)
    sh(COMPUTER_SETUP, tmp_path, env)
    sh(COMPUTER_CONFIGURE, tmp_path, env, cluster="docs-cluster")
    sh(CODE_CREATE, tmp_path, env)
    shown = sh("verdi computer show docs-cluster", tmp_path, env).stdout
    assert "core.slurm" in shown and "core.ssh" in shown and "srun -n {tot_num_mpiprocs}" in shown, shown
    code = sh("verdi code show battgen@docs-cluster", tmp_path, env).stdout
    assert "/home/battgen-user/venvs/battgen/bin/battgen" in code and "battgen.mlip.relax" in code, code


@runs(CLUSTER_WHEEL)
def test_wheel_for_the_cluster_builds(tmp_path):
    """The install-from-source alternative for clusters without git access: a wheel built from the checkout."""
    shutil.copytree(ROOT, tmp_path / "src", ignore=shutil.ignore_patterns(".venv*", ".git", "*.egg-info", "build",
                                                                             "dist", "__pycache__", "battgen-demo-output"))
    sh(CLUSTER_WHEEL, tmp_path / "src", _env(tmp_path / "aiida"), timeout=600)
    wheels = list((tmp_path / "src" / "dist").glob("aiida_battgen-*.whl"))
    assert len(wheels) == 1, wheels


# --- README: the demo, then the lines that read its results ---------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The README's demo line after its install prefix, in a fresh AIIDA_PATH: (working dir, env, output)."""
    workdir = tmp_path_factory.mktemp("readme-demo")
    (workdir / ".venv").symlink_to(BIN.parent)  # the README's `.venv` is the venv running these tests
    env = _env(workdir / "aiida")
    result = sh(RUN_AFTER_INSTALL[README_DEMO], workdir, env, timeout=3600)
    return workdir, env, result.stdout + result.stderr


@pytest.mark.slow
@runs()
def test_readme_demo(demo_run):
    workdir, _, output = demo_run
    assert (workdir / "battgen-demo-output" / "shortlist.csv").is_file(), output[-3000:]
    assert (workdir / "battgen-demo-output" / "discovery_summary.png").is_file()


@pytest.mark.slow
@runs(CANDIDATES, LINEAGE, ARCHIVE)
def test_readme_lines_after_the_demo(demo_run):
    workdir, env, _ = demo_run
    listing = sh(CANDIDATES, workdir, env).stdout
    assert "Li" in listing, listing
    group = sh("verdi group show -r battgen/demo/shortlist", workdir, env).stdout
    pks = re.findall(r"^\s*(\d+)\s", group, flags=re.M)
    assert pks, group
    lineage = sh(LINEAGE, workdir, env, pk=pks[0]).stdout
    assert lineage.strip(), "lineage printed nothing"
    sh(ARCHIVE, workdir, env)
    import yaml

    info = yaml.safe_load(sh("verdi archive info --detailed run.aiida", workdir, env).stdout)
    nodes = info["entities"]["Nodes"]
    # The whole lineage came along: the shortlist, the calcfunctions that made it, the relaxation job.
    assert nodes["count"] > len(pks), nodes
    assert any("battgen.extract_structure" in kind for kind in nodes["process_types"]), nodes
    assert any("battgen.mlip.relax" in kind for kind in nodes["process_types"]), nodes


# --- docs/examples.md: the example scripts, in the order the page gives them -------------------------------


@pytest.fixture(scope="module")
def examples_profile(tmp_path_factory):
    """A fresh default profile (SQLite, no services) and a working dir whose ``examples`` is the repository's."""
    workdir = tmp_path_factory.mktemp("examples")
    (workdir / "examples").symlink_to(ROOT / "examples")
    env = _env(workdir / "aiida")
    sh("verdi presto --profile-name examples", workdir, env)
    return workdir, env


@pytest.mark.slow
@runs(EXAMPLE_HOSTS, EXAMPLE_QUERY, EXAMPLE_ARCHIVE)
def test_examples_hosts_query_archive(examples_profile):
    workdir, env = examples_profile
    discovery = sh(EXAMPLE_HOSTS, workdir, env, timeout=3600).stdout
    assert "exit status 0" in discovery and "shortlist in group `examples/shortlist`" in discovery, discovery
    assert re.search(r"^  \S+: \S+ StructureData<\d+>$", discovery, flags=re.M), discovery
    query = sh(EXAMPLE_QUERY, workdir, env).stdout
    assert "reduced_formula" in query and "lineage of StructureData<" in query, query
    assert "generate_substitution" in query, query  # the lineage reaches the generator
    archive = sh(EXAMPLE_ARCHIVE, workdir, env, timeout=900).stdout
    assert "created profile `battgen-copy`" in archive and (workdir / "run.aiida").is_file(), archive
    assert re.search(r"(\d+) of \1 candidate\(s\) with the same lineage", archive), archive
    # The default profile is still the one the group came from; the copy holds the imported candidates.
    assert "examples/shortlist" in sh("verdi group list -a", workdir, env).stdout
    copied = sh("verdi -p battgen-copy group list -a", workdir, env).stdout
    assert "examples/shortlist" in copied, copied


@pytest.mark.slow
@runs(EXAMPLE_FILE)
def test_example_from_your_own_cif(examples_profile):
    from pymatgen.core import Lattice, Structure

    workdir, env = examples_profile
    licoo2 = Structure.from_spacegroup("R-3m", Lattice.hexagonal(2.82, 14.05), ["Li", "Co", "O"],
                                       [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.2396]])
    cif = workdir / "LiCoO2.cif"
    licoo2.to(filename=str(cif))
    out = sh(EXAMPLE_FILE, workdir, env, timeout=3600, **{"your.cif": cif.name}).stdout
    assert "LiCoO2.cif: 1 record(s), file (cif)" in out and "exit status 0" in out, out


def test_example_from_file_refuses_an_unusable_file(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a structure")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "discover_from_file.py"), str(bad)],
                            env=_env(tmp_path / "aiida"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "not a usable structure source" in result.stderr + result.stdout, result


# --- commands named inline in the prose: the command path and every long option exist -------------------------

INLINE = re.compile(r"`((?:aiida-battgen|verdi|battgen) [^`\n]+)`")
PLAIN_WORD = re.compile(r"^[a-z][a-z0-9_-]*$")


def inline_commands() -> dict[str, str]:
    """{command: file} for inline code spans of the docs that start with one of our executables or verdi."""
    found = {}
    for path in DOC_FILES:
        prose = FENCE.sub("", path.read_text())
        for command in INLINE.findall(prose):
            if "<command>" not in command:  # a pattern, not a command
                found[command] = str(path.relative_to(ROOT))
    return found


def _help(words: tuple[str, ...], cache: dict) -> str:
    if words not in cache:
        result = subprocess.run([str(BIN / words[0]), *words[1:], "--help"], capture_output=True, text=True,
                                timeout=120, env=_env(Path(os.environ.get("TMPDIR", "/tmp")) / "battgen-doc-help"))
        cache[words] = result.stdout + result.stderr if result.returncode == 0 else ""
    return cache[words]


def test_inline_commands_name_real_subcommands_and_options():
    """`aiida-battgen setup --postgres`, `verdi daemon start 4`, ... in the prose: each subcommand is listed by its
    parent's --help and each --option by the command's (catches renamed or mistyped commands cheaply)."""
    commands = inline_commands()
    assert "aiida-battgen setup --postgres" in commands, sorted(commands)
    cache: dict = {}
    problems = []
    for command, where in sorted(commands.items()):
        tokens = command.split()
        path = [tokens[0]]
        rest = tokens[1:]
        while rest and rest[0].startswith("-"):  # root options (-p NAME) before the subcommand
            rest = rest[2:] if not rest[0].startswith("--") or "=" not in rest[0] else rest[1:]
        if not rest or not PLAIN_WORD.match(rest[0]):
            problems.append(f"{where}: `{command}` names no subcommand")
            continue
        while rest and PLAIN_WORD.match(rest[0]):
            parent = _help(tuple(path), cache)
            if not re.search(rf"(?<![\w-]){re.escape(rest[0])}(?![\w-])", parent):
                break  # an argument value (a path, a number, a choice of the command), not a subcommand
            path.append(rest.pop(0))
        if len(path) == 1:  # every one of these executables needs a subcommand
            problems.append(f"{where}: `{path[0]}` has no subcommand {rest[0]!r} (from `{command}`)")
            continue
        text = _help(tuple(path), cache)
        if not text:
            problems.append(f"{where}: `{' '.join(path)} --help` fails (from `{command}`)")
            continue
        for option in (t.split("=")[0] for t in tokens if t.startswith("--")):
            if option not in text:
                problems.append(f"{where}: `{' '.join(path)}` has no option {option} (from `{command}`)")
    assert not problems, "\n".join(problems)
