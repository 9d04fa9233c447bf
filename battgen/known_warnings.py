"""Library warnings we know to be harmless, silenced by exact message (never by category alone), so that
job logs and the demo's screen keep every warning that might matter."""

from __future__ import annotations

import warnings

# (start of the message, category, module issuing it (regex), why it is harmless)
KNOWN_HARMLESS_WARNINGS: tuple[tuple[str, type[Warning], str, str], ...] = (
    ("Converting a tensor with requires_grad=True to a scalar may lead to unexpected behavior", UserWarning,
     r"chgnet\.", "CHGNet copies each cell volume into a detached tensor; the volume only divides the "
     "stress, which needs no gradient through it (forces and stress come from autograd on positions and strain)."),
)


def ignore_known_warnings() -> None:
    """Silence exactly the :data:`KNOWN_HARMLESS_WARNINGS` in this process (idempotent)."""
    for message, category, module, _why in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
