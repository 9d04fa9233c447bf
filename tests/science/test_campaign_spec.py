"""The campaign spec schema (no AiiDA): unknown keys by dotted path, ranges, generator rules, the mapping onto
the discovery protocol; the summary's loop statistics; the report files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pymatgen.core import Lattice, Structure

from battgen.batch import StructureBatch
from battgen.campaign.report import write_report
from battgen.campaign.spec import CampaignSpecError, load_spec, parse_spec
from battgen.campaign.summary import build_summary, output_label

ROOT = Path(__file__).resolve().parents[2]


def minimal(**extra):
    return {"name": "t", "generators": {"substitution": {"n": 10}}, **extra}


@pytest.mark.parametrize(("change", "message"), [
    ({"generators": {"cdvae": {"n": 5, "train": {"hyperparameters": {}, "sead": 1}}}},
     "`generators.cdvae.train.sead`: unknown key"),
    ({"relax": {"fmax": 0.1}}, "`relax.fmax`: unknown key"),  # the unit is in the key name: fmax_eV_per_A
    ({"hull": {"max_e_above_hull_eV_per_atom": 0.1, "colour": "red"}}, "`hull.colour`: unknown key"),
    ({"loop": {"iterations": 0}}, "`loop.iterations`: Input should be greater than or equal to 1"),
    ({"generators": {"gan": {"n": 5}}}, "generator 'gan' is not registered"),
    ({"generators": {"cdvae": {"n": 5}}}, "give exactly one of `train` (trained here), `model`"),
    ({"generators": {"cdvae": {"n": 5, "model": 3, "model_dir": "m"}}}, "got ['model', 'model_dir']"),
    ({"generators": {"substitution": {"n": 5, "model": 3}}}, "has no weights"),
    ({"generators": {"substitution": {"n": 0}}}, "`generators.substitution.n`"),
    ({"dft": {"enabled": True, "family": "SSSP"}}, "`dft.enabled` needs `dft.code`"),
    ({"dft": {"enabled": True, "code": "pw@localhost"}}, "`dft.enabled` needs `dft.family`"),
    ({"source": {"kind": "file"}}, "needs `source.path`"),
    ({"dataset": {"split": {"fractions": [0.5, 0.2, 0.2]}}}, "sum to 1"),
    ({"battery": {"enabled": True, "md_top_k": 3}}, "mg_cathode_screen"),
])
def test_bad_specs_give_one_line_with_the_dotted_path(change, message):
    with pytest.raises(CampaignSpecError) as info:
        parse_spec({**minimal(), **change})
    text = str(info.value)
    assert message in text and "\n" not in text, text


def test_top_level_unknown_key_and_missing_name():
    with pytest.raises(CampaignSpecError, match="`generatorz`: unknown key"):
        parse_spec({"name": "t", "generators": {"substitution": {"n": 1}}, "generatorz": {}})
    with pytest.raises(CampaignSpecError, match="`name`: required key missing"):
        parse_spec({"generators": {"substitution": {"n": 1}}})
    with pytest.raises(CampaignSpecError, match="expected a mapping"):
        parse_spec(["not", "a", "mapping"])


def test_spec_maps_onto_the_discovery_protocol():
    spec = parse_spec({
        "name": "t", "seed": 7,
        "generators": {"substitution": {"n": 30}, "cdvae": {"n": 12, "train": {"hyperparameters": {"max_steps": 5}},
                                                            "device": "cpu"}},
        "relax": {"fmax_eV_per_A": 0.2, "max_steps": 40, "preselect_top_k": 6},
        "hull": {"max_e_above_hull_eV_per_atom": 0.05, "shortlist_top_k": 3},
        "dataset": {"filter": {"preset": "tmo"}, "split": {"fractions": [0.8, 0.1, 0.1], "seed": 3}},
    })
    overrides = spec.discovery_overrides()
    assert overrides["seed"] == 7
    assert overrides["generation"]["generator"] == "substitution" and overrides["generation"]["n"] == 30
    assert overrides["generation"]["additional_generators"] == [
        {"generator": "cdvae", "n": 12, "conditions": {"device": "cpu"}}]
    # substitution_probability would drop the CDVAE rows: no preselection column with two generators
    assert overrides["preselection"] == {"sort_by": None, "top_k": 6}
    assert overrides["relax"] == {"relax": {"parameters": {"mlip": "chgnet", "fmax": 0.2, "max_steps": 40,
                                                           "cell_filter": "frechet"}}}  # the port tree
    assert overrides["shortlist"]["max_values"] == {"e_above_hull_eV_per_atom": 0.05}
    assert parse_spec(minimal()).discovery_overrides()["preselection"]["sort_by"] == "substitution_probability"
    # only the trainable generators in a later round
    assert spec.discovery_overrides(["cdvae"])["generation"]["generator"] == "cdvae"
    training = spec.training_parameters("cdvae")
    assert training["filter"] == {"preset": "tmo"} and training["split"] == {"fractions": [0.8, 0.1, 0.1], "seed": 3}
    assert spec.stages() == ["source", "train", "generate", "screening", "relax", "hull", "report"]
    assert spec.expected_counts()["samples_per_round"] == 42


def test_example_specs_validate():
    for name in ("offline_mini", "seed000_tmo_oxides", "seed001_tunnel_hosts", "seed002_mg_cathodes",
                 "seed004_si_anodes"):
        spec = load_spec(ROOT / "examples" / f"{name}.yaml")
        assert spec.generators, name


def test_load_spec_reports_unreadable_files(tmp_path):
    with pytest.raises(CampaignSpecError, match="cannot read"):
        load_spec(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(CampaignSpecError, match="not valid YAML"):
        load_spec(bad)


def _batch(ids, generator="cdvae", **columns):
    structure = Structure(Lattice.cubic(4.0), ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    meta = [{"row_id": i, "generator": generator, "reduced_formula": "LiCl", "rank": n + 1,
             **{k: v[n] for k, v in columns.items()}} for n, i in enumerate(ids)]
    return StructureBatch([structure] * len(ids), meta)


def test_summary_counts_rounds_hit_rates_and_novelty():
    rounds = {
        1: {"generated": _batch([f"g{i}" for i in range(200)]), "shortlist": _batch(["a", "b", "c", "d"],
            e_above_hull_eV_per_atom=[0.01, 0.02, 0.03, 0.04]), "new": _batch(["a", "b", "c", "d"]),
            "funnel": {"counts": {"generated": 200, "shortlisted": 4}}},
        2: {"generated": _batch([f"h{i}" for i in range(500)]), "shortlist": _batch(["e", "f"]),
            "new": _batch(["e"]), "funnel": {"counts": {"generated": 500, "shortlisted": 2}}},
    }
    summary = build_summary({"name": "t"}, rounds)
    first, second = summary["rounds"]
    assert first["hit_rate_per_1000"] == 20.0 and first["novelty_vs_earlier_rounds"] == 1.0
    assert second["hit_rate_per_1000"] == 4.0 and second["new_survivors"] == 1
    assert second["novelty_vs_earlier_rounds"] == 0.5 and second["new_hit_rate_per_1000"] == 2.0
    assert summary["totals"] == {"samples": 700, "distinct_survivors": 5, "hit_rate_per_1000": pytest.approx(7.143, abs=1e-3)}
    assert summary["funnel"] == {"generated": 500, "shortlisted": 2}
    assert [c["new_in_round"] for c in summary["candidates"]] == [True] * 4 + [True, False]
    assert summary["candidates"][0]["output_label"] == output_label("a", 1, 1) == "r01_rank_001_a"
    assert summary["candidates"][0]["e_above_hull_eV_per_atom"] == 0.01


def test_summary_takes_capacity_voltage_and_dft():
    shortlist = _batch(["a"])
    capacity = _batch(["a"], gravimetric_capacity_mAh_per_g=[250.0], volumetric_capacity_Ah_per_L=[900.0])
    voltages = {"r01_rank_001_a": {"voltages_V": [{"voltage_V": 2.1}, {"voltage_V": 3.4}, {"voltage_V": None}]}}
    summary = build_summary({}, {1: {"generated": _batch(["a", "x"]), "shortlist": shortlist, "new": shortlist}},
                            {1: capacity}, voltages, {"r01_rank_001_a": -1.7})
    row = summary["candidates"][0]
    assert row["gravimetric_capacity_mAh_per_g"] == 250.0 and row["volumetric_capacity_Ah_per_L"] == 900.0
    assert row["insertion_voltage_V"] == 3.4  # the most favourable site
    assert row["dft_formation_energy_eV_per_atom"] == -1.7


def test_report_writes_tables_figures_and_html(tmp_path):
    shortlist = _batch(["a", "b"], e_above_hull_eV_per_atom=[0.0, 0.05])
    capacity = _batch(["a", "b"], gravimetric_capacity_mAh_per_g=[200.0, 300.0])
    voltages = {"r01_rank_001_a": {"voltages_V": [{"voltage_V": 3.0}]},
                "r01_rank_002_b": {"voltages_V": [{"voltage_V": 2.5}]}}
    summary = build_summary({"name": "demo", "stages": ["source", "generate"]},
                            {1: {"generated": _batch([f"g{i}" for i in range(20)]), "shortlist": shortlist,
                                 "new": shortlist, "funnel": {"counts": {"generated": 20, "shortlisted": 2}}}},
                            {1: capacity}, voltages)
    relaxed = {"cdvae": [{"e_above_hull_eV_per_atom": 0.1, "energy_per_atom_eV": -3.0}] * 3,
               "substitution": [{"e_above_hull_eV_per_atom": 0.02, "energy_per_atom_eV": -4.0}] * 3}
    written = write_report(summary, tmp_path, relaxed, formats=("csv", "png", "svg", "html"))
    names = {p.name for paths in written.values() for p in paths}
    assert {"funnel.csv", "rounds.csv", "candidates.csv", "funnel.png", "funnel.svg", "property_distributions.png",
            "voltage_vs_capacity.png", "loop.png", "report.html"} <= names
    rows = (tmp_path / "candidates.csv").read_text().splitlines()
    assert len(rows) == 3 and "insertion_voltage_V" in rows[0]
    assert "demo" in (tmp_path / "report.html").read_text()


def test_spec_module_does_not_import_aiida():
    code = "import sys, battgen.campaign.spec, battgen.campaign.summary, battgen.campaign.report; " \
           "print(any(m == 'aiida' or m.startswith('aiida.') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_offline_mini_spec_is_offline():
    data = yaml.safe_load((ROOT / "examples" / "offline_mini.yaml").read_text())
    spec = parse_spec(data)
    assert spec.source.kind == "builtin_hosts" and spec.hull.materials_project == "off"
    assert spec.trained_here() == ["cdvae"] and spec.loop.iterations == 2

