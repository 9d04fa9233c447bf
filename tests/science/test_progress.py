"""battgen.progress: the progress file beside the tqdm bar (throttling, ETA, atomic rewrite) and the CLI's
``--threads`` (environment + torch, recorded in the summary)."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from ase.calculators.emt import EMT
from pymatgen.core import Lattice, Structure

from battgen.batch import StructureBatch
from battgen.cli import SUMMARY_FILENAME
from battgen.mlip.relax import relax_batch
from battgen.progress import (PROGRESS_FILENAME, Bar, ProgressFile, active, format_progress, progress_file,
                              read_progress, track)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_eta_and_throttling_on_a_fake_clock(tmp_path):
    clock = FakeClock()
    path = tmp_path / PROGRESS_FILENAME
    progress = ProgressFile(path, "relax", min_interval_s=5.0, clock=clock)
    assert read_progress(path)["status"] == "running" and read_progress(path)["done"] == 0

    progress.start_stage("relax (emt)", total=10, unit="struct", initial=2)  # 2 rows from a checkpoint
    clock.now += 4.0
    progress.update(4, current="licl")
    state = read_progress(path)
    assert (state["done"], state["total"], state["current"]) == (2, 10, None)  # 4 s < 5 s: not rewritten yet
    assert progress.state["rate_per_s"] == pytest.approx(0.5)  # 2 rows done here in 4 s
    assert progress.state["eta_s"] == pytest.approx(12.0)  # 6 rows left at 0.5 rows/s

    clock.now += 1.0
    progress.update(5, current="nacl")
    state = read_progress(path)
    assert (state["done"], state["current"], state["elapsed_s"]) == (5, "nacl", 5.0)
    assert state["eta_s"] == pytest.approx(5 / 0.6, abs=0.1)
    progress.finish("finished")
    assert read_progress(path)["status"] == "finished"
    assert not (tmp_path / (PROGRESS_FILENAME + ".tmp")).exists()  # renamed into place, never left half
    with pytest.raises(ValueError, match="status must be one of"):
        progress.finish("done")


def test_format_progress_line():
    state = {"command": "relax", "stage": "relax (chgnet)", "done": 3, "total": 12, "unit": "struct",
             "current": "licl (LiCl)", "rate_per_s": 0.25, "eta_s": 36, "elapsed_s": 12, "status": "running"}
    assert format_progress(state) == ("relax (chgnet): 3/12 struct (25%), current licl (LiCl), 0.25 struct/s, "
                                      "ETA 36s, elapsed 12s [running]")
    finished = {**state, "done": 12, "current": None, "status": "finished", "elapsed_s": 125}
    assert format_progress(finished) == "relax (chgnet): 12/12 struct (100%), 0.25 struct/s, elapsed 2m05s [finished]"


def test_track_reports_the_current_row_while_it_runs(tmp_path):
    seen = []
    with progress_file(tmp_path, "test", min_interval_s=0.0) as progress:
        for item in track(["a", "b", "c"], total=3, desc="letters", unit="letter", disable=True, label=str.upper):
            seen.append(read_progress(tmp_path / PROGRESS_FILENAME))
        with Bar(total=2, desc="second stage", unit="step", disable=True) as bar:
            bar.update(2, current="last")
        progress.finish("finished")
    assert [(s["stage"], s["done"], s["current"]) for s in seen] == [
        ("letters", 0, "A"), ("letters", 1, "B"), ("letters", 2, "C")]
    final = read_progress(tmp_path / PROGRESS_FILENAME)
    assert (final["stage"], final["done"], final["total"], final["status"]) == ("second stage", 2, 2, "finished")
    assert final["stages_finished"] == [{"stage": "letters", "done": 3, "total": 3}]
    assert active() is None  # outside the CLI nothing reports


def test_relax_batch_fills_the_progress_file(tmp_path):
    cu = Structure(Lattice.cubic(3.7), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    batch = StructureBatch.from_structures([cu, cu.copy()], [{"row_id": "cu-a"}, {"row_id": "cu-b"}])
    with progress_file(tmp_path, "relax") as progress:
        relax_batch(batch, calculator=EMT(), supported_elements={"Cu"}, fmax=0.05, max_steps=50, progress=False)
        progress.finish("finished")
    state = json.loads((tmp_path / PROGRESS_FILENAME).read_text())
    assert state["progress_format_version"] == 1 and state["command"] == "relax"
    assert (state["stage"], state["done"], state["total"], state["unit"]) == ("relax (chgnet)", 2, 2, "struct")
    assert state["status"] == "finished" and state["eta_s"] == 0.0 and state["rate_per_s"] > 0
    assert state["units"]["eta_s"] == "s"


def test_failed_command_leaves_a_failed_progress_file(tmp_path):
    with pytest.raises(RuntimeError), progress_file(tmp_path, "relax"):
        raise RuntimeError("boom")
    assert read_progress(tmp_path / PROGRESS_FILENAME)["status"] == "failed"


@pytest.mark.slow
def test_cli_threads_and_progress_through_the_console_script(tmp_path, battgen_executable):
    """The real ``battgen relax --threads 1`` on CHGNet: threads set and recorded, progress file finished."""
    si = Structure(Lattice.from_parameters(3.84, 3.84, 3.84, 60, 60, 60), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    StructureBatch.from_structures([si], [{"row_id": "si2"}]).write(tmp_path / "structures.jsonl.gz")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"mlip": "chgnet", "max_steps": 5, "checkpoint": False}))
    result = subprocess.run([battgen_executable, "relax", "--config", "config.yaml", "--workdir", ".", "--threads", "1"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "requires_grad=True to a scalar" not in result.stderr  # the known-harmless CHGNet warning is silenced
    assert "relax (chgnet)" in result.stderr  # the tqdm bar is still there
    summary = yaml.safe_load((tmp_path / SUMMARY_FILENAME).read_text())
    threads = summary["threads"]
    assert threads["requested"] == 1 and threads["torch_num_threads"] == 1
    assert threads["OMP_NUM_THREADS"] == threads["MKL_NUM_THREADS"] == "1"
    state = read_progress(tmp_path / PROGRESS_FILENAME)
    assert (state["done"], state["total"], state["status"]) == (1, 1, "finished")

    bad = subprocess.run([battgen_executable, "relax", "--config", "config.yaml", "--threads", "0"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--threads must be a positive integer" in bad.stderr
