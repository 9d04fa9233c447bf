"""battgen.campaign end to end (examples/offline_mini.yaml at tiny settings, the real CLI on localhost):
lineage of a shortlisted candidate to the source and, through the generator model, to its training data;
the loop's round-2 model continues round 1's; a second identical campaign trains nothing; the CLI's dry
run stores nothing; each bad input is one line and stores nothing."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from aiida import orm
from click.testing import CliRunner

from battgen.campaign.spec import CampaignSpecError, parse_spec

ROOT = Path(__file__).resolve().parents[2]
OFFLINE_MINI = ROOT / "examples" / "offline_mini.yaml"


def tiny_offline_mini(code_label: str) -> dict:
    """offline_mini.yaml with fewer hosts, samples, relaxations and steps (CI wall time)."""
    data = yaml.safe_load(OFFLINE_MINI.read_text())
    data["codes"]["default"] = code_label
    data["source"]["hosts"] = ["LiCoO2", "Li2O", "LiCl"]
    data["generators"]["substitution"] = {"n": 8, "conditions": {"threshold": 0.0005, "max_per_seed": 4}}
    data["generators"]["cdvae"]["n"] = 4
    data["generators"]["cdvae"]["train"]["hyperparameters"]["max_steps"] = 8
    data["generators"]["cdvae"]["train"]["hyperparameters"]["checkpoint_every_steps"] = 4
    data["generators"]["cdvae"]["train"]["finetune_steps"] = 4
    data["relax"].update({"fmax_eV_per_A": 0.3, "max_steps": 15, "preselect_top_k": 3})
    data["hull"].update({"max_e_above_hull_eV_per_atom": 50.0, "shortlist_top_k": 2, "rank_hull_incomplete": True})
    return data


def run_campaign(data: dict):
    from aiida.engine import run_get_node

    from aiida_battgen.tools.campaign import resolve_campaign

    plan = resolve_campaign(parse_spec(data), base_dir=ROOT)
    return run_get_node(plan.builder)[1]


def _training_calcs(node) -> list:
    return [n for n in node.called_descendants if n.process_label == "GeneratorTrainCalculation"]


@pytest.mark.slow
def test_offline_mini_end_to_end_loop_lineage_and_reuse(aiida_profile, battgen_code, tmp_path):
    from aiida_battgen.tools.lineage import candidate_lineage

    data = tiny_offline_mini(battgen_code.full_label)
    node = run_campaign(data)
    assert node.is_finished_ok, node.exit_message
    summary = node.outputs.summary.get_dict()
    rounds = summary["rounds"]
    assert rounds[0]["samples"] >= 5 and rounds[0]["survivors"] >= 1, rounds
    assert rounds[0]["hit_rate_per_1000"] == pytest.approx(1000 * rounds[0]["survivors"] / rounds[0]["samples"], abs=1e-3)
    assert rounds[0]["new_survivors"] == rounds[0]["survivors"]  # nothing earlier to match
    assert summary["funnel"]["generated"] == rounds[-1]["samples"]
    assert len(summary["candidates"]) == sum(r["survivors"] for r in rounds)
    assert all(c["gravimetric_capacity_mAh_per_g"] is None or c["gravimetric_capacity_mAh_per_g"] > 0
               for c in summary["candidates"])

    # lineage: a shortlisted candidate reaches the seed batch (the source) and, through the CDVAE model,
    # that model's training data
    candidates = dict(node.outputs.candidates)
    assert candidates
    seeds = node.inputs.seed_structures
    group = orm.load_group(summary["shortlist_group"])
    assert {c.uuid for c in candidates.values()} <= {n.uuid for n in group.nodes}
    lineage = candidate_lineage(next(iter(candidates.values())))
    assert lineage.missing_steps() == [], lineage.as_text()
    assert f"StructureBatchData<{seeds.pk}>" in " ".join(lineage.sources), lineage.as_text()
    models = dict(node.outputs.models)
    round1 = models["cdvae_r01"]
    assert round1.creator.inputs.training_structures.uuid == seeds.uuid
    generated = orm.load_node(node.outputs.summary.creator.inputs["r01_generated"].pk)
    cdvae_rows = [m for m in generated.get_batch().meta if m.get("generator") == "cdvae"]
    assert {m["model_sha256"] for m in cdvae_rows} == {round1.content_sha256}

    # the loop: round 2's model continues round 1's (checkpoint folder, parent extra), trained on round 1's
    # survivors added to round 1's training set
    assert len(rounds) == 2, rounds
    round2 = models["cdvae_r02"]
    calc2 = round2.creator
    assert calc2.inputs.parent_folder.creator.uuid == round1.creator.uuid
    assert round2.base.extras.get("battgen_parent_model_uuid") == round1.uuid
    finetune_set = calc2.inputs.training_structures
    assert finetune_set.creator.process_label == "campaign_finetune_set"
    assert finetune_set.creator.inputs.survivors.uuid == node.outputs.shortlists["r01"].uuid
    assert finetune_set.n_rows == seeds.n_rows + rounds[0]["new_survivors"]
    assert calc2.outputs.output_parameters["training"]["resumed_from_step"] == 8

    # a second identical campaign trains nothing: both models are found by training data and settings
    again = run_campaign(copy.deepcopy(data))
    assert again.is_finished_ok, again.exit_message
    assert _training_calcs(again) == []
    assert again.outputs.models["cdvae_r01"].uuid == round1.uuid

    # report and export from the CLI
    from aiida_battgen.cli.campaign import cmd_campaign

    runner = CliRunner()
    result = runner.invoke(cmd_campaign, ["report", str(node.pk), "--output", str(tmp_path / "campaign-report")],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = tmp_path / "campaign-report"
    for name in ("funnel.csv", "rounds.csv", "candidates.csv", "funnel.png", "loop.png",
                 "property_distributions.png", "report.html"):
        assert (report / name).is_file(), (name, result.output)
    assert "offline-mini" in (report / "report.html").read_text()
    status = runner.invoke(cmd_campaign, ["status", str(node.pk)], catch_exceptions=False)
    assert "round_02" in status.output and "no running jobs" in status.output, status.output
    archive = tmp_path / "campaign.aiida"
    exported = runner.invoke(cmd_campaign, ["export", str(node.pk), str(archive)], catch_exceptions=False)
    assert exported.exit_code == 0 and archive.is_file(), exported.output
    from aiida.tools.archive.abstract import get_format

    with get_format().open(archive, "r") as reader:
        uuids = set(reader.querybuilder().append(orm.Node, project="uuid").all(flat=True))
    assert {node.uuid, round1.uuid, round2.uuid, seeds.uuid, *(c.uuid for c in candidates.values())} <= uuids
    again_exported = runner.invoke(cmd_campaign, ["export", str(node.pk), str(archive)])
    assert again_exported.exit_code != 0 and "exists" in again_exported.output


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _node_count() -> int:
    return orm.QueryBuilder().append(orm.Node).count()


def _invoke_run(spec_path: Path, *options: str):
    from aiida_battgen.cli import cmd_root

    return CliRunner().invoke(cmd_root, ["campaign", "run", str(spec_path), *options])


def test_dry_run_stores_no_node(aiida_profile, battgen_code, in_tmp):
    data = tiny_offline_mini(battgen_code.full_label)
    path = in_tmp / "mini.yaml"
    path.write_text(yaml.safe_dump(data))
    before = _node_count()
    result = _invoke_run(path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "stages source -> train -> generate" in result.output
    assert "generator cdvae:" in result.output and "expected" in result.output
    assert _node_count() == before


BAD_INPUTS = {
    "unknown key": (lambda d: d["generators"]["cdvae"].update({"trian": {}}), "`generators.cdvae.trian`: unknown key"),
    "stage code missing": (lambda d: d["codes"].update({"relax": "no-such-code@nowhere"}), "`codes.relax`: no code"),
    "dft without code": (lambda d: d.update({"dft": {"enabled": True, "family": "SSSP"}}), "`dft.enabled` needs `dft.code`"),
    "dft without family": (lambda d: d.update({"dft": {"enabled": True, "code": "pw@localhost"}}),
                           "`dft.enabled` needs `dft.family`"),
    "MP without key": (lambda d: d.update({"source": {"kind": "materials_project", "criteria": {"chemsys": "Li-O"}}}),
                       "needs an API key in $MP_API_KEY"),
    "unresolvable model": (lambda d: d["generators"].update({"cdvae": {"n": 4, "model": "no-such-model"}}),
                           "`generators.cdvae.model`: no battgen.model"),
    "unregistered generator": (lambda d: d["generators"].update({"diffcsp": {"n": 4}}),
                               "generator 'diffcsp' is not registered"),
    "loop.iterations < 1": (lambda d: d["loop"].update({"iterations": 0}), "`loop.iterations`"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_stores_nothing(aiida_profile, battgen_code, in_tmp, monkeypatch, case):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    data = tiny_offline_mini(battgen_code.full_label)
    change, message = BAD_INPUTS[case]
    change(data)
    path = in_tmp / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    before = _node_count()
    result = _invoke_run(path)
    assert result.exit_code != 0, result.output
    assert message in result.output, result.output
    critical = [line for line in result.output.splitlines() if line.startswith("Critical")]
    assert len(critical) == 1 and "Traceback" not in result.output, result.output
    assert _node_count() == before


def test_every_example_spec_validates():
    paths = sorted((ROOT / "examples").glob("*.yaml"))
    names = {p.name for p in paths}
    assert {"offline_mini.yaml", "seed000_tmo_oxides.yaml", "seed001_tunnel_hosts.yaml", "seed002_mg_cathodes.yaml",
            "seed004_si_anodes.yaml"} <= names
    for path in paths:
        if path.name == "tiny.yaml":  # the discovery examples' protocol overrides, not a campaign
            continue
        try:
            parse_spec(yaml.safe_load(path.read_text()))
        except CampaignSpecError as exc:
            pytest.fail(f"{path.name}: {exc}")


def test_campaign_aiida_layer_imports_no_torch():
    code = "import sys, aiida_battgen.workchains.campaign, aiida_battgen.tools.campaign, aiida_battgen.cli.campaign; " \
           "print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_export_writes_the_lineage_and_refuses_a_key_or_an_existing_file(aiida_profile, tmp_path, monkeypatch):
    """`campaign export` on a stored campaign node (no run needed): the archive holds it and its inputs; a
    node carrying the environment's MP key makes the export fail and leave no file."""
    from aiida.common.links import LinkType
    from aiida.tools.archive.abstract import get_format

    from aiida_battgen.cli.campaign import cmd_campaign

    def campaign_node(spec: dict):
        node = orm.WorkChainNode()
        node.set_process_label("CampaignWorkChain")
        node.set_process_type("aiida.workflows:battgen.campaign")
        source = orm.Dict(spec).store()
        node.base.links.add_incoming(source, link_type=LinkType.INPUT_WORK, link_label="spec")
        node.store()
        node.seal()
        return node, source

    monkeypatch.setenv("MP_API_KEY", "not-a-real-key-0123456789")
    node, source = campaign_node({"name": "export-test"})
    archive = tmp_path / "campaign.aiida"
    runner = CliRunner()
    result = runner.invoke(cmd_campaign, ["export", str(node.pk), str(archive)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with get_format().open(archive, "r") as reader:
        uuids = set(reader.querybuilder().append(orm.Node, project="uuid").all(flat=True))
    assert {node.uuid, source.uuid} <= uuids
    again = runner.invoke(cmd_campaign, ["export", str(node.pk), str(archive)])
    assert again.exit_code != 0 and "exists" in again.output

    leaky, _ = campaign_node({"name": "leaky", "api_key": "not-a-real-key-0123456789"})
    target = tmp_path / "leaky.aiida"
    refused = runner.invoke(cmd_campaign, ["export", str(leaky.pk), str(target)])
    assert refused.exit_code != 0 and "an API key" in refused.output, refused.output
    assert not target.exists()
