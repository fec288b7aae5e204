"""A model built from a config (Hugging Face's ``PreTrainedModel``) keeps a config that builds
its slim shapes, so ``save_pretrained`` -> ``from_pretrained`` gives the slim model back.

The config's int fields, and its lists of ints (widths per stage), are matched to the
channel groups that changed size: a field that counts the classes of such a group, or a
multiple of them, scales with it (``hidden_size`` 64 -> 32; ``num_key_value_heads`` 4 -> 2
and, over those kv groups, ``num_attention_heads`` 8 -> 4; ``hidden_sizes`` [16, 32, 64, 128]
-> [8, 16, 32, 64]). The candidates are checked by building the model class on the ``meta`` device from the new
config (no memory, no weights): its state-dict shapes must be the slim model's. Fields are put
back, best first, while that fits the shapes better (``head_dim`` 8 is no head count). Then
the model built from the new config with the slim weights must compute what the slim model
computes on the example: first with only the fields the shapes need (a rotary model's
``max_position_embeddings`` keeps its value), else with the shape-neutral ones that scaled too
(BERT's head count splits a width no shape shows). Where no config passes, it is left alone
and the reason is returned.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from surgeon.adopt import differs
from surgeon.errors import SurgeonExportError
from surgeon.keys import PLAN_KEY
from surgeon.passes.state import SurgeryState

__all__ = [
    "update_config",
    "changed_counts",
    "config_follows",
    "configs_of",
    "follow_count",
    "saved_configs",
    "restore_configs",
]

log = logging.getLogger(__name__)


def update_config(
    model: nn.Module,
    changed: dict[int, set[int]],
    example_inputs: Any,
    check: Callable[[], str] | None = None,
) -> str:
    """Give ``model.config`` the slim sizes; ``changed``: original class count -> new counts
    of the groups that lost classes. The model built from the new config, with the slim
    weights, must compute what the slim model computes on ``example_inputs`` (shapes alone
    could match with 8 heads of 4 where there are 4 heads of 8); with ``check``, ``model``
    itself holding the new config must pass it too (a forward that reads its config, as
    ``x.reshape(b, -1, config.hidden_sizes[-1])``, runs only once the config follows).
    Returns ``""`` when done or when the model has no such config, else why the config
    cannot describe the slim model."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return ""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    fields: dict[str, Any] = {}
    for k, v in config.to_dict().items():
        if type(v) is int:
            found = _scaled(v, changed)
            if len(found) == 1:
                fields[k] = found.pop()
        elif isinstance(v, (list, tuple)) and v and all(type(i) is int for i in v):
            scaled = _scaled_list(v, changed)  # per-stage widths: each stage its own
            if scaled is not None:
                fields[k] = scaled
    try:
        fitted, got = _fit(model, config, fields, want)
    except Exception as exc:  # noqa: BLE001 - a class that cannot be built from its config
        return f"{type(model).__name__} cannot be built from a changed config ({exc})"
    if got != want:
        off = sorted(k for k in want if got.get(k) != want[k])[:3]
        return f"no config of {type(config).__name__} builds the slim shapes (first: {off})"
    # the fields the shapes need; then with one shape-neutral field that scaled too (a head
    # count splits a width no shape shows); never all of them (token ids, decoder sizes)
    needed = _needed(model, config, fitted, want)
    neutral = [k for k in fitted if k not in needed]
    first = ""
    for extra in [None, *neutral]:
        changes = {**needed, **({extra: fitted[extra]} if extra else {})}
        why = ""
        if check is not None:  # the model's own forward, reading the new config
            model.config = _changed(config, changes)
            why = _checked(check)
        # a model built from the config computes the same (a scale the graph kept as a
        # literal, 1 / sqrt(head size), is not in any config)
        why = why or _computes_the_same(model, _changed(config, changes), example_inputs)
        if not why:
            model.config = _changed(config, changes)
            return ""
        model.config = config
        first = first or why
    return f"the config that builds the slim shapes computes something else: {first}"


def _checked(check: Callable[[], str]) -> str:
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - a forward that fails with this config is a reason
        return f"its forward fails ({type(exc).__name__}: {exc})"[:300]


def _computes_the_same(model: nn.Module, cfg: Any, example_inputs: Any) -> str:
    try:
        rebuilt = type(model)(cfg)
        rebuilt.load_state_dict(model.state_dict(), strict=True)
        return differs(rebuilt, model, example_inputs)
    except Exception as exc:  # noqa: BLE001 - a rebuilt model that does not run is a reason
        return f"the model rebuilt from it fails ({type(exc).__name__}: {exc})"[:300]


def _scaled(value: int, changed: dict[int, set[int]]) -> set[int]:
    """What ``value`` becomes if it counts whole classes of a group that changed (``hidden``
    64 -> 32), or a multiple of them (8 query heads over 4 kv-head groups that went to 2)."""
    return {
        value * new // old
        for old, news in changed.items()
        for new in news
        if old > 1 and value > 0 and value % old == 0 and value * new % old == 0
    }


def _scaled_list(values: list[int] | tuple[int, ...], changed: dict[int, set[int]]) -> Any:
    """A list of widths (``hidden_sizes`` per stage): each item that is the class count of a
    group that changed takes its new count (one reading, else None); the others stay (a last
    stage the model's output keeps)."""
    out = []
    for v in values:
        found = changed.get(v, set()) if v > 1 else set()
        if len(found) > 1:
            return None
        out.append(next(iter(found)) if found else v)
    if out == list(values):
        return None
    return type(values)(out)


