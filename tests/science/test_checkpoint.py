"""battgen.checkpoint: atomic writes leave no temporary file and replace the target whole; the SIGTERM guard
either notes the signal or interrupts, and puts the previous handler back."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from battgen.checkpoint import SigtermGuard, SigtermInterrupt, atomic_write_json, atomic_write_npz, atomic_write_text


def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")
    atomic_write_text(tmp_path / "a.txt", "new")
    atomic_write_json(tmp_path / "a.json", {"x": 1.5})
    atomic_write_npz(tmp_path / "a.npz", values=np.arange(3))
    assert (tmp_path / "a.txt").read_text() == "new"
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1.5}
    with np.load(tmp_path / "a.npz") as arrays:
        assert arrays["values"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.npz", "a.txt"]


def test_sigterm_guard_notes_the_signal_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with SigtermGuard() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.received
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_armed_guard_interrupts_once():
    with SigtermGuard(interrupt=True) as guard:
        with pytest.raises(SigtermInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pthread_kill(signal.pthread_self(), 0)  # let the handler run before the block ends
        os.kill(os.getpid(), signal.SIGTERM)  # disarmed now: only noted
        assert guard.received and not guard.armed
