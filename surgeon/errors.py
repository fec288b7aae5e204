"""The surgeon error hierarchy: every user-facing failure is a SurgeonError."""

from __future__ import annotations

__all__ = ["SurgeonError", "SurgeonTraceError", "SurgeonInputError", "SurgeonPassError"]


class SurgeonError(Exception):
    """Base class of every error surgeon raises on purpose."""


class SurgeonInputError(SurgeonError, ValueError):
    """A user-given argument is out of range or of the wrong kind."""


class SurgeonTraceError(SurgeonError):
    """torch.fx could not trace the model; the message names the module and the line."""


class SurgeonPassError(SurgeonError):
    """A pass failed; the message names the pass and the passes that already ran."""
