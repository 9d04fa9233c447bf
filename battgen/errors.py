"""Errors shared by every ``battgen`` command (no heavy imports: any module may import this one)."""

from __future__ import annotations


class InvalidInputError(ValueError):
    """Raised by a command when its config or input data is unusable; maps to exit code 2."""
