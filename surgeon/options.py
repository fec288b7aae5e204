"""``SlimOptions``: every setting of one slimming, validated once, in one frozen value.

``slim``, ``prune_iteratively``, the CLI and ``ChannelPrunePass`` all take it; the report's
settings are its :meth:`SlimOptions.to_record`.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from surgeon.errors import SurgeonInputError
from surgeon.importance import check_criterion
from surgeon.names import leaf_name

__all__ = [
    "SlimOptions",
    "Target",
    "Leaf",
    "SCOPES",
    "RETURNS",
    "GROUPED",
    "TARGET_KINDS",
    "STRUCTURES",
]

Leaf = type[nn.Module] | nn.Module
SCOPES = ("local", "global")
RETURNS = ("auto", "module", "graph")
GROUPED = ("offsets", "groups", "auto")
#: what a :class:`Target` can ask for; the first two are measured in onnxruntime
TARGET_KINDS = ("speedup", "latency_ms", "macs", "params")
#: what may go: channels (and whole conv groups), attention heads, whole residual branches
STRUCTURES = ("channels", "heads", "layers", "experts")


@dataclass(frozen=True)
class Target:
    """What the slim model must reach, in place of a ratio: give exactly one of

    Attributes:
        speedup: times faster than the original, measured in onnxruntime on ``device`` with
            ``threads`` at the example inputs' shapes (``2.0``: twice as fast).
        latency_ms: the slim model's latency in milliseconds, measured the same way.
        macs: times fewer multiply-accumulates (``3.0``: a third of the MACs).
        params: times fewer parameters (``4.0``: a quarter of them).
        device: the onnxruntime provider a measured target is timed on, ``"cpu"`` or ``"cuda"``.
        threads: onnxruntime's intra-op threads for the timing (``None``: its default).

    Which channels go is decided across all groups at once by importance per unit of cost on
    the target (:mod:`surgeon.budget`), and the result is measured: a count for ``macs`` and
    ``params``, an interleaved onnxruntime timing against the original for ``speedup`` and
    ``latency_ms``. Where it falls short the allocation tightens and goes again, a bounded
    number of rounds (:func:`surgeon.autotune.slim_to_target`).
    """

    speedup: float | None = None
    latency_ms: float | None = None
    macs: float | None = None
    params: float | None = None
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        given = [k for k in TARGET_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise SurgeonInputError(
                f"Target({', '.join(f'{k}=...' for k in given) or ''}): give exactly one of "
                "speedup (e.g. 2.0: twice as fast), latency_ms, macs (3.0: a third of the MACs) "
                "or params (4.0: a quarter of the parameters)",
                option="target",
            )
        (kind,) = given
        value = getattr(self, kind)
        floor = 0 if kind == "latency_ms" else 1
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > floor:
            what = "milliseconds, > 0" if kind == "latency_ms" else "a factor > 1 (e.g. 2.0)"
            raise SurgeonInputError(f"Target({kind}={value!r}): use {what}", option="target")
        object.__setattr__(self, kind, float(value))
        if self.device not in ("cpu", "cuda"):
            raise SurgeonInputError(
                f"Target(device={self.device!r}): use 'cpu' or 'cuda'", option="target"
            )
        t = self.threads
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
            raise SurgeonInputError(
                f"Target(threads={t!r}): use None (onnxruntime's default) or a whole number >= 1",
                option="target",
            )

    @property
    def kind(self) -> str:
        """Which of :data:`TARGET_KINDS` this target asks for."""
        return next(k for k in TARGET_KINDS if getattr(self, k) is not None)

    @property
    def value(self) -> float:
        return float(getattr(self, self.kind))

    @property
    def measured(self) -> bool:
        """Timed in onnxruntime (``speedup``, ``latency_ms``), not counted."""
        return self.kind in ("speedup", "latency_ms")

    def replace(self, **changes: Any) -> Target:
        """A copy with ``changes``; a new kind replaces the old one."""
        if any(k in changes for k in TARGET_KINDS):
            changes = {**dict.fromkeys(TARGET_KINDS), **changes}
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """``"speedup 2x on cpu (1 thread)"``, ``"macs 3x"``: what the report says."""
        if not self.measured:
            return f"{self.kind} {self.value:g}x fewer"
        amount = f"{self.value:g} ms" if self.kind == "latency_ms" else f"{self.value:g}x"
        threads = "default threads" if self.threads is None else f"{self.threads} thread(s)"
        return f"{self.kind} {amount} on {self.device} ({threads})"

    def to_record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value": self.value,
            "device": self.device,
            "threads": self.threads,
        }


@dataclass(frozen=True)
class SlimOptions:
    """What to remove and how: every setting of one slimming, each documented here once.

    Attributes:
        ratio: the fraction of each prunable group's channels removed, ``0 <= ratio < 1``.
            With ``0`` nothing new is pruned, but channels that are already dead (all-zero
            filters, zero norm scales) are removed: the function is unchanged. Or a
            :class:`Target` (a speedup, a latency, a MAC or parameter budget): it is then kept
            in ``target``, ``ratio`` is 0, and ``scope`` does not apply (the target decides
            how much each group loses).
        importance: the criterion, aggregated over every member of a channel class (the
            producers' filters, the consumers' input slices, the norms' scales): ``"l2"`` /
            ``"l1"`` weight magnitude, ``"bn_scale"`` (|gamma| of the norms), ``"random"`` (a
            seeded baseline), or, from gradients on ``data``, ``"taylor"`` (|activation x
            gradient| at every consumer input, normalised per input) and ``"grad"``
            (|w x dL/dw|).
        scope: ``"local"`` (the same ratio in every group) or ``"global"`` (scores divided by
            their group's mean, one threshold over all groups, no group losing more than
            ``max_group_ratio``).
        round_to: keep a multiple of this many channels in each group (rounded up: never more
            removed than ``ratio`` asks; a whole head or conv group counts by its channels).
            ``None``: no rounding. ``"auto"``: the multiple at which onnxruntime runs this slim
            model fastest on this CPU with one thread: the slim model is made at the multiple a
            probe measured (:func:`surgeon.hardware.channel_multiple`, cached) and at each larger
            one, and each is timed (:func:`surgeon.autotune.timed_round_to`); with ``inplace``,
            the probe's multiple alone. The plan records ``round_to_auto`` and
            ``round_to_timed``.
        ignore: modules, or their qualified names, whose parameter shapes must not change.
        inplace: resize the model's own submodules instead of a copy's; the model itself must
            then no longer be called.
        leaf_modules: module types, instances, qualified names or class names of submodules
            torch.fx must not trace into (their dims are blocked).
        max_group_ratio: with ``scope="global"`` or a target, the most any group may lose.
        data: an iterable of ``(input, target)`` batches (a DataLoader, a list): needed by
            ``taylor`` and ``grad``; with any criterion it also gives compensation measured
            means. Read in eval mode, on a copy of the model.
        loss_fn: ``loss_fn(output, target)`` -> scalar tensor, for ``taylor`` and ``grad``.
        compensate: fold the expected value of every removed channel into its consumers (a
            following batch norm's running mean, else the consumer's bias), so the slim model
            loses less before fine-tuning. The expected value is measured on ``data`` when
            given, else derived from the batch norm that produced the channel. With ``data``,
            the removed inputs of each consumer are first regressed on its kept ones and folded
            into the kept weights, and the batch norms' running statistics are re-estimated
            afterwards.
        returns: which form comes back. ``"auto"``: the model's own class (its methods,
            attributes and state-dict names), its modules cut as the graph's, when its own
            ``forward`` then computes what the slim graph computes on the example inputs; else
            the graph, with the reason in the plan (``form``, ``form_reason``); a graph captured
            with sizes specialised to the example holds at those sizes only, and is then an
            error that says so (``"graph"`` takes it, with a warning). ``"module"``:
            that, or :class:`SurgeonPassError` with the reason. ``"graph"``: always the
            ``torch.fx.GraphModule``.
        attention: where a width is split into heads x head_dim (attention), what prunes:
            ``"heads"`` (whole heads across q, k, v and the output projection; with grouped-query
            attention the kv heads and their query groups together) or ``"head_dim"`` (every
            head keeps its count and loses the same offsets of its width; rotary embeddings keep
            their rotated halves paired).
        grouped: what a grouped (not depthwise) convolution loses: ``"offsets"`` (the same
            in-group offsets of every group: ``groups`` stays, each group narrows; the most
            MACs removed), ``"groups"`` (whole groups: each keeps its width, ``groups``
            shrinks; fewer MACs removed, but a runtime can compute a narrowed group slowly)
            or ``"auto"`` (whole groups at the in-group widths onnxruntime runs faster so on
            this CPU, measured: :func:`surgeon.hardware.grouped_widths`; a tuple of widths is
            such an answer). ``None``: ``"auto"`` with ``round_to="auto"``, else
            ``"offsets"``. The plan records what was used.
        target: a :class:`Target` (given as ``ratio`` or here).
        structures: what may go (a ratio applies to each one named): ``"channels"`` and
            ``"heads"`` together (the widths; ``attention`` chooses heads or head_dim: the
            share ``ratio`` of each group); ``"layers"``: the share ``ratio`` of the layers of
            each stack (:mod:`surgeon.stacks`: an ``nn.ModuleList`` / ``nn.Sequential`` whose
            layers run one after another on one state, scored by how much each changes its
            input on the calibration data; the model keeps its class and a config's layer
            count follows), and whole residual branches (:mod:`surgeon.blocks`): with a ratio
            only the branches that compute a constant (exactly). With a target, a model with
            stacks loses whole layers of them, one without loses residual branches (it then
            comes back as the graph), scored by how little they change per unit of cost, up
            to half of what the target must save, and the widths the rest.
            ``"experts"``: the share ``ratio`` of the experts of each mixture-of-experts layer
            (:mod:`surgeon.experts`, router-weighted activation on the data). Layers that
            return their input and experts never routed to go at any ratio. The plan records
            what went (``layers``, ``experts``, ``blocks``).
    """

    ratio: float
    importance: str = "l2"
    scope: str = "local"
    round_to: int | str | None = None
    ignore: tuple[nn.Module | str, ...] = ()
    inplace: bool = False
    leaf_modules: tuple[Leaf | str, ...] = ()
    max_group_ratio: float = 0.9
    data: Iterable[Any] | None = field(default=None, compare=False, repr=False)
    loss_fn: Callable[..., torch.Tensor] | None = field(default=None, compare=False, repr=False)
    compensate: bool = True
    returns: str = "auto"
    attention: str = "heads"
    grouped: str | tuple[int, ...] | None = None
    target: Target | None = None
    structures: tuple[str, ...] = ("channels", "heads")

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise through the back door, once
        if isinstance(self.ratio, Target):
            if self.target is not None and self.target != self.ratio:
                raise SurgeonInputError(
                    "two targets given (as the ratio and as target=): give one", option="target"
                )
            set_(self, "target", self.ratio)
            set_(self, "ratio", 0.0)
        if self.target is not None and not isinstance(self.target, Target):
            raise SurgeonInputError(
                f"target={self.target!r}: use surgeon.Target(speedup=..., latency_ms=..., "
                "macs=... or params=...)",
                option="target",
            )
        if self.target is not None and self.ratio:
            raise SurgeonInputError(
                f"ratio={self.ratio!r} and a target were both given: a target decides how much "
                "goes; give one of them",
                option="ratio",
            )
        set_(self, "ratio", _check_ratio(self.ratio))
        check_criterion(self.importance, self.data, self.loss_fn)
        if self.scope not in SCOPES:
            raise SurgeonInputError(
                f"scope={self.scope!r}: use 'local' or 'global'", option="scope"
            )
        r = self.round_to
        if (
            r != "auto"
            and r is not None
            and (isinstance(r, bool) or not isinstance(r, int) or r < 1)
        ):
            raise SurgeonInputError(
                f"round_to={r!r}: use None, a whole number >= 1 (e.g. 8) or 'auto' (the "
                "multiple onnxruntime computes fastest on this CPU, measured)",
                option="round_to",
            )
        if self.attention not in ("heads", "head_dim"):
            raise SurgeonInputError(
                f"attention={self.attention!r}: use 'heads' (whole heads prune) or 'head_dim' "
                "(every head loses the same part of its width)",
                option="attention",
            )
        if self.grouped is not None:
            set_(self, "grouped", check_grouped(self.grouped))
        if self.returns not in RETURNS:
            raise SurgeonInputError(
                f"returns={self.returns!r}: use 'auto' (the model's own class where it verifies, "
                "else the graph), 'module' or 'graph'",
                option="returns",
            )
        for name in ("compensate", "inplace"):
            if not isinstance(getattr(self, name), bool):
                raise SurgeonInputError(
                    f"{name}={getattr(self, name)!r}: use True or False", option=name
                )
        g = self.max_group_ratio
        if isinstance(g, bool) or not isinstance(g, numbers.Real) or not 0 < g <= 1:
            raise SurgeonInputError(
                f"max_group_ratio={g!r}: use a number with 0 < max_group_ratio <= 1",
                option="max_group_ratio",
            )
        set_(self, "structures", _check_structures(self.structures))
        if self.target is not None and "channels" not in self.structures:
            raise SurgeonInputError(
                f"a target needs the widths in structures (got {self.structures!r}): add "
                "'channels' and 'heads', or give a ratio",
                option="structures",
            )
        if self.target is not None and "experts" in self.structures:
            raise SurgeonInputError(
                "experts go with a ratio, not in a target's budget (yet): slim with "
                "structures=('experts',) and a ratio first, then to the target without "
                "'experts'",
                option="structures",
            )
        set_(self, "ignore", _as_tuple(self.ignore, "ignore"))
        set_(self, "leaf_modules", _as_tuple(self.leaf_modules, "leaf_modules"))

    @property
    def prunes(self) -> bool:
        """Whether anything beyond dead channels is asked to go (a ratio above 0, a target)."""
        return self.ratio > 0 or self.target is not None

    def replace(self, **changes: Any) -> SlimOptions:
        """A copy with ``changes`` applied (and validated again); a ratio given replaces the
        target, and a target the ratio."""
        if "ratio" in changes and "target" not in changes:
            changes["target"] = None
        if "target" in changes and changes["target"] is not None and "ratio" not in changes:
            changes["ratio"] = 0.0
        return dataclasses.replace(self, **changes)

    def to_record(self) -> dict[str, Any]:
        """The settings as JSON-able values (what the report and the plan record)."""
        return {
            "ratio": self.ratio,
            "importance": self.importance,
            "scope": self.scope,
            "round_to": self.round_to,
            "max_group_ratio": self.max_group_ratio,
            "compensate": self.compensate,
            "ignore": [i if isinstance(i, str) else type(i).__name__ for i in self.ignore],
            "leaf_modules": sorted(leaf_name(m) for m in self.leaf_modules),
            "data": self.data is not None,
            "returns": self.returns,
            "attention": self.attention,
            "grouped": self.grouped if not isinstance(self.grouped, tuple) else list(self.grouped),
            "target": self.target.to_record() if self.target is not None else None,
            "structures": list(self.structures),
        }


def check_grouped(value: Any) -> str | tuple[int, ...]:
    """``grouped`` validated: one of :data:`GROUPED`, or in-group widths as a tuple of ints."""
    if isinstance(value, str) and value in GROUPED:
        return value
    if isinstance(value, (list, tuple)) and all(
        isinstance(w, numbers.Integral) and not isinstance(w, bool) and w > 0 for w in value
    ):
        return tuple(int(w) for w in value)
    raise SurgeonInputError(
        f"grouped={value!r}: use 'offsets' (every group of a grouped conv loses the same "
        "offsets), 'groups' (whole groups go), 'auto' (whole groups where this CPU runs them "
        "faster, measured), a tuple of in-group widths that lose whole groups, or None ('auto' "
        "with round_to='auto', else 'offsets')",
        option="grouped",
    )


def _check_structures(value: Any) -> tuple[str, ...]:
    items = (
        (value,)
        if isinstance(value, str)
        else tuple(value)
        if isinstance(value, (list, tuple))
        else None
    )
    if (
        items is None
        or not items
        or any(i not in STRUCTURES for i in items)
        or ("channels" in items) != ("heads" in items)
    ):
        raise SurgeonInputError(
            f"structures={value!r}: name what may go from {STRUCTURES}: 'channels' and 'heads' "
            "together (the widths; attention= chooses heads or head_dim), 'layers' (whole "
            "layers of a stack, whole residual branches), 'experts' (whole experts of "
            "mixture-of-experts layers); e.g. ('channels', 'heads', 'layers') or ('layers',)",
            option="structures",
        )
    return tuple(s for s in STRUCTURES if s in items)


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise SurgeonInputError(
            f"ratio={ratio!r} is not a number: it is the fraction of each group's channels to "
            "remove, 0 <= ratio < 1 (e.g. 0.5)",
            option="ratio",
        )
    if not 0 <= float(ratio) < 1:
        raise SurgeonInputError(
            f"ratio={ratio!r} is out of range: it is the fraction of each group's channels to "
            "remove, a number with 0 <= ratio < 1 (e.g. 0.5)",
            option="ratio",
        )
    return float(ratio)


def _as_tuple(items: Any, name: str) -> tuple:
    if isinstance(items, (str, nn.Module, type)):
        return (items,)
    try:
        return tuple(items)
    except TypeError:
        raise SurgeonInputError(
            f"{name}={items!r} is not a list: pass a list or tuple (e.g. {name}=[model.fc])",
            option=name,
        ) from None
