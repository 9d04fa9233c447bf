"""The screening funnel: validity -> SMACT charge neutrality -> uniqueness -> novelty.

Each step splits its input into ``passed`` and ``rejected`` batches; rejected rows carry ``rejected_by``
(the step) and ``reject_reason`` (e.g. ``"min distance 0.31 Å < 0.5 Å"``, ``"duplicate of
substitution-000012"``, ``"matches reference mp-1234"``), and the next step sees only what passed.
Definitions follow CDVAE/MatterGen (see the step modules), so the rates are comparable with papers.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from battgen.batch import BatchFormatError, StructureBatch
from battgen.errors import InvalidInputError
from battgen.sources.files import read_input_batch
from battgen.screen.charge import CDVAE_OXIDATION_STATES_SET, charge_neutrality_reason
from battgen.screen.novelty import (
    DEFAULT_MATCHER_SETTINGS,
    MatchIndex,
    Reducer,
    build_reference_index,
    find_duplicates,
    make_matcher,
    resolve_workers,
)
from battgen.screen.validity import DEFAULT_MIN_DISTANCE_A, DEFAULT_MIN_VOLUME_A3, validity_reason

STEPS = ("validity", "charge_neutrality", "uniqueness", "novelty")
DEFAULT_STEPS = STEPS


@dataclass(frozen=True)
class ScreenSettings:
    """Science settings of all steps; units in the names (Å, Å³, degrees)."""

    min_distance_A: float = DEFAULT_MIN_DISTANCE_A
    min_volume_A3: float = DEFAULT_MIN_VOLUME_A3
    check_self_images: bool = False
    use_pauling_test: bool = True
    include_alloys: bool = True
    oxidation_states_set: str | None = CDVAE_OXIDATION_STATES_SET
    ltol: float = DEFAULT_MATCHER_SETTINGS["ltol"]
    stol: float = DEFAULT_MATCHER_SETTINGS["stol"]
    angle_tol_deg: float = DEFAULT_MATCHER_SETTINGS["angle_tol"]

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ScreenSettings:
        """Build from a mapping; unknown keys or out-of-range values raise ValueError with the reason."""
        values = dict(values or {})
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"unknown screening setting(s) {unknown}; allowed: {sorted(allowed)}")
        settings = cls(**values)
        for name in ("min_distance_A", "min_volume_A3", "ltol", "stol", "angle_tol_deg"):
            value = getattr(settings, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"screening setting {name} must be a non-negative number, got {value!r}")
        return settings

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def matcher(self):
        return make_matcher(ltol=self.ltol, stol=self.stol, angle_tol=self.angle_tol_deg)


@dataclass
class StepResult:
    step: str
    passed: StructureBatch
    rejected: StructureBatch
    seconds: float = 0.0

    @property
    def n_in(self) -> int:
        return len(self.passed) + len(self.rejected)


@dataclass
class ScreenResult:
    input: StructureBatch
    steps: list[StepResult] = field(default_factory=list)

    @property
    def passed(self) -> StructureBatch:
        return self.steps[-1].passed if self.steps else self.input

    @property
    def rejected(self) -> StructureBatch:
        return StructureBatch.concatenate(step.rejected for step in self.steps)

    @property
    def funnel(self) -> list[tuple[str, int, int]]:
        """(step, n_in, n_out) for every step, in order."""
        return [(step.step, step.n_in, len(step.passed)) for step in self.steps]

    def step(self, name: str) -> StepResult:
        return next(step for step in self.steps if step.step == name)


# --- steps: each returns one reason (None = passed) per row --------------------------------------------
def validity_reasons(batch: StructureBatch, settings: ScreenSettings, progress: bool = False, **_) -> list:
    return [
        validity_reason(s, settings.min_distance_A, settings.min_volume_A3, settings.check_self_images)
        for s in tqdm(batch.structures, desc="validity", disable=not progress)
    ]


def charge_neutrality_reasons(
    batch: StructureBatch, settings: ScreenSettings, progress: bool = False, **_
) -> list:
    return [
        charge_neutrality_reason(
            s.composition,
            use_pauling_test=settings.use_pauling_test,
            include_alloys=settings.include_alloys,
            oxidation_states_set=settings.oxidation_states_set,
        )
        for s in tqdm(batch.structures, desc="SMACT", disable=not progress)
    ]


def uniqueness_reasons(batch: StructureBatch, settings: ScreenSettings, progress: bool = False,
                       reducer: Reducer | None = None, workers: int | None = None, **_) -> list:
    matcher = None if reducer is not None else settings.matcher()
    duplicate_of = find_duplicates(batch.structures, batch.row_ids, matcher, progress=progress, reducer=reducer,
                                   workers=workers)
    return [None if match is None else f"duplicate of {match}" for match in duplicate_of]


def novelty_reasons(
    batch: StructureBatch,
    settings: ScreenSettings,
    reference: StructureBatch | MatchIndex | None = None,
    progress: bool = False,
    reducer: Reducer | None = None,
    workers: int | None = None,
    **_,
) -> list:
    if reference is None:
        raise ValueError("the novelty step needs a reference batch")
    if isinstance(reference, MatchIndex):
        index = reference
    else:
        matcher = None if reducer is not None else settings.matcher()
        index = build_reference_index(reference.structures, _reference_labels(reference), matcher, reducer)
    matches = index.find_all(batch.structures, progress=progress, workers=workers)
    return [None if match is None else f"matches reference {match}" for match in matches]


def _reference_labels(reference: StructureBatch) -> list[str]:
    """Reference rows are named by ``material_id`` when they have one (mp-1234), else by row_id."""
    return [str(meta.get("material_id") or meta["row_id"]) for meta in reference.meta]


STEP_FUNCTIONS: dict[str, Callable[..., list]] = {
    "validity": validity_reasons,
    "charge_neutrality": charge_neutrality_reasons,
    "uniqueness": uniqueness_reasons,
    "novelty": novelty_reasons,
}


def split_by_reasons(batch: StructureBatch, step: str, reasons: Sequence[str | None]) -> tuple:
    """(passed, rejected) batches; rejected rows get ``rejected_by`` and ``reject_reason``."""
    passed = batch.select([reason is None for reason in reasons])
    rejected = batch.select([reason is not None for reason in reasons])
    rejected_reasons = [reason for reason in reasons if reason is not None]
    rejected = rejected.with_columns(rejected_by=[step] * len(rejected), reject_reason=rejected_reasons)
    return passed, rejected


def run_step(
    step: str,
    batch: StructureBatch,
    settings: ScreenSettings | None = None,
    reference: StructureBatch | MatchIndex | None = None,
    progress: bool = False,
    reducer: Reducer | None = None,
    workers: int | None = None,
) -> StepResult:
    """One step; ``reducer`` (a :class:`Reducer` with ``settings``' matcher) lets steps share reductions;
    ``workers`` (uniqueness, novelty) as in :func:`battgen.screen.novelty.resolve_workers`."""
    if step not in STEP_FUNCTIONS:
        raise ValueError(f"unknown screening step {step!r}; known: {list(STEP_FUNCTIONS)}")
    settings = settings or ScreenSettings()
    started = time.perf_counter()
    reasons = STEP_FUNCTIONS[step](batch, settings, reference=reference, progress=progress, reducer=reducer,
                                   workers=workers)
    passed, rejected = split_by_reasons(batch, step, reasons)
    return StepResult(step, passed, rejected, seconds=time.perf_counter() - started)


def screen_batch(
    batch: StructureBatch,
    reference: StructureBatch | MatchIndex | None = None,
    steps: Sequence[str] = DEFAULT_STEPS,
    settings: ScreenSettings | dict[str, Any] | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> ScreenResult:
    """Run the steps in order, each on what the previous one passed.

    ``reference`` (a batch, or a prebuilt :class:`MatchIndex` to reuse reduced reference structures) is
    needed only by the ``novelty`` step. ``workers`` (default one process; 0 = one per core) spreads the
    uniqueness and novelty matching over forked processes by composition bucket, with the same decisions.
    """
    if not isinstance(settings, ScreenSettings):
        settings = ScreenSettings.from_dict(settings)
    unknown = [step for step in steps if step not in STEP_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown screening step(s) {unknown}; known: {list(STEP_FUNCTIONS)}")
    if "novelty" in steps and reference is None:
        raise ValueError("the novelty step needs a reference batch")
    result = ScreenResult(input=batch)
    current = batch
    # Uniqueness and novelty see the same Structure objects: reduce each once for both steps.
    reducer = _shared_reducer(settings, reference)
    for step in steps:
        step_result = run_step(step, current, settings, reference=reference, progress=progress, reducer=reducer,
                               workers=workers)
        result.steps.append(step_result)
        current = step_result.passed
    return result


def _shared_reducer(settings: ScreenSettings, reference: StructureBatch | MatchIndex | None) -> Reducer:
    matcher = settings.matcher()
    if isinstance(reference, MatchIndex) and reference.matcher.as_dict() == matcher.as_dict():
        return reference.reducer  # a prebuilt index's reductions serve uniqueness too
    return Reducer(matcher)


# --- battgen screen -----------------------------------------------------------------------------------
_CONFIG_KEYS = {"input", "reference", "known_materials", "steps", "settings", "progress", "workers"}


def combined_reference(known: StructureBatch, given: StructureBatch | None) -> StructureBatch:
    """Known-materials structures plus the user's reference for novelty, known rows first; a known row whose
    ``row_id`` (an MP id) the user's reference also holds is left out: it is the same material."""
    if given is None:
        return known
    given_ids = {meta["row_id"] for meta in given.meta}
    return StructureBatch.concatenate([known.select([meta["row_id"] not in given_ids for meta in known.meta]), given])


def _known_reference(value: Any, workdir: Path):
    """The known-materials reference a config names: ``embedded`` (default), a file path, or None."""
    from battgen.known_materials import KnownMaterials

    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"known_materials must be 'embedded', a file path or null, got {value!r}")
    return KnownMaterials.load(None if value == "embedded" else workdir / value)


