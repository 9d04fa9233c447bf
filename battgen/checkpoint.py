"""Atomic file writes shared by the restartable commands (relax, md, si-anode).

A job killed at its walltime must never leave a half-written file under its final name: each writer
writes a temporary sibling and renames it over the target (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_write_json(path: Path, data: Any, *, indent: int | None = 1, default: Any = None) -> None:
    """``json.dumps(data)`` to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=indent, default=default))


def atomic_write_npz(path: Path, **arrays: Any) -> None:
    """``numpy.savez(path, **arrays)`` atomically (the temporary name keeps the ``.npz`` suffix numpy wants)."""
    import numpy as np

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


class SigtermInterrupt(BaseException):
    """Raised by an interrupting :class:`SigtermGuard`; a BaseException so no ``except Exception`` swallows it."""


class SigtermGuard:
    """SIGTERM (a scheduler's walltime kill) as something a long loop can react to, instead of dying mid-write.

    ``interrupt=False``: the signal only sets :attr:`received`, which the loop checks between steps (training).
    ``interrupt=True``: while :attr:`armed`, the signal raises :class:`SigtermInterrupt` at once, dropping the
    item in flight (the finished ones are in the checkpoint); set ``armed = False`` before the final quick
    writes so that a late signal is only noted. Main thread only: elsewhere the signal is not ours to handle.
    """

    def __init__(self, interrupt: bool = False) -> None:
        self.armed, self.received, self.previous = interrupt, False, None

    def __enter__(self) -> SigtermGuard:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = True
        if self.armed:
            self.armed = False
            raise SigtermInterrupt()

    def __exit__(self, *exc) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
