"""Materials Project snapshots, mocked at the MPRester boundary (no network)."""

from __future__ import annotations

import logging

import pytest
import yaml
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry

from battgen import cli
from battgen.sources import materials_project as mp
from battgen.sources.materials_project import (
    EmptyQueryError,
    InvalidApiKeyError,
    MissingApiKeyError,
    MPQuery,
    query_materials_project,
    read_snapshot,
    resolve_api_key,
    snapshot_to_batch,
    write_snapshot,
)

FAKE_KEY = "abcdEFGHijklMNOPqrstUVWXyz012345"  # 32 characters like a real key


def _docs():
    """Summary documents (as the mp-api returns with use_document_model=False) built from real structures."""
    licoo2 = Structure.from_spacegroup(
        "R-3m", Lattice.hexagonal(2.8156, 14.0542), ["Li", "Co", "O"], [[0, 0, 0], [0, 0, 0.5], [0, 0, 0.2396]]
    )
    li2o = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.6114), ["Li", "O"], [[0.25] * 3, [0, 0, 0]])
    return [
        {"material_id": "mp-22526", "structure": licoo2, "formula_pretty": "LiCoO2", "nsites": 12,
         "formation_energy_per_atom": -1.723, "band_gap": 2.1, "energy_above_hull": 0.0,
         "energy_per_atom": -6.42, "uncorrected_energy_per_atom": -5.80, "is_stable": True,
         "theoretical": False, "symmetry": {"symbol": "R-3m"}},
        {"material_id": "mp-1960", "structure": li2o.as_dict(), "formula_pretty": "Li2O", "nsites": 12,
         "formation_energy_per_atom": -2.07, "band_gap": 4.99, "energy_above_hull": 0.0,
         "energy_per_atom": -4.98, "uncorrected_energy_per_atom": -4.68, "is_stable": True,
         "theoretical": False, "symmetry": {"symbol": "Fm-3m"}},
    ]


class FakeMPRester:
    """Stands in for mp_api.client.MPRester: records the calls, answers from canned documents."""

    calls: list = []
    docs: list = []
    fail_with: Exception | None = None

    def __init__(self, api_key=None, **kwargs):
        type(self).calls.append(("init", api_key))
        self.materials = self
        self.summary = self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def get_database_version(self):
        return "2025.09.25"

    def search(self, **kwargs):
        type(self).calls.append(("search", kwargs))
        if type(self).fail_with is not None:
            raise type(self).fail_with
        return list(type(self).docs)


@pytest.fixture
def fake_mp(monkeypatch):
    import mp_api.client

    FakeMPRester.calls, FakeMPRester.docs, FakeMPRester.fail_with = [], _docs(), None
    monkeypatch.setattr(mp_api.client, "MPRester", FakeMPRester)
    monkeypatch.setenv("MP_API_KEY", FAKE_KEY)
    return FakeMPRester


@pytest.fixture
def no_key(monkeypatch):
    from pymatgen.core import SETTINGS

    monkeypatch.delenv("MP_API_KEY", raising=False)
    monkeypatch.delitem(SETTINGS, "PMG_MAPI_KEY", raising=False)


def test_query_kwargs():
    query = MPQuery(elements=["Co", "O"], working_ion="Li", nsites_max=40, energy_above_hull_max=0.05,
                    band_gap_min=0.5, exclude_elements=["F"], limit=10)
    kwargs = query.search_kwargs()
    assert kwargs["elements"] == ["Co", "O", "Li"]
    assert kwargs["num_sites"] == (1, 40) and kwargs["energy_above_hull"] == (0.0, 0.05)
    assert kwargs["band_gap"] == (0.5, 1000.0) and kwargs["exclude_elements"] == ["F"]
    assert kwargs["chunk_size"] == 10 and kwargs["num_chunks"] == 1
    assert "structure" in kwargs["fields"] and "uncorrected_energy_per_atom" in kwargs["fields"]
    with pytest.raises(ValueError, match="unknown query key"):
        MPQuery.from_dict({"elemnts": ["Li"]})
    with pytest.raises(ValueError, match="refusing to download all"):
        MPQuery()
    with pytest.raises(ValueError, match="not an element"):
        MPQuery(working_ion="Lx")


def test_resolve_api_key_sources(monkeypatch, no_key):
    from pymatgen.core import SETTINGS

    with pytest.raises(MissingApiKeyError, match="MP_API_KEY"):
        resolve_api_key()
    monkeypatch.setitem(SETTINGS, "PMG_MAPI_KEY", "from-pmgrc")
    assert resolve_api_key() == "from-pmgrc"
    monkeypatch.setenv("MP_API_KEY", "from-env")
    assert resolve_api_key() == "from-env"
    assert resolve_api_key("explicit") == "explicit"


