"""Settings shared by every command that relaxes with an ML potential (relax, si-anode, insertion)."""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata
from typing import Literal

from pydantic import field_validator

from battgen.contracts.base import CommandSettings, setting

MLIP_ENTRY_POINT_GROUP = "battgen.mlips"
CELL_FILTERS = ("frechet", "exp", None)
OPTIMIZERS = ("FIRE", "BFGS", "LBFGS")
CellFilter = Literal["frechet", "exp"] | None
Optimizer = Literal["FIRE", "BFGS", "LBFGS"]


@lru_cache(maxsize=1)
def _registered() -> tuple[str, ...]:
    return tuple(sorted(ep.name.removeprefix("battgen.") for ep in metadata.entry_points(group=MLIP_ENTRY_POINT_GROUP)))


def known_mlips() -> list[str]:
    """Short names of the MLIPs registered in the ``battgen.mlips`` entry-point group (none is imported)."""
    return list(_registered())


def short_mlip_name(name: str) -> str:
    """``chgnet`` or ``battgen.chgnet`` -> ``chgnet``; ValueError naming the registered MLIPs.

    The entry points are read once per process (scanning them costs ~0.1 s) and again on a miss, so an MLIP
    registered later is still found."""
    short = name.removeprefix("battgen.")
    if short not in _registered():
        _registered.cache_clear()
    if short not in _registered():
        raise ValueError(f"unknown MLIP {name!r}; available: {', '.join(_registered())}")
    return short


class MlipSettings(CommandSettings):
    """The potential and the optimiser (each command overrides the defaults it differs in)."""

    mlip: str = setting("chgnet", "MLIP name: chgnet, sevennet, m3gnet, nequip (or battgen.<name>)")
    model_path: str | None = setting(None, "weights file/directory on the computer that runs the job instead "
                                           "of the pretrained model")
    device: str = setting("cpu", "torch device: cpu, cuda or cuda:N")
    fmax: float = setting(0.05, "force convergence threshold", "eV/Å", gt=0, allow_inf_nan=False)
    max_steps: int = setting(500, "maximum optimiser steps per structure", ge=1)
    cell_filter: CellFilter = setting("frechet", "cell relaxation: frechet, exp or null (fixed cell)")
    optimizer: Optimizer = setting("FIRE", "ASE optimiser")
    maxstep: float = setting(0.2, "largest optimiser step", "Å", gt=0, allow_inf_nan=False)

    @field_validator("mlip")
    @classmethod
    def _registered_mlip(cls, value: str) -> str:
        return short_mlip_name(value)
