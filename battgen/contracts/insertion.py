"""Contract of ``battgen insertion`` (CalcJob ``battgen.insertion``): settings and files."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from battgen.contracts.base import element_symbol, setting
from battgen.contracts.ions import WORKING_IONS
from battgen.contracts.mlip import CellFilter, MlipSettings

COMMAND = "insertion"
HOST_FILENAME = "host.jsonl.gz"
DENSITY_FILENAME = "CHGCAR"
OUTPUT_BATCH = "inserted.jsonl.gz"
OUTPUT_TABLE_CSV = "insertion.csv"
OUTPUT_TABLE_JSON = "insertion.json"
OUTPUT_FIGURE = "insertion.png"
OUTPUT_FILES = (OUTPUT_BATCH, OUTPUT_TABLE_CSV, OUTPUT_TABLE_JSON, OUTPUT_FIGURE)


class InsertionSettings(MlipSettings):
    """Settings of ``battgen insertion`` (units in the names)."""

    COMMAND = COMMAND

    input: str = setting(..., "the host structure file (batch .jsonl.gz, .extxyz or .cif)", set_by_job=True)
    progress: bool = setting(True, "show a progress bar", set_by_job=True)
    bader: dict[str, Any] | None = setting(None, "Bader step: {density_file: ...} (the job sets it from "
                                                 "charge_density)", set_by_job=True)
    ions: list[str] | str | None = setting(None, f"working ions to insert, from {list(WORKING_IONS)} (null: [Li])")
    n_ions: list[int] | int | None = setting(None, "numbers of ions per insertion, each >= 1 (null: [1])")
    reference_energies_eV_per_atom: dict[str, float] | None = setting(
        None, "ion -> reference energy (null: the bulk metal relaxed with the same MLIP)", "eV/atom")
    max_steps: int = setting(300, "optimiser steps per relaxation", ge=0)
    cell_filter: CellFilter = setting(None, "cell relaxation: null (fixed cell, default), frechet or exp")
    supercell: list[int] = setting([1, 1, 1], "supercell of the host before insertion, three integers >= 1")
    max_site_types: int = setting(3, "site types to try in all, widest first", ge=1)
    sites_per_channel: int = setting(1, "site types to try per channel, widest first", ge=1)
    min_site_radius_A: float = setting(0.5, "smallest empty-sphere radius of a site", "Å", gt=0, allow_inf_nan=False)
    min_distance_A: float = setting(1.6, "smallest site-to-framework distance", "Å", gt=0, allow_inf_nan=False)
    radii: Literal["crystal", "zeopp"] | dict[str, float] = setting(
        "crystal", "radii of the void analysis: crystal, zeopp or element -> Å", "Å")
    mobile_ion: str | None = setting(None, "element removed from the host before the void analysis")

    @field_validator("ions")
    @classmethod
    def _known_ions(cls, value):
        ions = [value] if isinstance(value, str) else value or []
        unknown = [ion for ion in ions if ion not in WORKING_IONS]
        if unknown:
            raise ValueError(f"unknown working ion(s) {unknown}; known: {sorted(WORKING_IONS)}")
        return value

    @field_validator("n_ions")
    @classmethod
    def _positive_counts(cls, value):
        counts = [value] if isinstance(value, int) else value or []
        if any(n < 1 for n in counts):
            raise ValueError(f"n_ions must be positive integers, got {value}")
        return value

    @field_validator("supercell")
    @classmethod
    def _three_positive(cls, value: list[int]) -> list[int]:
        if len(value) != 3 or any(k < 1 for k in value):
            raise ValueError(f"supercell must be three positive integers, got {value}")
        return value

    _mobile_element = field_validator("mobile_ion")(classmethod(lambda cls, value: element_symbol(value)))