def run_screen_command(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """``battgen screen``: config ``input`` (batch file), optional ``reference`` (batch file of more known
    structures), ``known_materials`` (``embedded`` — the default, battgen's MP-derived reference —, a
    reference file path, or null), ``steps`` (default: all four; without any reference the first three),
    ``settings`` (see :class:`ScreenSettings`), ``workers`` (uniqueness and novelty matching in that many forked
    processes, 0 = one per core; default one process; same decisions). Writes ``passed.jsonl.gz`` and
    ``rejected.jsonl.gz``;
    novelty rejections name the matched id (``matches reference mp-1138``)."""
    from battgen.known_materials import KnownMaterialsFormatError

    unknown = sorted(set(config) - _CONFIG_KEYS)
    if unknown:
        raise InvalidInputError(f"unknown config key(s) {unknown}; allowed: {sorted(_CONFIG_KEYS)}")
    if "input" not in config:
        raise InvalidInputError("config needs 'input': the batch file to screen")
    try:
        known = _known_reference(config.get("known_materials", "embedded"), workdir)
        steps = list(config.get("steps") or (DEFAULT_STEPS if config.get("reference") or known else DEFAULT_STEPS[:3]))
        settings = ScreenSettings.from_dict(config.get("settings"))
        batch = read_input_batch(workdir / config["input"])
        reference = read_input_batch(workdir / config["reference"]) if config.get("reference") else None
        if known is not None and "novelty" in steps:
            known_batch = known.structure_batch()
            reference = combined_reference(known_batch, reference)
        if "novelty" in steps and reference is None:
            raise ValueError("the novelty step needs 'reference' (a batch file of known structures) or "
                             "'known_materials'")
        if any(step not in STEP_FUNCTIONS for step in steps):
            raise ValueError(f"unknown step in {steps}; known: {list(STEP_FUNCTIONS)}")
        workers = resolve_workers(config.get("workers"))
    except (BatchFormatError, KnownMaterialsFormatError, ValueError, TypeError) as exc:
        raise InvalidInputError(str(exc)) from exc

    result = screen_batch(batch, reference, steps, settings, progress=bool(config.get("progress", False)),
                          workers=workers)
    result.passed.write(workdir / "passed.jsonl.gz")
    result.rejected.write(workdir / "rejected.jsonl.gz")
    return {
        "passed": "passed.jsonl.gz",
        "rejected": "rejected.jsonl.gz",
        "n_input": len(batch),
        "n_passed": len(result.passed),
        "funnel": [{"step": step, "n_in": n_in, "n_out": n_out} for step, n_in, n_out in result.funnel],
        "step_seconds": {step.step: round(step.seconds, 3) for step in result.steps},
        "settings": settings.as_dict(),
        "workers": workers,
        "known_materials": known.describe() if known is not None else None,
        "units": {"min_distance_A": "Å", "min_volume_A3": "Å³", "angle_tol_deg": "degree"},
    }