def test_snapshot_round_trip_without_key(fake_mp, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    query = MPQuery(working_ion="Li", energy_above_hull_max=0.1)
    records, version = query_materials_project(query)
    assert fake_mp.calls[0] == ("init", FAKE_KEY)
    assert fake_mp.calls[1][1]["elements"] == ["Li"]
    path = write_snapshot(records, tmp_path / "snap.jsonl", query, version)
    header, again = read_snapshot(path)
    assert header["format"] == "battgen.mp_snapshot" and header["n_records"] == 2
    assert header["database_version"] == "2025.09.25" and header["query"]["working_ion"] == "Li"
    assert header["created_at"].endswith("+00:00")
    assert again[0]["formation_energy_per_atom_eV"] == pytest.approx(-1.723)
    entry = ComputedStructureEntry.from_dict(again[0]["entry"])
    assert entry.energy_per_atom == pytest.approx(-6.42)  # corrected
    assert entry.uncorrected_energy_per_atom == pytest.approx(-5.80)
    batch = snapshot_to_batch(path)
    assert batch.row_ids == ["mp-22526", "mp-1960"]
    assert batch.meta[1]["e_above_hull_eV_per_atom"] == 0.0 and batch.meta[1]["band_gap_eV"] == 4.99
    assert batch.structures[1].composition.reduced_formula == "Li2O"
    assert snapshot_to_batch(path, exclude_elements=["Co"]).row_ids == ["mp-1960"]
    out = capsys.readouterr()
    assert FAKE_KEY not in path.read_text() + out.out + out.err + caplog.text


def test_gzipped_snapshot_and_truncation(fake_mp, tmp_path):
    records, version = query_materials_project(MPQuery(elements=["Li"]))
    path = write_snapshot(records, tmp_path / "snap.jsonl.gz", {"elements": ["Li"], "api_key": FAKE_KEY}, version)
    header, _ = read_snapshot(path)
    assert "api_key" not in header["query"]
    lines = (tmp_path / "plain.jsonl")
    import gzip

    text = gzip.open(path, "rt").read()
    assert FAKE_KEY not in text
    lines.write_text("\n".join(text.splitlines()[:-1]) + "\n")  # drop the last record
    with pytest.raises(mp.SnapshotFormatError, match="announces 2 records but 1"):
        read_snapshot(lines)


def test_empty_query(fake_mp):
    fake_mp.docs = []
    with pytest.raises(EmptyQueryError, match="matched no material"):
        query_materials_project(MPQuery(elements=["Og"]))


def test_invalid_key_message_hides_key(fake_mp):
    from mp_api.client.core.exceptions import MPRestError

    fake_mp.fail_with = MPRestError(f"REST query returned with error status code 401 on URL x key={FAKE_KEY}")
    with pytest.raises(InvalidApiKeyError) as info:
        query_materials_project(MPQuery(elements=["Li"]))
    assert "rejected the API key" in str(info.value) and FAKE_KEY not in str(info.value)


def _run_cli(tmp_path, config, capsys):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    code = cli.main(["query-mp", "--config", str(config_path), "--workdir", str(tmp_path / "run")])
    out = capsys.readouterr()
    summary_text = (tmp_path / "run" / cli.SUMMARY_FILENAME).read_text()
    return code, out, summary_text


def test_cli_success(fake_mp, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    code, out, summary_text = _run_cli(tmp_path, {"query": {"working_ion": "Li", "nsites_max": 20}}, capsys)
    assert code == 0
    summary = yaml.safe_load(summary_text)
    assert summary["outputs"]["n_records"] == 2 and summary["outputs"]["database_version"] == "2025.09.25"
    snapshot = tmp_path / "run" / summary["outputs"]["snapshot"]
    from battgen.batch import StructureBatch

    assert len(StructureBatch.read(tmp_path / "run" / summary["outputs"]["batch"])) == 2
    import gzip

    everything = gzip.open(snapshot, "rt").read() + summary_text + out.out + out.err + caplog.text
    assert FAKE_KEY not in everything


def test_cli_missing_key_exits_2(no_key, tmp_path, capsys):
    code, out, summary_text = _run_cli(tmp_path, {"query": {"elements": ["Li"]}}, capsys)
    assert code == cli.EXIT_INVALID_INPUT == 2
    assert "no Materials Project API key" in out.err and "Traceback" not in out.err
    assert len(out.err.strip().splitlines()) == 1
    assert yaml.safe_load(summary_text)["status"] == "invalid_input"


def test_cli_invalid_key_and_empty_query_exit_2(fake_mp, tmp_path, capsys):
    from mp_api.client.core.exceptions import MPRestError

    fake_mp.fail_with = MPRestError("REST query returned with error status code 403 on URL ...")
    code, out, summary_text = _run_cli(tmp_path, {"query": {"elements": ["Li"]}}, capsys)
    assert code == 2 and "rejected the API key" in out.err and FAKE_KEY not in out.err + summary_text
    fake_mp.fail_with, fake_mp.docs = None, []
    code, out, _ = _run_cli(tmp_path, {"query": {"elements": ["Og"]}}, capsys)
    assert code == 2 and "matched no material" in out.err


def test_cli_rejects_key_in_config(fake_mp, tmp_path, capsys):
    code, out, _ = _run_cli(tmp_path, {"query": {"elements": ["Li"]}, "api_key": "xyz"}, capsys)
    assert code == 2 and "MP_API_KEY" in out.err
