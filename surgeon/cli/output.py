"""What the command line shows: the consoles, progress, logging, tables and the notes on a
slim model.

Tables, progress lines and notes go to stdout; stderr carries only the error line (and,
with ``--debug``, logs and tracebacks). With ``export --json`` everything printed moves to
stderr (:func:`stdout_for`), so that stdout holds the JSON report alone.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from surgeon.benchmark import BenchResult
    from surgeon.graph import ChannelGraph
    from surgeon.options import SlimOptions

__all__ = [
    "console",
    "err_console",
    "debug",
    "one_line",
    "progress",
    "progress_bar",
    "setup_logging",
    "stdout_for",
    "bench_table",
    "preview_table",
    "form_of",
    "print_diagnosis",
    "print_specialised",
    "print_target",
]

console = Console(soft_wrap=True)
err_console = Console(stderr=True)

_DEBUG = {"on": False}
_HANDLER: list[logging.Handler] = []  # the log handler this CLI installed, at most one


def debug(on: bool | None = None) -> bool:
    """Whether ``--debug`` was given; ``on=True`` turns it on (it is never turned off)."""
    if on:
        _DEBUG["on"] = True
    return _DEBUG["on"]


def one_line(exc: BaseException | str) -> str:
    """An error's text on one line (its type's name when it has no text)."""
    text = " ".join(str(exc).split())
    return text or (type(exc).__name__ if isinstance(exc, BaseException) else "")


@contextlib.contextmanager
def progress(message: str) -> Iterator[None]:
    """A transient spinner on stderr (shown on terminals only) while the step runs, then a
    ``done`` line with its duration on stdout."""
    started = time.perf_counter()
    with err_console.status(message):
        yield
    console.print(f"[green]done[/green] {message} [dim]({time.perf_counter() - started:.1f}s)[/]")


@contextlib.contextmanager
def progress_bar(message: str, total: int) -> Iterator[Callable[[int, int], None]]:
    """A transient progress bar on stderr (terminals only) while the step runs; yields
    ``advance(done, total)``; then a ``done`` line with its duration on stdout."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    started = time.perf_counter()
    if not err_console.is_terminal:  # a pipe gets nothing but the done line
        yield lambda done, of: None
        console.print(
            f"[green]done[/green] {message} [dim]({time.perf_counter() - started:.1f}s)[/]"
        )
        return
    bar = Progress(
        TextColumn(message), BarColumn(), MofNCompleteColumn(), console=err_console, transient=True
    )
    with bar:
        task = bar.add_task(message, total=total)
        done_before = [0]

        def advance(done: int, of: int) -> None:
            bar.update(task, completed=done_before[0] + done)
            if done == of:
                done_before[0] += of

        yield advance
    console.print(f"[green]done[/green] {message} [dim]({time.perf_counter() - started:.1f}s)[/]")


