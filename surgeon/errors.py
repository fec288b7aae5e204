"""The surgeon error hierarchy: every failure surgeon raises on purpose is a SurgeonError."""

from __future__ import annotations

__all__ = [
    "SurgeonError",
    "SurgeonTraceError",
    "SurgeonInputError",
    "SurgeonPassError",
    "SurgeonFixedSizeError",
    "SurgeonTargetError",
    "SurgeonRuleError",
    "SurgeonExportError",
    "SurgeonLoadError",
    "SurgeonBenchError",
]


class SurgeonError(Exception):
    """Base class of every error surgeon raises on purpose."""


class SurgeonInputError(SurgeonError, ValueError):
    """A user-given argument is out of range or of the wrong kind. ``option``: the setting at
    fault (a :class:`~surgeon.options.SlimOptions` field such as ``"ratio"`` or
    ``"leaf_modules"``), when one is; the CLI names its flag from it."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class SurgeonTraceError(SurgeonError):
    """torch.fx could not trace the model; the message names the module and the line.
    ``node``: the graph node that failed to run, when one did."""

    def __init__(self, message: str, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node


class SurgeonPassError(SurgeonError):
    """A pass failed; the message names the pass and the passes that already ran.
    ``node``: the graph node where it went wrong, when known (slim blocks its groups)."""

    def __init__(self, message: str, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node


class SurgeonFixedSizeError(SurgeonPassError):
    """The slim model can only come back as a graph captured at the example inputs' sizes
    (the model's code branches on sizes), which ``returns="auto"`` refuses; ``returns="graph"``
    takes it."""


class SurgeonTargetError(SurgeonPassError):
    """A :class:`~surgeon.options.Target` cannot be met; ``closest`` is the figure the
    closest slim model reached (None: nothing was measured)."""

    def __init__(self, message: str, closest: str | None = None) -> None:
        super().__init__(message)
        self.closest = closest


class SurgeonRuleError(SurgeonError):
    """An op rule raised while the channel graph was built (strict mode only; otherwise the
    op's dims are blocked and the reason names the exception)."""


class SurgeonExportError(SurgeonError):
    """Export, ONNX validation or onnxruntime parity failed, or the output path is unusable."""


class SurgeonLoadError(SurgeonError):
    """A surgeon file is missing or unreadable, or its plan does not fit the given model."""


class SurgeonBenchError(SurgeonError):
    """The ONNX file cannot be loaded or run for timing."""
