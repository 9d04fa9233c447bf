"""A small progress file beside the tqdm bar, for whoever watches a job from outside (AiiDA's CalcJob
monitor, ``aiida-battgen status``, a user with ``cat``).

``battgen <command>`` opens :func:`progress_file` for its working directory; the long loops of the commands
iterate through :func:`track` or update a :class:`Bar`, which drive their tqdm bar (stderr) as before and
also rewrite ``battgen-progress.json``: the command, the current stage, rows done / total, the current row,
the rate and the ETA (seconds). The file is replaced atomically (written to a temporary name, then
renamed), so a reader never sees half of it, and rewritten at most every ``min_interval_s`` seconds (2 s)
plus at the start and end of each stage. Outside the CLI (library calls, tests) no file is written.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

PROGRESS_FILENAME = "battgen-progress.json"
PROGRESS_FORMAT_VERSION = 1
MIN_WRITE_INTERVAL_S = 2.0
# Units of the numbers in the file (rows are whatever ``unit`` names: structures, MD steps, epochs ...).
UNITS = {"elapsed_s": "s", "eta_s": "s", "rate_per_s": "unit/s", "updated_at": "ISO 8601 UTC", "started_at": "ISO 8601 UTC"}
STATUSES = ("running", "finished", "failed", "invalid_input")


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class ProgressFile:
    """The progress of one command run, rewritten atomically to ``path`` (at most every ``min_interval_s``)."""

    def __init__(self, path: Path, command: str, min_interval_s: float = MIN_WRITE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self.min_interval_s = float(min_interval_s)
        self._clock = clock
        self._last_write: float | None = None
        self._discarded = False
        self._stage_started = clock()
        self._stage_initial = 0
        self.state: dict[str, Any] = {
            "progress_format_version": PROGRESS_FORMAT_VERSION, "command": command, "status": "running",
            "stage": None, "done": 0, "total": None, "unit": None, "current": None,
            "elapsed_s": 0.0, "rate_per_s": None, "eta_s": None, "stages_finished": [],
            "started_at": _now_iso(), "updated_at": None, "pid": os.getpid(), "units": UNITS,
        }
        self.write()

    def start_stage(self, stage: str, total: int | None, unit: str, initial: int = 0) -> None:
        """A new loop begins (rows from ``initial`` on are the ones this run does: they set the rate)."""
        if self.state["stage"] is not None and self.state["stage"] != stage:
            self.state["stages_finished"].append(
                {"stage": self.state["stage"], "done": self.state["done"], "total": self.state["total"]})
        self._stage_started = self._clock()
        self._stage_initial = int(initial)
        self.state.update(stage=stage, total=None if total is None else int(total), unit=unit, done=int(initial),
                          current=None, rate_per_s=None, eta_s=None)
        self.write()

    def update(self, done: int, current: str | None = None, force: bool = False) -> None:
        """``done`` rows of the stage are finished; ``current`` is the one in progress (or None)."""
        elapsed = self._clock() - self._stage_started
        self.state.update(done=int(done), current=current, elapsed_s=round(elapsed, 1))
        done_here = done - self._stage_initial
        if done_here > 0 and elapsed > 0:
            rate = done_here / elapsed
            self.state["rate_per_s"] = round(rate, 4)
            total = self.state["total"]
            self.state["eta_s"] = round(max(total - done, 0) / rate, 1) if total is not None else None
        if force or self._last_write is None or self._clock() - self._last_write >= self.min_interval_s:
            self.write()

    def finish(self, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self.state["status"] = status
        self.state["current"] = None
        if status == "finished" and self.state["total"] is not None and self.state["done"] >= self.state["total"]:
            self.state["eta_s"] = 0.0
        self.write()

    def discard(self) -> None:
        """Remove the file (the input was rejected: nothing but the summary may stay behind)."""
        self.path.unlink(missing_ok=True)
        self.path.with_name(self.path.name + ".tmp").unlink(missing_ok=True)
        self._discarded = True

    def write(self) -> None:
        if self._discarded:
            return
        self.state["updated_at"] = _now_iso()
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)
        self._last_write = self._clock()


_ACTIVE: ProgressFile | None = None


def active() -> ProgressFile | None:
    """The progress file of the command running in this process (None outside the CLI)."""
    return _ACTIVE


@contextlib.contextmanager
def progress_file(workdir: Path, command: str, min_interval_s: float = MIN_WRITE_INTERVAL_S) -> Iterator[ProgressFile]:
    """Make ``workdir/battgen-progress.json`` the file :func:`track` and :class:`Bar` report to.

    The caller sets the final status with :meth:`ProgressFile.finish` (left ``failed`` on an exception).
    """
    global _ACTIVE
    previous = _ACTIVE
    _ACTIVE = ProgressFile(Path(workdir) / PROGRESS_FILENAME, command, min_interval_s)
    try:
        yield _ACTIVE
    except BaseException:
        if not _ACTIVE._discarded:
            _ACTIVE.finish("failed")
        raise
    finally:
        _ACTIVE = previous


def read_progress(path: Path) -> dict[str, Any] | None:
    """The progress written at ``path``; None when it is missing or not (yet) a JSON object."""
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_progress(state: dict[str, Any]) -> str:
    """One line, e.g. ``relax (chgnet): 3/10 struct (30%), current licl, 1.2 struct/s, ETA 6s [running]``."""
    done, total, unit = state.get("done", 0), state.get("total"), state.get("unit") or "rows"
    count = f"{done}/{total} {unit}" if total is not None else f"{done} {unit}"
    if total:
        count += f" ({100 * done / total:.0f}%)"
    parts = [f"{state.get('stage') or state.get('command')}: {count}"]
    if state.get("current"):
        parts.append(f"current {state['current']}")
    if state.get("rate_per_s"):
        parts.append(f"{state['rate_per_s']:.3g} {unit}/s")
    if state.get("status") == "running":
        parts.append(f"ETA {_duration(state.get('eta_s'))}")
    parts.append(f"elapsed {_duration(state.get('elapsed_s'))}")
    return ", ".join(parts) + f" [{state.get('status')}]"


class Bar:
    """A tqdm bar that also reports to the active progress file (``update(n, current=...)``)."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0, disable: bool = False,
                 **tqdm_kwargs: Any):
        self.done = int(initial)
        self._closed = False
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, **tqdm_kwargs)
        self._file = active()
        if self._file is not None:
            self._file.start_stage(desc, total, unit, initial)

    def update(self, n: int = 1, current: str | None = None) -> None:
        self.done += n
        self.bar.update(n)
        if self._file is not None:
            self._file.update(self.done, current)

    def set_postfix(self, **values: Any) -> None:
        self.bar.set_postfix(**values)

    def set_current(self, current: str | None) -> None:
        """Name the row now in progress without counting one more done."""
        if self._file is not None:
            self._file.update(self.done, current)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.bar.close()
        if self._file is not None:
            self._file.update(self.done, None, force=True)

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Tracked:
    """What :func:`track` returns: iterate it; ``set_postfix`` / ``close`` as on a tqdm bar."""

    def __init__(self, iterable: Iterable[Any], bar: Bar, label: Callable[[Any], str] | None):
        self._iterable, self._bar, self._label = iterable, bar, label

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self._iterable:
                self._bar.set_current(self._label(item) if self._label else None)
                yield item
                self._bar.update(1)
        finally:
            self._bar.close()

    def set_postfix(self, **values: Any) -> None:
        self._bar.set_postfix(**values)

    def close(self) -> None:
        self._bar.close()


def track(iterable: Iterable[Any], total: int | None, desc: str, unit: str = "it", disable: bool = False,
          label: Callable[[Any], str] | None = None, initial: int = 0, **tqdm_kwargs: Any) -> _Tracked:
    """Iterate ``iterable`` with a tqdm bar, reporting each item as current (``label(item)``) while it runs.

    ``initial``: items already done before ``iterable`` starts (a resumed run: ``total`` counts them too).
    """
    return _Tracked(iterable, Bar(total, desc, unit, initial=initial, disable=disable, **tqdm_kwargs), label)
