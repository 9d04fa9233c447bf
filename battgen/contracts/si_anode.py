"""Contract of ``battgen si-anode`` (CalcJob ``battgen.si_anode``, seed 004): settings, files, statuses."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import field_validator, model_validator

from battgen.contracts.base import element_symbol, setting
from battgen.contracts.mlip import MlipSettings

COMMAND = "si-anode"
INPUT_FILENAME = "structures.jsonl.gz"
COMPOUNDS_FILENAME = "compounds.json"
CONFIGURATIONS_FILENAME = "configurations.jsonl.gz"
CHECKPOINT_FILENAME = "si_anode_checkpoint.jsonl"
RELAXED_FILENAME = "relaxed.jsonl.gz"
TABLE_FILENAME = "configurations.csv"
TABLE_JSON_FILENAME = "configurations.json"
SLOPES_FILENAME = "slopes.json"
SLOPES_TABLE_FILENAME = "slopes.csv"
FIGURE_FILENAME = "channel_radius_vs_soc.png"
# What the CalcJob retrieves (the checkpoint and the sampled configurations stay remote).
RETRIEVED_FILES = (COMPOUNDS_FILENAME, RELAXED_FILENAME, TABLE_FILENAME, TABLE_JSON_FILENAME, SLOPES_FILENAME,
                   SLOPES_TABLE_FILENAME, FIGURE_FILENAME)


class SiAnodeStatus(str, Enum):
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"  # stopped at max_wall_time_s; the checkpoint continues it


STATUSES = tuple(status.value for status in SiAnodeStatus)


class SiAnodeSettings(MlipSettings):
    """Settings of ``battgen si-anode`` (units in the names)."""

    COMMAND = COMMAND

    input: str = setting(INPUT_FILENAME, "battgen batch file of the compounds", set_by_job=True)
    source: str | None = setting(None, "any structure source file instead of input (MP snapshot, CIF, extxyz)",
                                 set_by_job=True)
    working_ion: str = setting("Li", "the ion removed on charge")
    host_element: str = setting("Si", "the host element of the anode")
    min_capacity_mAh_per_g: float = setting(1500.0, "capacity filter of the compounds", "mAh/g", ge=0,
                                            allow_inf_nan=False)
    capacity_basis: Literal["discharged", "host"] = setting("host", "capacity per mass of the host or of the "
                                                                    "discharged compound")
    max_compounds: int | None = setting(None, "at most this many compounds (after the filter)", ge=1)
    max_sites: int | None = setting(None, "skip compounds with more sites", ge=1)
    primitive_cell: bool = setting(False, "reduce each compound to its primitive cell first")
    n_configurations: int = setting(30, "seeded random delithiations per compound", ge=1)
    max_removed_fraction: float = setting(1.0, "largest fraction of working ions removed", gt=0, le=1,
                                          allow_inf_nan=False)
    include_fully_lithiated: bool = setting(True, "also relax the fully lithiated cell")
    seed: int = setting(0, "seed of the delithiations", ge=0)
    # Full delithiation of Li15Si4 towards Si shrinks the cell ~3.8x: beyond the relaxation's default x3 guard.
    max_volume_factor: float = setting(5.0, "relaxation blow-up guard: volume change beyond this (either way)",
                                       "V_final/V_initial", gt=1, allow_inf_nan=False)
    channel_options: dict[str, Any] = setting({}, "options of the channel-radius analysis")
    max_wall_time_s: float | None = setting(None, "stop cleanly after the configuration that crosses this budget",
                                            "s", ge=0, allow_inf_nan=False)
    restart: bool = setting(True, f"continue from {CHECKPOINT_FILENAME} if present", set_by_job=True)
    progress: bool = setting(True, "show a progress bar", set_by_job=True)

    _elements = field_validator("working_ion", "host_element")(classmethod(lambda cls, value: element_symbol(value)))

    @model_validator(mode="after")
    def _distinct(self):
        if self.working_ion == self.host_element:
            raise ValueError("working_ion and host_element must differ")
        return self
