"""Opt-in mixed precision (``autocast``) and data-loader workers for generator training.

``autocast`` (hyper-parameter, default ``None`` = float32 everywhere):

* ``bfloat16`` — CUDA and CPU. Same exponent range as float32, so no loss scaling is needed.
* ``float16`` — CUDA only (refused on a CPU: torch's CPU float16 kernels are slow and partial); the loss is
  scaled by a ``torch.amp.GradScaler`` so small gradients do not underflow.

Where it applies, and why it is safe there: only the **training forward pass and loss** of an optimiser step
run under ``torch.autocast``. Autocast runs matrix products (linear layers, attention) in the low precision
and keeps reductions, norms, softmax / log-softmax and the losses (``mse_loss``, ``cross_entropy``) in
float32; the weights, gradients and optimiser state stay float32 (the master copy). Kept out of autocast,
always float32: validation losses (comparable between runs), CDVAE's annealed Langevin sampling (its
σ-scaled coordinate updates and the lattice / atom-count heads feed straight into geometry) and the
language model's sampling. The model directory records ``precision`` (``float32`` or
``float32+autocast-bfloat16`` / ``float32+autocast-float16``).

``num_workers`` (hyper-parameter, default 0): batches are built (CDVAE: collated from the cached graphs;
LM: augmented, formatted and tokenised) by that many ``torch.utils.data.DataLoader`` worker processes
ahead of the optimiser, pinned in page-locked memory when the model is on CUDA. Every batch depends only
on (seed, step), so the weights are the same with any number of workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

AUTOCAST_CHOICES = (None, "bfloat16", "float16")


def validate_autocast(value: Any, device: str) -> str | None:
    """The autocast dtype name for ``device``, or None; raises ``ValueError`` for a bad or impossible one."""
    if value in (None, False, "none", "float32"):
        return None
    if value not in AUTOCAST_CHOICES:
        raise ValueError(f"hyper-parameter autocast must be null, bfloat16 or float16, got {value!r}")
    if value == "float16" and not str(device).startswith("cuda"):
        raise ValueError(f"autocast: float16 needs a CUDA device (got {device}); use bfloat16 on a CPU")
    return str(value)


def validate_num_workers(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"hyper-parameter num_workers must be a non-negative integer, got {value!r}")
    return value


def precision_label(autocast: str | None) -> str:
    """What the manifest records: the weights' dtype, and the autocast dtype of the forward pass."""
    return "float32" if autocast is None else f"float32+autocast-{autocast}"


def autocast_context(device: str, autocast: str | None):
    """``torch.autocast`` on ``device`` for ``autocast`` (a no-op context without one)."""
    if autocast is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, autocast))


class StepScaler:
    """Backward + (optional gradient processing) + optimiser step, with float16 loss scaling when needed."""

    def __init__(self, device: str, autocast: str | None) -> None:
        import torch

        self.scaler = torch.amp.GradScaler(torch.device(device).type) if autocast == "float16" else None

    def step(self, loss, optimizer, before_step: Callable[[], None] | None = None) -> None:
        if self.scaler is None:
            loss.backward()
            if before_step is not None:
                before_step()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)  # clipping sees the true gradients
        if before_step is not None:
            before_step()
        self.scaler.step(optimizer)  # skipped (and the scale lowered) when a gradient is inf / nan
        self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


class _Items:
    """A map-style dataset over ``keys``: item i is ``make(keys[i])`` (built in a worker process)."""

    def __init__(self, keys: Sequence[Any], make: Callable[[Any], Any]) -> None:
        self.keys, self.make = list(keys), make

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Any:
        return self.make(self.keys[index])


def _identity(item: Any) -> Any:
    return item


def prefetched(keys: Sequence[Any], make: Callable[[Any], Any], num_workers: int, device: str) -> Iterator[Any]:
    """``make(key)`` for each key in order; with ``num_workers`` > 0 built ahead by DataLoader workers
    (pinned memory on CUDA). ``make`` must depend only on its key, so the result is the same either way."""
    if num_workers <= 0:
        for key in keys:
            yield make(key)
        return
    import torch
    from torch.utils.data import DataLoader

    # its own generator: the workers' base seed must not be drawn from (and advance) the global torch RNG
    # that the training noise uses
    loader = DataLoader(_Items(keys, make), batch_size=None, shuffle=False, num_workers=int(num_workers),
                        collate_fn=_identity, pin_memory=str(device).startswith("cuda"),
                        prefetch_factor=2, persistent_workers=False,
                        generator=torch.Generator(device="cpu").manual_seed(0))
    yield from loader
