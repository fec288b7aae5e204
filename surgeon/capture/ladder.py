"""The capture ladder: plain symbolic tracing; where that fails, sizes specialised to the
example; then each submodule that still fails becomes a leaf (its reason recorded)."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.fx as fx

from surgeon.capture.concrete import (
    SpecialisingTracer,
    has_wrapped_without_rule,
    traced_specialised,
)
from surgeon.capture.inputs import as_args, defaults_not_given
from surgeon.capture.tracer import SurgeonTracer, user_frame
from surgeon.errors import SurgeonTraceError

__all__ = ["ladder", "MAX_AUTO_LEAVES"]


log = logging.getLogger(__name__)


def ladder(
    model: torch.nn.Module, example_inputs: Any, leaves: list
) -> tuple[fx.Tracer, fx.Graph, list[str]]:
    """Plain symbolic tracing first; sizes specialised to the example where it fails; then a
    submodule that still fails becomes a leaf. Returns the tracer, the graph and the leaves
    made automatically (with their reasons)."""
    auto: list[str] = []
    specialise = False
    while True:
        tracer = SpecialisingTracer(leaves) if specialise else SurgeonTracer(leaves)
        if specialise:
            tracer.concrete_setup(model, *as_args(example_inputs))
        try:
            graph = tracer.trace(
                model, concrete_args=defaults_not_given(model, example_inputs) or None
            )
            if not specialise and has_wrapped_without_rule(graph):
                # library functions fx keeps opaque: the specialising tracer traces their
                # bodies (they often branch on sizes); where it cannot, this graph stands
                specialised = traced_specialised(model, example_inputs, leaves)
                if specialised is not None:
                    tracer, graph = specialised
            return tracer, graph, auto
        except Exception as exc:
            error = _trace_error(model, tracer, exc)
            if not specialise:
                log.info(
                    "surgeon: symbolic tracing failed (%s); capturing with sizes "
                    "specialised to the example inputs",
                    _one_line(error),
                )
                specialise = True
                continue
            culprit = _failing_submodule(model, tracer)
            if culprit is None or len(auto) >= MAX_AUTO_LEAVES:
                raise error from exc
            # block the part, not the model: that submodule becomes one opaque call
            qualname, module = culprit
            leaves.append(module)
            auto.append(f"{qualname} ({type(module).__name__}): {_one_line(error)}")
            log.warning("surgeon: %s is traced as a leaf (its channels stay): %s", qualname, exc)


MAX_AUTO_LEAVES = 64


def _failing_submodule(
    model: torch.nn.Module, tracer: SurgeonTracer
) -> tuple[str, torch.nn.Module] | None:
    """The innermost submodule whose forward fx could not trace (None: the top level)."""
    if not tracer.failed_in:
        return None
    qualname, _ = tracer.failed_in[-1]
    if not qualname:
        return None
    try:
        return qualname, model.get_submodule(qualname)
    except AttributeError:
        return None


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    return text.split(" Way out:")[0][:300]


def _trace_error(
    model: torch.nn.Module, tracer: SurgeonTracer, exc: Exception
) -> SurgeonTraceError:
    where = "the top-level forward"
    if tracer.failed_in:
        qualname, type_name = tracer.failed_in[-1]
        where = f"module '{qualname}' ({type_name})"
    frame = user_frame(exc)
    line = f" at {frame.filename}:{frame.lineno}: `{(frame.line or '').strip()}`" if frame else ""
    hint = (
        "pass that module type in leaf_modules=(...) so fx treats it as one opaque call "
        "(its channels are then left untouched), or make its forward free of data-dependent "
        "Python control flow"
    )
    return SurgeonTraceError(
        f"torch.fx cannot trace {type(model).__name__}: {type(exc).__name__}: {exc} — in {where}{line}. "
        f"Way out: {hint}."
    )