def setup_logging(on: bool) -> None:
    """Logging and warnings: quiet by default, everything on stderr with ``--debug``."""
    root = logging.getLogger()
    if _HANDLER:
        root.removeHandler(_HANDLER.pop())
    if debug(on):
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=err_console, show_path=False)
        root.setLevel(logging.DEBUG)
        logging.getLogger("surgeon").setLevel(logging.DEBUG)
    else:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        root.setLevel(logging.WARNING)
        logging.getLogger("surgeon").setLevel(logging.WARNING)
        # torch / onnxscript chatter (torchvision registrations, rewrite statistics)
        for name in ("torch", "onnxscript", "onnx_ir"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
    _HANDLER.append(handler)
    root.addHandler(handler)


@contextlib.contextmanager
def stdout_for(as_json: bool) -> Iterator[Any]:
    """With ``--json``: everything the command prints (tables, progress, logs, library
    chatter) goes to stderr; yields the real stdout, for the JSON alone."""
    real = sys.stdout
    if not as_json:
        yield real
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield real


def bench_table(results: Sequence[BenchResult], labels: Sequence[str]) -> tuple[Table, list[str]]:
    """One row per provider and file (and the speedup of the second file over the first); a
    note per provider that was not measured."""
    pair = len(results) == 2
    table = Table(title="onnxruntime latency", title_justify="left")
    if pair:
        table.caption = f"speedup = median of {labels[0]} / median of the row's model"
        table.caption_justify = "left"
    table.add_column("provider", style="bold", no_wrap=True)
    table.add_column("model", no_wrap=True)
    for column in ("median ms", "p90 ms"):
        table.add_column(column, justify="right", no_wrap=True)
    for column in ("threads", "runs") + (("speedup",) if pair else ()):
        table.add_column(column, justify="right")
    notes: list[str] = []
    for provider in results[0].timings:
        timings = [r.timings[provider] for r in results]
        missing = [t for t in timings if not t.available]
        if missing:
            notes.append(f"{provider}: not measured - {missing[0].reason}")
            continue
        for index, (label, t) in enumerate(zip(labels, timings, strict=True)):
            cells = [
                provider if index == 0 else "",
                label,
                f"{t.median_ms:.3f}",
                f"{t.p90_ms:.3f}",
                "default" if t.threads is None else str(t.threads),
                str(t.runs),
            ]
            if pair:
                cells.append("" if index == 0 else f"{timings[0].median_ms / t.median_ms:.2f}x")
            table.add_row(*cells)
    return table, notes


def preview_table(
    spec: str, graph: ChannelGraph, slim_model: nn.Module, opts: SlimOptions, max_rows: int
) -> tuple[Table, int]:
    """Per group with parameters: channels and channel classes before -> after at
    ``opts.ratio`` and the modules it touches; at most ``max_rows`` rows (0: all). Returns the
    table and how many groups were left out. A class is what slim removes as one (a channel,
    a head, a whole conv group); the channels are counted in the group's widest space."""
    from surgeon.keys import PLAN_KEY

    plan = slim_model.meta.get(PLAN_KEY, {})
    removed = {int(k): list(v) for k, v in plan.get("removed", {}).items()}
    failed = {int(k): str(v) for k, v in (plan.get("blocked") or {}).items()}
    groups = [g for g in graph.groups if g.params]
    before = sum(g.channels for g in groups)
    after = before - sum(g.channels_in(removed.get(g.index, ())) for g in groups)
    table = Table(
        title=f"{escape(spec)} at ratio {opts.ratio:g} ({opts.scope}): {len(groups)} groups with "
        f"parameters, {sum(g.prunable for g in groups)} prunable; channels {before} -> {after}",
        title_justify="left",
    )
    table.add_column("group", justify="right", no_wrap=True)
    table.add_column("channels", justify="right", no_wrap=True)
    table.add_column("classes", justify="right", no_wrap=True)
    table.add_column("status")
    table.add_column("modules")
    shown = groups if max_rows == 0 else groups[:max_rows]
    for g in shown:
        owners = list(dict.fromkeys(p.owner or "<root>" for p in g.params))
        modules = ", ".join(owners[:6]) + (f" (+{len(owners) - 6} more)" if len(owners) > 6 else "")
        status = _group_status(g, failed, owners, tuple(str(i) for i in opts.ignore))
        gone = removed.get(g.index, [])
        cells = (
            str(g.index),
            f"{g.channels} → {g.channels - g.channels_in(gone)}",
            f"{g.n_classes} → {g.n_classes - len(gone)}",
            status,
        )
        table.add_row(*(escape(cell) for cell in (*cells, modules)))
    return table, len(groups) - len(shown)


def _group_status(
    g: Any, failed: dict[int, str], owners: list[str], ignored: tuple[str, ...]
) -> str:
    """``prunable`` (marked where ``--ignore`` holds some of its modules), ``blocked: why``
    (by the channel graph, or by slim after a failed resize) or ``fixed``."""
    if g.index in failed:
        return f"blocked: {failed[g.index]}"
    if g.prunable:
        touched = [o for o in owners if any(o == i or o.startswith(f"{i}.") for i in ignored)]
        return "prunable" + (" (--ignore)" if touched else "")
    if g.blocked:
        return f"blocked: {g.reasons[0]}"
    return "fixed"


def form_of(slim_model: nn.Module) -> str:
    """Which form slim returned: the model's own class, or the graph and why."""
    from surgeon.keys import PLAN_KEY

    plan = slim_model.meta.get(PLAN_KEY, {})
    if plan.get("form") == "module":
        return f"{type(slim_model).__name__} (the model's own class, verified against the graph)"
    return f"torch.fx.GraphModule ({plan.get('form_reason') or 'the graph form'})"


def print_diagnosis(found: dict[str, Any] | None) -> None:
    """The short section a user sees when little was pruned: the figures and why."""
    if not found:
        return
    console.print(
        f"[bold yellow]little was pruned[/]: MACs dropped {found['mac_drop']:.2f}x where the "
        f"ratio gives {found['expected']:.1f}x on free groups "
        f"({found['prunable_groups']} of {found['groups']} groups prunable). Top blocked reasons:"
    )
    for r in found["top_blocked"]:
        console.print(
            f"  {r['groups']:4d} groups  {escape(r['reason'])}  (first: {escape(r['first'])})"
        )


def print_specialised(found: dict[str, Any] | None) -> None:
    """The model branches on sizes: say that the slim model holds for these sizes only."""
    if not found:
        return
    console.print(
        "[bold yellow]specialised[/]: the model branches on sizes, so its graph (and the slim "
        f"model) holds for inputs of the example's sizes; first place: {escape(found['where'][0])}"
    )


def print_target(found: dict[str, Any] | None) -> None:
    """What a target asked, what it reached (measured), the MAC factor, and the rounds."""
    if not found:
        return
    kind, value = found["kind"], found["value"]
    asked = f"{value:g} ms" if kind == "latency_ms" else f"{value:g}x"
    if kind == "latency_ms":
        got = f"{found['slim_ms']:.3g} ms (original {found['original_ms']:.3g} ms)"
    else:
        got = f"{found['achieved']:.3g}x"
    where = f" on {found['device']}" if kind in ("speedup", "latency_ms") else ""
    console.print(
        f"target: {kind} {asked}{where}; achieved {got} "
        f"{'measured' if where else 'counted'}, theoretical {found['theoretical']:.3g}x fewer MACs, "
        f"round {found['round']} of {len(found['rounds'])}"
    )