def _fit(
    model: nn.Module, config: Any, fields: dict[str, Any], want: dict[str, tuple]
) -> tuple[dict[str, Any], dict[str, tuple]]:
    """All candidate fields; then, while the shapes do not fit, the one field whose putting
    back fits them best is put back (best first, so ``head_dim`` goes back rather than the
    head counts around it)."""
    current = dict(fields)
    got = _shapes(model, config, current)
    while got != want and current:
        best = None
        for size in (1, 2):  # one field put back, else two (image and patch size together)
            for names in itertools.combinations(current, size):
                trial = {k: v for k, v in current.items() if k not in names}
                got2 = _shapes(model, config, trial)
                if best is None or _misfit(got2, want) < _misfit(best[1], want):
                    best = (trial, got2)
            if best is not None and _misfit(best[1], want) < _misfit(got, want):
                break
        if best is None or _misfit(best[1], want) >= _misfit(got, want):
            break
        current, got = best
    return current, got


def _needed(
    model: nn.Module, config: Any, fields: dict[str, Any], want: dict[str, tuple]
) -> dict[str, Any]:
    """``fields`` less those the shapes do not need (they keep their values)."""
    current = dict(fields)
    for name in list(current):
        trial = {k: v for k, v in current.items() if k != name}
        if _shapes(model, config, trial) == want:
            current = trial
    return current


def _changed(config: Any, changes: dict[str, Any]) -> Any:
    cfg = copy.deepcopy(config)
    for k, v in changes.items():
        setattr(cfg, k, v)
    return cfg


def _shapes(model: nn.Module, config: Any, changes: dict[str, Any]) -> dict[str, tuple]:
    """State-dict shapes of ``model``'s class built (on the meta device) from the config."""
    with torch.device("meta"):
        fresh = type(model)(_changed(config, changes))
    return {k: tuple(v.shape) for k, v in fresh.state_dict().items()}


def _misfit(got: dict[str, tuple], want: dict[str, tuple]) -> int:
    return sum(got.get(k) != v for k, v in want.items()) + len(set(got) - set(want))


def config_follows(
    model: nn.Module, out: nn.Module, gm: fx.GraphModule, state: SurgeryState, inputs: Any
) -> nn.Module:
    """The model's own class built from a config (Hugging Face's): the config follows the new
    sizes, or the plan says why it keeps the original."""
    if out is gm or not hasattr(getattr(out, "config", None), "to_dict"):
        return out
    why = update_config(out, changed_counts(state), inputs)
    out.meta[PLAN_KEY]["config"] = why or "updated"
    if why:
        log.warning("surgeon: %s keeps its original config: %s", type(model).__name__, why)
        if callable(getattr(out, "save_pretrained", None)):
            out.save_pretrained = RefusedSave(type(model).__name__, why)
    return out


def changed_counts(state: SurgeryState) -> dict[int, set[int]]:
    """Original class count -> the new class counts, of the groups that lost classes."""
    changed: dict[int, set[int]] = {}
    for gi, mask in state.removed.items():
        if mask.any():
            n = state.graph.groups[gi].n_classes
            changed.setdefault(n, set()).add(n - int(mask.sum()))
    return changed


class RefusedSave:
    """``save_pretrained`` of a slim model whose config still describes the original: it
    raises before anything is written (a checkpoint its own library cannot load is worse than
    none). A plain class, so the model still pickles."""

    def __init__(self, name: str, why: str) -> None:
        self.name, self.why = name, why

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise SurgeonExportError(
            f"save_pretrained: the slim {self.name}'s config cannot describe its sizes "
            f"({self.why}), so transformers could not load what it would write; nothing was "
            f"written. Save it with surgeon.save(slim, path) and load it with "
            f"surgeon.load(path, {self.name}(config)), or slim with settings its config can hold"
        )


def configs_of(model: nn.Module) -> list[Any]:
    """The configs (Hugging Face's: objects with ``to_dict``) the modules of ``model`` hold,
    each once (a model and its inner model share one)."""
    seen: dict[int, Any] = {}
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "to_dict"):
            seen.setdefault(id(c), c)
    return list(seen.values())


def follow_count(
    model: nn.Module, old: int, kept: list[int], *, word: str, by_length: bool = True
) -> list[str]:
    """The configs of ``model`` follow a set of ``old`` layers (or experts) of which ``kept``
    (old indices) stay: an int field whose name holds ``word`` and equals ``old`` becomes
    ``len(kept)`` (``num_hidden_layers``, ``num_local_experts``), a list field of ``old``
    entries keeps the entries ``kept`` (``layer_types``; with ``by_length`` whatever its
    name, else only one whose name holds ``word``), and a list field of indices under
    ``old`` whose name holds ``word`` renumbers them (``mlp_only_layers``). Returns the fields
    changed; whether the result builds the model is checked by :func:`config_follows`."""
    changed = []
    position = {i: j for j, i in enumerate(kept)}
    for config in configs_of(model):
        for name, value in list(vars(config).items()):
            new: Any = None
            if type(value) is int and value == old and word in name.lower():
                new = len(kept)
            elif (
                isinstance(value, (list, tuple))
                and len(value) == old > 1
                and (by_length or word in name.lower())
            ):
                new = type(value)(value[i] for i in kept)
            elif (
                isinstance(value, (list, tuple))
                and word in name.lower()
                and all(type(v) is int and 0 <= v < old for v in value)
            ):
                new = type(value)(position[v] for v in value if v in position)
            if new is not None and new != value:
                setattr(config, name, new)
                changed.append(name)
    return changed


def saved_configs(model: nn.Module) -> list[tuple[Any, dict[str, Any]]]:
    """The configs of ``model`` and their fields now, for :func:`restore_configs`."""
    return [(c, dict(vars(c))) for c in configs_of(model)]


def restore_configs(saved: list[tuple[Any, dict[str, Any]]]) -> None:
    for config, fields in saved:
        config.__dict__.clear()
        config.__dict__.update(fields)
