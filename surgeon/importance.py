"""Importance criteria: a score per channel class, aggregated over every member of the class."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from surgeon.errors import SurgeonInputError
from surgeon.graph import Group
from surgeon.rules import attr_tensor

__all__ = ["CRITERIA", "class_scores"]

CRITERIA = ("l1", "l2")


def class_scores(gm: fx.GraphModule, group: Group, criterion: str) -> np.ndarray:
    """Magnitude score of each channel class of ``group``.

    ``l1``: sum of |w| over every weight slice that belongs to the class (producers' filters,
    consumers' input slices, norm scales); ``l2``: the square root of the sum of w². A tensor
    index that several space indices map to (a grouped conv's in-group offset) counts once.
    """
    if criterion not in CRITERIA:
        raise SurgeonInputError(
            f"importance={criterion!r} is not a known criterion; use one of {CRITERIA}"
        )
    p = 1 if criterion == "l1" else 2
    scores = np.zeros(group.n_classes)
    for sl in group.params:
        if sl.role not in ("producer", "consumer", "norm", "param") or sl.name == "bias":
            continue
        t = attr_tensor(gm, f"{sl.owner}.{sl.name}" if sl.owner else sl.name)
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        with torch.no_grad():
            w = t.detach()
            w = w.abs() if p == 1 else w.square()
            others = [d for d in range(w.dim()) if d != sl.dim]
            mag = (w.sum(dim=others) if others else w).double().cpu().numpy()
        cls = group.class_of[sl.space]
        tidx = sl.tensor_index(len(cls))
        uniq, first = np.unique(tidx, return_index=True)
        np.add.at(scores, cls[first], mag[uniq])
    return np.sqrt(scores) if p == 2 else scores
