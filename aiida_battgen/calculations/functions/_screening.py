"""Shared body of the ``screen_*`` calcfunctions: validate, run one battgen screening step, wrap outputs.

Exit codes (3xx: the outputs would be unusable, so nothing is stored and caching ignores the node):
320 ERROR_EMPTY_BATCH, 321 ERROR_INVALID_PARAMETERS (322 ERROR_INVALID_REFERENCE: screen_novelty).
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ExitCode

from aiida_battgen.data.batch import StructureBatchData
from battgen.screen.pipeline import ScreenSettings, run_step

EXIT_EMPTY_BATCH = 320
EXIT_INVALID_PARAMETERS = 321

# Settings each step understands (units in the names); anything else is rejected with 321.
STEP_PARAMETERS = {
    "validity": {"min_distance_A", "min_volume_A3", "check_self_images"},
    "charge_neutrality": {"use_pauling_test", "include_alloys", "oxidation_states_set"},
    "uniqueness": {"ltol", "stol", "angle_tol_deg"},
    "novelty": {"ltol", "stol", "angle_tol_deg"},
}


def empty_batch(label: str) -> ExitCode:
    return ExitCode(EXIT_EMPTY_BATCH, f"ERROR_EMPTY_BATCH: the input batch `{label}` has no rows")


def invalid_parameters(message: str) -> ExitCode:
    return ExitCode(EXIT_INVALID_PARAMETERS, f"ERROR_INVALID_PARAMETERS: {message}")


def screen_step(
    step: str,
    structures: StructureBatchData,
    parameters: orm.Dict | None = None,
    reference: StructureBatchData | None = None,
    extra_reference=None,
) -> dict[str, StructureBatchData] | ExitCode:
    """``{'passed': ..., 'rejected': ...}`` (both always present, possibly 0-row) or an ExitCode."""
    values = parameters.get_dict() if parameters is not None else {}
    unknown = sorted(set(values) - STEP_PARAMETERS[step])
    if unknown:
        return invalid_parameters(f"unknown key(s) {unknown} for {step}; allowed: {sorted(STEP_PARAMETERS[step])}")
    try:
        settings = ScreenSettings.from_dict(values)
    except (ValueError, TypeError) as exc:
        return invalid_parameters(str(exc))
    if structures.n_rows == 0:
        return empty_batch("structures")
    reference_batch = None
    if reference is not None:
        if reference.n_rows == 0:
            return empty_batch("reference")
        reference_batch = reference.get_batch()
    if extra_reference is not None:  # e.g. the known-materials structures, matched first
        from battgen.screen.pipeline import combined_reference

        reference_batch = combined_reference(extra_reference, reference_batch)
    result = run_step(step, structures.get_batch(), settings, reference=reference_batch)
    return {"passed": StructureBatchData(batch=result.passed), "rejected": StructureBatchData(batch=result.rejected)}
