"""The ``device`` setting of every torch step: ``auto | cpu | cuda | cuda:N``.

One resolver so that every command (training, sampling, prediction, relaxation, MD) accepts the same
values and refuses the same mistakes: ``cuda`` on a machine without CUDA is invalid input (exit 2, one
line), not a traceback at the first tensor.
"""

from __future__ import annotations

import re

from battgen.errors import InvalidInputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def validate_device_setting(value: object) -> str:
    """The device setting as a string, checked for form only (no torch import)."""
    if not isinstance(value, str) or not _DEVICE_PATTERN.match(value.strip()):
        raise InvalidInputError(f"`device` must be one of {', '.join(DEVICE_CHOICES)}, got {value!r}")
    return value.strip()


def resolve_device(value: object = "auto") -> str:
    """A concrete torch device string for ``value``: ``auto`` is ``cuda`` when CUDA is usable, else ``cpu``.

    Raises :class:`InvalidInputError` for an unknown value, or for ``cuda``/``cuda:N`` where CUDA is not
    available or the index does not exist.
    """
    setting = validate_device_setting(value)
    import torch  # deferred: the AiiDA layer validates settings without torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise InvalidInputError(f"`device: {setting}` but CUDA is not available on this machine "
                                "(use `device: auto` or `cpu`)")
    index = int(setting.split(":")[1]) if ":" in setting else 0
    if index >= torch.cuda.device_count():
        raise InvalidInputError(f"`device: {setting}` but this machine has {torch.cuda.device_count()} CUDA "
                                "device(s)")
    return setting


def training_record(device: str, precision: str = "float32") -> dict[str, str]:
    """What a model directory records about where it was trained: device, its name, numeric precision."""
    import torch

    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
    return {"device": device, "device_name": name, "precision": precision}


def generator_on(device: str, seed: int):
    """A seeded torch generator on ``device``: random draws are made where the model lives, never copied."""
    import torch

    return torch.Generator(device=device).manual_seed(int(seed))


def device_rng_state(device: str):
    """The global RNG state of ``device`` (CUDA keeps its own), or None on the CPU."""
    import torch

    return torch.cuda.get_rng_state(torch.device(device)).cpu() if device.startswith("cuda") else None


def set_device_rng_state(device: str, state) -> None:
    import torch

    if device.startswith("cuda") and state is not None:
        torch.cuda.set_rng_state(state, torch.device(device))
