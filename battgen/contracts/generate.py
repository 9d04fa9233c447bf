"""Contract of ``battgen generate`` (CalcJob ``battgen.generate``): settings and files."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from battgen.contracts.base import MODEL_DIRNAME, CommandSettings, setting  # noqa: F401 - MODEL_DIRNAME re-exported

COMMAND = "generate"
SEEDS_FILENAME = "seeds.jsonl.gz"
GENERATED_FILENAME = "generated.jsonl.gz"
# Trained generators and the architecture their model node must have (the manifests' ``architecture``).
GENERATOR_ARCHITECTURES = {"cdvae": "cdvae", "llm": "crystal-llm"}


class GenerateSettings(CommandSettings):
    """Settings of ``battgen generate``."""

    COMMAND = COMMAND

    generator: str = setting(..., "generator name: cdvae, llm, substitution ...")
    n: int = setting(..., "number of structures to sample", ge=0)
    input: str | None = setting(None, "seed batch file (optional for trained generators)", set_by_job=True)
    conditions: dict[str, Any] = setting({}, "generator-specific conditions (targets with units in their names, "
                                              "element constraints, sampler settings such as batch_size)")
    seed: int = setting(0, "random seed of the sampling")
    options: dict[str, Any] = setting({}, "extra generator constructor options; the CalcJob gives the model "
                                           "from its `model` input")
    output: str = setting(GENERATED_FILENAME, "the generated batch", set_by_job=True)
    device: str | None = setting(None, "torch device on the computer that samples: auto (cuda when present), "
                                       "cpu, cuda or cuda:N (trained generators only)")

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str | None) -> str | None:
        from battgen.devices import validate_device_setting  # form only: imports no torch

        return None if value is None else validate_device_setting(value)
