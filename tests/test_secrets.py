"""No secrets or licensed content in what we ship or what we store: the repository's tracked files, and an
exported archive of a run that started from a Materials Project query made with an API key."""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SENTINEL_KEY = "k3YsEnTiNeL0123456789abcdefABCDEF"  # an MP-API-key-shaped value that must never be stored

# What must never appear: private keys, POTCAR bodies (VASP licence), literal MP API keys / passwords.
FORBIDDEN = {
    "private key": re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "POTCAR content": re.compile(rb"PAW_PBE \S+ \d{2}[A-Z][a-z]{2}\d{4}[\s\S]{0,400}TITEL"),
    "MP API key assignment": re.compile(rb"""(?i)(mp_api_key|api_key)\s*[:=]\s*['"][A-Za-z0-9]{30,}['"]"""),
    "password assignment": re.compile(rb"""(?i)password\s*[:=]\s*['"][^'"\s]{6,}['"]"""),
}


def scan(blobs: dict[str, bytes], extra: bytes | None = None) -> list[str]:
    """Names of the blobs that contain a forbidden pattern (or ``extra``), with the pattern found."""
    found = []
    for name, data in blobs.items():
        for label, pattern in FORBIDDEN.items():
            if pattern.search(data):
                found.append(f"{name}: {label}")
        if extra is not None and extra in data:
            found.append(f"{name}: the sentinel key")
    return found


def test_scanner_finds_what_it_looks_for():
    """The patterns fire on planted examples (the scan below could otherwise pass vacuously)."""
    planted = {
        "key.pem": b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n",
        "POTCAR": b"  PAW_PBE Li_sv 10Sep2004\n 1.0\n parameters from PSCTR are:\n   VRHFIN =Li: 1s2s2p\n   TITEL  = PAW_PBE",
        "config.py": b"MP_API_KEY = '" + SENTINEL_KEY.encode() + b"'",
        "settings.yaml": b"password: 'hunter2hunter2'",
        "fine.txt": b"api_key: read from the environment",
    }
    assert sorted(scan(planted)) == ["POTCAR: POTCAR content", "config.py: MP API key assignment",
                                     "key.pem: private key", "settings.yaml: password assignment"]


def test_repository_files_hold_no_secrets():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing tracked to scan")
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    blobs = {name: (REPO / name).read_bytes() for name in names
             if (REPO / name).is_file() and name != "tests/test_secrets.py"}
    assert len(blobs) > 50
    assert scan(blobs) == []


def test_archive_of_a_run_from_an_mp_query_holds_no_key(aiida_profile_clean, tmp_path, monkeypatch):
    """A snapshot written by a query made with a key, the seed batch and a generation step, exported with
    their whole provenance: the key is nowhere in the archive (nodes, repository files, logs)."""
    from aiida import orm
    from aiida.tools.archive import create_archive
    from pymatgen.core import Lattice, Structure

    from aiida_battgen.calculations.functions.batch_from_snapshot import batch_from_snapshot
    from aiida_battgen.calculations.functions.generate_substitution import generate_substitution
    from aiida_battgen.data.snapshot import SourceSnapshotData
    from battgen.sources.materials_project import write_snapshot

    monkeypatch.setenv("MP_API_KEY", SENTINEL_KEY)
    licoo2 = Structure.from_spacegroup("R-3m", Lattice.hexagonal(2.82, 14.05), ["Li", "Co", "O"],
                                       [[0, 0, 0], [0, 0, 0.5], [0, 0, 0.24]])
    records = [{"material_id": "mp-22526", "structure": licoo2.as_dict(), "band_gap_eV": 2.1,
                "e_above_hull_eV_per_atom": 0.0, "formation_energy_per_atom_eV": -1.6, "energy_per_atom_eV": -5.7,
                "uncorrected_energy_per_atom_eV": -5.5, "entry": None}]
    path = write_snapshot(records, tmp_path / "mp.jsonl", {"elements": ["Li", "Co", "O"], "api_key": SENTINEL_KEY},
                          "2025.09.25")
    snapshot = SourceSnapshotData.from_file(path).store()
    seeds = batch_from_snapshot(snapshot)["structures"]
    generated = generate_substitution(seeds, orm.Dict({"n": 5, "conditions": {"threshold": 0.001}}), orm.Int(0))
    archive = tmp_path / "run.aiida"
    create_archive([generated["structures"]], filename=archive)
    with zipfile.ZipFile(archive) as bundle:
        blobs = {info.filename: bundle.read(info) for info in bundle.infolist() if not info.is_dir()}
    assert len(blobs) >= 3  # metadata, database, repository objects
    assert scan(blobs, extra=SENTINEL_KEY.encode()) == []
