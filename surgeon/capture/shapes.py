"""Shape propagation: run the graph once on the example inputs and record each node's
``tensor_meta`` (torch.fx's ``ShapeProp``), naming the node that fails."""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Any

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import ShapeProp

from surgeon.capture.inputs import placeholder_args
from surgeon.errors import SurgeonTraceError

__all__ = ["propagate_shapes", "eval_mode"]


def propagate_shapes(gm: fx.GraphModule, example_inputs: Any) -> Any:
    """Run the graph once on ``example_inputs`` under no_grad, recording tensor metadata.

    Returns the output. Raises SurgeonTraceError naming the node that failed.
    """
    # the user's tensors stay untouched even if forward works in place on its inputs
    values = [
        v.clone() if isinstance(v, torch.Tensor) else v
        for v in placeholder_args(gm, example_inputs)
    ]
    prop = _ShapeProp(gm)
    stderr = io.StringIO()
    try:
        # ShapeProp prints a traceback before it re-raises: keep it out of the user's terminal.
        # Eval mode: a run for shapes must not move BatchNorm statistics of a training model.
        with torch.no_grad(), contextlib.redirect_stderr(stderr), eval_mode(gm):
            out = prop.propagate(*values)
    except Exception as exc:
        cause = exc.__cause__ or exc
        node = prop.current
        where = (
            f" at node '{node.name}' ({node.op} {_target_name(node)})" if node is not None else ""
        )
        first = (str(cause).strip().splitlines() or [""])[0]
        raise SurgeonTraceError(
            f"running the traced model on example_inputs failed{where}: {type(cause).__name__}: "
            f"{first}. Check that example_inputs match the model's forward (shapes, dtypes, device).",
            node=node.name if node is not None else None,
        ) from exc
    sys.stderr.write(stderr.getvalue())  # whatever else was said (warnings) still reaches the user
    return out


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Every submodule in eval mode for the duration; each one's own flag restored after."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class _ShapeProp(ShapeProp):
    """ShapeProp that remembers the node it is running (for the error message)."""

    current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        return super().run_node(n)


def _target_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))
