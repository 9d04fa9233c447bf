"""Contract of ``battgen channels`` (CalcJob ``battgen.channels``): settings and files."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from battgen.contracts.base import CommandSettings, element_symbol, setting

COMMAND = "channels"
INPUT_FILENAME = "structures.jsonl.gz"
OUTPUT_BATCH = "channels.jsonl.gz"
OUTPUT_TABLE_CSV = "channels.csv"
OUTPUT_TABLE_JSON = "channels.json"
OUTPUT_FIGURE = "channels.png"
OUTPUT_FILES = (OUTPUT_BATCH, OUTPUT_TABLE_CSV, OUTPUT_TABLE_JSON, OUTPUT_FIGURE)
ENGINES = ("zeopp", "cavd")
RADII_SETS = ("crystal", "zeopp")
DEFAULT_GRID_SPACING_A = 0.25


class ChannelSettings(CommandSettings):
    """Settings of ``battgen channels`` (units in the names)."""

    COMMAND = COMMAND

    input: str = setting(..., "the structure file (batch .jsonl.gz, .extxyz, .cif)", set_by_job=True)
    progress: bool = setting(True, "show a progress bar", set_by_job=True)
    engine: Literal["zeopp", "cavd"] = setting("zeopp", "void-analysis engine: zeopp (pyzeo) or cavd (CAVD's "
                                                        "Voronoi network)")
    probe_radius_A: float | None = setting(None, "probe radius for the channel dimensionality (null: 0.9 x "
                                                 "channel radius)", "Å", ge=0, allow_inf_nan=False)
    mobile_ion: str | None = setting(None, "element removed before the analysis (the ion that moves), e.g. Li")
    radii: Literal["crystal", "zeopp"] | dict[str, float] = setting(
        "crystal", "atomic radii: crystal (Shannon crystal radii), zeopp or element -> Å", "Å")
    grid_spacing_A: float = setting(DEFAULT_GRID_SPACING_A, "clearance-grid spacing for the void fraction", "Å",
                                    gt=0, allow_inf_nan=False)

    _mobile_element = field_validator("mobile_ion")(classmethod(lambda cls, value: element_symbol(value)))
