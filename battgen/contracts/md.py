"""Contracts of ``battgen md`` and ``battgen diffusion`` (CalcJob ``battgen.mlip.md``): settings, files, statuses.

Seed 002 defaults: 10 ps NPT then 50 ps NVT at 1200 K (see :mod:`battgen.md.run` for the integrators).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import field_validator, model_validator

from battgen.contracts.base import CommandSettings, setting
from battgen.contracts.mlip import short_mlip_name

COMMAND = "md"
ANALYSIS_COMMAND = "diffusion"

# --- files of ``battgen md`` (in its working directory) -------------------------------------------------
STRUCTURE_FILENAME = "structure.json"
STATE_FILENAME = "md_state.json"
STATE_ARRAYS_FILENAME = "md_state.npz"
SUMMARY_FILENAME = "md_summary.json"
SETUP_FILENAME = "md_setup.json"
INITIAL_STRUCTURE_FILENAME = "md_initial_structure.json"
TRAJ_DIRNAME = "traj"
DOWNSAMPLED_FILENAME = "trajectory.extxyz"
MSD_FILENAME = "msd.npz"
# Files a restart needs from the interrupted run (the chunks are copied as a directory).
RESTART_FILES = (STATE_FILENAME, STATE_ARRAYS_FILENAME, SETUP_FILENAME, INITIAL_STRUCTURE_FILENAME, TRAJ_DIRNAME)

# --- files of ``battgen diffusion`` ---------------------------------------------------------------------
RESULTS_FILENAME = "diffusion_results.json"
MSD_FIGURE_FILENAME = "msd.png"
ARRHENIUS_FIGURE_FILENAME = "arrhenius.png"


class MdStatus(str, Enum):
    """``status`` of ``md_summary.json`` / ``md_state.json``."""

    COMPLETED = "completed"
    UNSTABLE = "unstable"      # temperature runaway, non-finite energies/forces, calculator failure
    INCOMPLETE = "incomplete"  # stopped at the wall-time budget (or after the asked number of chunks)


MD_STATUSES = tuple(status.value for status in MdStatus)
NPT_BAROSTATS = ("inhomogeneous_berendsen", "berendsen")
NVT_THERMOSTATS = ("nose_hoover_chain", "bussi", "langevin")
NVT_CELLS = ("npt_average", "last")
# No MLIP was trained on anything near this hot (seed 002 runs 600-1500 K): a typo such as 1e7.
MAX_TEMPERATURE_K = 10_000.0
DEFAULT_TIMESTEP_FS = 2.0
HYDROGEN_TIMESTEP_FS = 1.0


class MdSettings(CommandSettings):
    """Settings of ``battgen md`` (units in the names)."""

    COMMAND = COMMAND

    input: str = setting(STRUCTURE_FILENAME, "structure file in the workdir (json, cif, POSCAR or a one-row batch)",
                         set_by_job=True)
    mlip: str = setting("chgnet", "MLIP name (chgnet, sevennet, m3gnet, nequip)")
    model_path: str | None = setting(None, "weights instead of the pretrained model (the job sets it from `model`)",
                                     set_by_job=True)
    device: str = setting("cpu", "torch device: cpu, cuda or cuda:N")
    temperature_K: float = setting(1200.0, "target temperature", "K", gt=0, allow_inf_nan=False)
    timestep_fs: float | None = setting(None, "time step (null: 2 fs, or 1 fs when the cell contains H)", "fs",
                                        gt=0, allow_inf_nan=False)
    npt_time_ps: float = setting(10.0, "NPT equilibration time (0 skips NPT)", "ps", ge=0, allow_inf_nan=False)
    nvt_time_ps: float = setting(50.0, "NVT production time", "ps", ge=0, allow_inf_nan=False)
    pressure_GPa: float = setting(0.0, "NPT target pressure", "GPa", allow_inf_nan=False)
    bulk_modulus_GPa: float = setting(50.0, "bulk modulus setting the Berendsen compressibility", "GPa", gt=0,
                                      allow_inf_nan=False)
    taut_fs: float = setting(100.0, "thermostat time constant (all thermostats)", "fs", gt=0, allow_inf_nan=False)
    taup_fs: float = setting(1000.0, "barostat time constant", "fs", gt=0, allow_inf_nan=False)
    nhc_chain_length: int = setting(3, "Nosé–Hoover chain length", ge=1)
    npt_barostat: Literal["inhomogeneous_berendsen", "berendsen"] = setting(
        "inhomogeneous_berendsen", "NPT barostat (inhomogeneous: each lattice vector relaxes on its own)")
    nvt_thermostat: Literal["nose_hoover_chain", "bussi", "langevin"] = setting("nose_hoover_chain", "NVT thermostat")
    nvt_cell: Literal["npt_average", "last"] = setting(
        "npt_average", "production cell: average of the second half of NPT, or its last cell")
    sample_every: int = setting(10, "steps between stored frames", ge=1)
    chunk_steps: int = setting(1000, "steps per trajectory chunk (a multiple of sample_every)", ge=1)
    seed: int = setting(0, "seed of the velocities and the stochastic thermostats", ge=0)
    max_temperature_factor: float = setting(3.0, "a run hotter than this times temperature_K is unstable", gt=0,
                                            allow_inf_nan=False)
    max_wall_time_s: float | None = setting(None, "stop cleanly after the chunk that crosses this budget (status "
                                                  "incomplete)", "s", gt=0, allow_inf_nan=False)
    restart: bool = setting(True, f"continue from {STATE_FILENAME} if present", set_by_job=True)
    supercell_min_atoms: int | None = setting(None, "build a near-cubic supercell with at least this many atoms",
                                              ge=1)
    working_ion: str | None = setting(None, "the diffusing ion (needed for vacancies and msd.npz), e.g. Mg")
    vacancy_fraction: float | None = setting(None, "fraction of working ions removed", ge=0, lt=1,
                                             allow_inf_nan=False)
    vacancy_count: int | None = setting(None, "number of working ions removed (instead of a fraction)", ge=0)
    vacancy_seed: int = setting(0, "seed of the choice of removed ions", ge=0)
    downsampled_max_frames: int = setting(500, f"frames kept in {DOWNSAMPLED_FILENAME}", ge=1)
    progress: bool = setting(True, "show a progress bar", set_by_job=True)

    @field_validator("mlip")
    @classmethod
    def _registered_mlip(cls, value: str) -> str:
        return short_mlip_name(value)

    @field_validator("temperature_K")
    @classmethod
    def _not_absurdly_hot(cls, value: float) -> float:
        if value > MAX_TEMPERATURE_K:
            raise ValueError(f"{value:g} K is above {MAX_TEMPERATURE_K:g} K, far outside any MLIP's training data")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.npt_time_ps + self.nvt_time_ps <= 0:
            raise ValueError("npt_time_ps + nvt_time_ps must be positive")
        if self.chunk_steps % self.sample_every:
            raise ValueError(f"chunk_steps ({self.chunk_steps}) must be a multiple of sample_every "
                             f"({self.sample_every})")
        if (self.vacancy_fraction is not None or self.vacancy_count is not None) and not self.working_ion:
            raise ValueError("vacancy_fraction / vacancy_count need working_ion")
        return self


class DiffusionSettings(CommandSettings):
    """Settings of ``battgen diffusion`` (the job sets ``trajectories`` and ``working_ion``)."""

    COMMAND = ANALYSIS_COMMAND

    trajectories: list[str] = setting([], "battgen md work directories (relative to the workdir or absolute)",
                                      set_by_job=True)
    results: list[dict[str, Any]] = setting([], "earlier results, each with temperature_K and "
                                                "diffusivity_cm2_per_s (optional diffusivity_err_cm2_per_s, n_ions, "
                                                "volume_A3, charge)", set_by_job=True)
    working_ion: str | None = setting(None, "the diffusing ion (required with trajectories)", set_by_job=True)
    charge: float | None = setting(None, "charge of the ion in e (null: its formal charge)", "e")
    phase: Literal["nvt", "npt"] = setting("nvt", "MD phase analysed")
    skip_time_ps: float = setting(0.0, "production time discarded at the start", "ps", ge=0, allow_inf_nan=False)
    smoothed: Literal["max", "constant", False] | None = setting("max", "DiffusionAnalyzer smoothing: max, constant "
                                                                        "or false")
    uncertainty: Literal["kinisi", "block", "none"] = setting("kinisi", "error of D: kinisi (Bayesian), block or none")
    n_blocks: int = setting(5, "blocks for the block error", ge=0)
    kinisi_samples: int = setting(1000, "kinisi MCMC samples", ge=0)
    seed: int = setting(0, "seed of kinisi's MCMC", ge=0)
    hop_distance_A: float = setting(1.5, "a hop is a move farther than this from where the ion settled", "Å", gt=0,
                                    allow_inf_nan=False)
    hop_smoothing_fs: float = setting(100.0, "position smoothing before hop counting", "fs", gt=0,
                                      allow_inf_nan=False)
    min_hops: int = setting(10, "fewer hops flag the run too_few_hops", ge=0)
    min_msd_exponent: float = setting(0.7, "a log-log MSD slope below this flags sublinear_msd",
                                      allow_inf_nan=False)
    extrapolate_to_K: float = setting(300.0, "temperature the Arrhenius fit extrapolates σ to", "K", gt=0,
                                      allow_inf_nan=False)
    figures: bool = setting(True, "write msd.png / arrhenius.png")

    @field_validator("results")
    @classmethod
    def _complete_results(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if any("temperature_K" not in entry or "diffusivity_cm2_per_s" not in entry for entry in value):
            raise ValueError("each results entry needs temperature_K and diffusivity_cm2_per_s")
        return value

    @model_validator(mode="after")
    def _something_to_analyse(self):
        if not self.trajectories and not self.results:
            raise ValueError("give trajectories (battgen md work directories) and/or results")
        if self.trajectories and not self.working_ion:
            raise ValueError("working_ion is required to analyse trajectories")
        return self
