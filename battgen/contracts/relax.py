"""Contract of ``battgen relax`` (CalcJob ``battgen.mlip.relax``): settings, files, statuses."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from battgen.contracts.base import setting
from battgen.contracts.mlip import MlipSettings

COMMAND = "relax"
INPUT_FILENAME = "structures.jsonl.gz"
OUTPUT_FILENAME = "relaxed.jsonl.gz"
RECORDS_FILENAME = "relax_records.json"
# One JSON line per finished row, appended as rows finish: a job killed at the walltime (or on a dead
# node) is continued from it by a new job that finds it in its working directory.
CHECKPOINT_FILENAME = "relax_checkpoint.jsonl"


class RelaxStatus(str, Enum):
    """Outcome of one row (its ``relax_status`` column)."""

    CONVERGED = "converged"
    NOT_CONVERGED = "not_converged"
    EXPLODED = "exploded"
    UNSUPPORTED_ELEMENT = "unsupported_element"


RELAX_STATUSES = tuple(status.value for status in RelaxStatus)
ENGINES = ("ase", "batched")
# Atoms in flight at once with the batched engine on a CPU (where bigger batches stop paying: the model is
# compute-bound); on CUDA the engine sizes the batch from the free memory.
DEFAULT_CPU_BATCH_MAX_ATOMS = 400


class RelaxSettings(MlipSettings):
    """Settings of ``battgen relax``."""

    COMMAND = COMMAND

    input: str = setting(INPUT_FILENAME, "the batch file in the working directory", set_by_job=True)
    progress: bool = setting(True, "show a progress bar", set_by_job=True)
    checkpoint: bool = setting(True, f"append each finished row to {CHECKPOINT_FILENAME} (continued after a kill)")
    resume_from: str | None = setting(None, "checkpoint of an interrupted job to continue from (relative to the "
                                            "workdir; may be missing)", set_by_job=True)
    engine: Literal["ase", "batched"] = setting("ase", "relaxation engine: one structure at a time with ASE "
                                                       "(ase) or many per model call (batched: battgen.mlip.batched, "
                                                       "torch-sim's FIRE; CHGNet, SevenNet; FIRE with the frechet "
                                                       "filter or none, else it falls back to ase)")
    batch_max_atoms: int | None = setting(None, "atoms in flight at once with the batched engine (null: "
                                                f"{DEFAULT_CPU_BATCH_MAX_ATOMS} on a CPU, sized from free memory on "
                                                "CUDA)", ge=1)
