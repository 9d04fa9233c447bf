"""`aiida-battgen setup`: embedded and PostgreSQL profiles, idempotent, clear errors when services are down.

Each test runs the real console script in a subprocess with its own AIIDA_PATH, so the user's and the
test session's AiiDA configuration are never touched.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run_cli(args, aiida_path, check=True):
    env = {**os.environ, "AIIDA_PATH": str(aiida_path), "PATH": f"{BIN}:{os.environ['PATH']}"}
    result = subprocess.run([str(BIN / "aiida-battgen"), *args], capture_output=True, text=True, env=env, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"aiida-battgen {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_embedded_profile_is_created_once(tmp_path):
    first = run_cli(["setup"], tmp_path)
    assert "Created profile `battgen` (core.sqlite_dos, broker core.zeromq)" in first.stdout
    second = run_cli(["setup"], tmp_path)
    assert "Reusing profile `battgen`" in second.stdout
    assert "code `battgen@localhost` ready" in second.stdout
    env = {**os.environ, "AIIDA_PATH": str(tmp_path)}
    codes = subprocess.run([str(BIN / "verdi"), "-p", "battgen", "code", "list", "-r"], capture_output=True,
                           text=True, env=env, check=True).stdout
    assert codes.count("battgen@localhost") == 1


def test_unreachable_postgres_gives_clear_message_and_no_profile(tmp_path):
    result = run_cli(["setup", "--postgres", "--profile-name", "nope", "--db-port", "1"], tmp_path, check=False)
    assert result.returncode != 0
    assert "PostgreSQL is not reachable at 127.0.0.1:1" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    listing = subprocess.run([str(BIN / "verdi"), "profile", "list"], capture_output=True, text=True,
                             env={**os.environ, "AIIDA_PATH": str(tmp_path)})
    assert "nope" not in listing.stdout


def test_unreachable_rabbitmq_gives_clear_message(tmp_path):
    result = run_cli(["setup", "--postgres", "--profile-name", "nobroker", "--broker-port", "1"], tmp_path, check=False)
    assert result.returncode != 0 and "RabbitMQ is not reachable" in result.stderr + result.stdout


@pytest.mark.daemon
def test_postgres_profile(tmp_path, require_postgres_rabbitmq):
    name = f"battgen-test-{uuid.uuid4().hex[:8]}"
    try:
        first = run_cli(["setup", "--postgres", "--profile-name", name], tmp_path)
        assert f"Created profile `{name}` (core.psql_dos, broker core.rabbitmq)" in first.stdout
        assert "Reusing" in run_cli(["setup", "--postgres", "--profile-name", name], tmp_path).stdout
    finally:
        from aiida_battgen.tools.profiles import PostgresSettings, drop_postgres_database

        drop_postgres_database(PostgresSettings(), f"aiida_{name}")


def test_setup_says_when_it_changes_the_default_profile(tmp_path):
    first = run_cli(["setup"], tmp_path)
    assert "`battgen` is now AiiDA's default profile" in first.stdout
    kept = run_cli(["setup", "--profile-name", "second", "--no-set-as-default"], tmp_path)
    assert "default profile" not in kept.stdout
    switched = run_cli(["setup", "--profile-name", "third"], tmp_path)
    assert "`third` is now AiiDA's default profile (was `battgen`); keep the old default with --no-set-as-default" in switched.stdout
    reused = run_cli(["setup"], tmp_path)  # reusing a profile leaves the default alone
    assert "Reusing profile `battgen`" in reused.stdout and "default profile" not in reused.stdout
    listing = subprocess.run([str(BIN / "verdi"), "profile", "list"], capture_output=True, text=True,
                             env={**os.environ, "AIIDA_PATH": str(tmp_path)}, check=True).stdout
    assert "* third" in listing


def _store_structure(aiida_path, profile, label):
    script = aiida_path / "store.py"
    script.write_text("from aiida import orm\n"
                      "s = orm.StructureData(cell=[[3, 0, 0], [0, 3, 0], [0, 0, 3]])\n"
                      "s.append_atom(position=(0, 0, 0), symbols='Li')\n"
                      f"s.label = {label!r}\nprint(s.store().uuid)\n")
    env = {**os.environ, "AIIDA_PATH": str(aiida_path)}
    result = subprocess.run([str(BIN / "verdi"), "-p", profile, "run", str(script)], capture_output=True, text=True,
                            env=env, check=True)
    return result.stdout.strip().splitlines()[-1]


def test_commands_read_the_profile_of_dash_p_else_aiida_default(tmp_path):
    """No private preference for a profile named `battgen`: like verdi, -p or AiiDA's default; a candidate by
    pk, UUID or label."""
    run_cli(["setup"], tmp_path)
    run_cli(["setup", "--profile-name", "other"], tmp_path)  # now AiiDA's default
    uuid_ = _store_structure(tmp_path, "battgen", "my-candidate")
    default = run_cli(["lineage", "my-candidate"], tmp_path, check=False)
    assert default.returncode != 0 and "no StructureData found with LABEL<my-candidate>" in default.stderr
    for identifier in ("my-candidate", uuid_, uuid_[:8]):
        shown = run_cli(["-p", "battgen", "lineage", identifier], tmp_path)
        assert "Lineage of candidate <" in shown.stdout
    unknown = run_cli(["-p", "nope", "candidates"], tmp_path, check=False)
    assert unknown.returncode != 0 and "profile `nope` does not exist" in unknown.stderr


def test_protocols_lists_every_protocol_of_every_battgen_work_chain(tmp_path):
    from importlib.metadata import entry_points

    from aiida_battgen.workchains.protocols.utils import ProtocolMixin

    listing = run_cli(["protocols"], tmp_path).stdout
    expected = 0
    for entry_point in entry_points(group="aiida.workflows"):
        if not entry_point.name.startswith("battgen."):
            continue
        chain = entry_point.load()
        if isinstance(chain, type) and issubclass(chain, ProtocolMixin) and chain._protocol_file:
            expected += 1
            section = listing.split(f"{entry_point.name} (", 1)[1].split("\nbattgen.", 1)[0]
            for name in chain.get_available_protocols():
                assert f"  {name} " in section, (entry_point.name, name)
    assert expected >= 6 and listing.count(".yaml, default ") == expected


def test_the_readmes_archive_line_runs_through_verdi(tmp_path):
    """The README's `verdi archive create ... -G battgen/demo/shortlist` line, verbatim, on a profile with
    that group (`-G` takes several values: the file comes first)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    line = next(text for text in readme.splitlines() if text.startswith("verdi archive create"))
    command = line.split("#", 1)[0].split()
    run_cli(["setup"], tmp_path)
    script = tmp_path / "group.py"
    script.write_text("from aiida import orm\n"
                      "s = orm.StructureData(cell=[[3, 0, 0], [0, 3, 0], [0, 0, 3]])\n"
                      "s.append_atom(position=(0, 0, 0), symbols='Li')\n"
                      "orm.Group.collection.get_or_create('battgen/demo/shortlist')[0].add_nodes([s.store()])\n")
    env = {**os.environ, "AIIDA_PATH": str(tmp_path), "PATH": f"{BIN}:{os.environ['PATH']}"}
    subprocess.run([str(BIN / "verdi"), "run", str(script)], env=env, check=True, capture_output=True)
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    archive = tmp_path / command[3]
    assert archive.is_file() and archive.stat().st_size > 0


def test_the_demo_uses_battgen_unless_told_and_leaves_an_existing_default(tmp_path):
    """The demo's profile is `-p`, else `battgen` (created); an existing default stays the default. An
    override file with an unknown key stops it before any process runs (so no MLIP is needed here)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("shortlist: {no_such_key: 1}\n")
    run_cli(["setup", "--profile-name", "mine"], tmp_path)  # AiiDA's default
    default_run = run_cli(["demo", "--overrides", str(bad)], tmp_path, check=False)
    assert default_run.returncode != 0 and "unknown protocol key 'shortlist.no_such_key'" in default_run.stderr
    assert "Created profile `battgen` (choose another with `aiida-battgen -p NAME demo`" in default_run.stdout
    assert "default profile" not in default_run.stdout
    chosen = run_cli(["-p", "mine", "demo", "--overrides", str(bad)], tmp_path, check=False)
    assert "Using profile `mine`" in chosen.stdout and "battgen" not in chosen.stdout.split("Using profile")[1][:20]
    listing = subprocess.run([str(BIN / "verdi"), "profile", "list"], capture_output=True, text=True,
                             env={**os.environ, "AIIDA_PATH": str(tmp_path)}, check=True).stdout
    assert "* mine" in listing and "battgen" in listing
