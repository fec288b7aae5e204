"""The ``surgeon`` command line: ``surgeon export | inspect | bench``.

Exit codes: 0 on success; 2 for a :class:`~surgeon.errors.SurgeonError` or bad command-line
input, reported as ONE line ``error: ...`` on stderr (an error in a slimming setting names
its flag); 1 for an unexpected exception (one line, with a hint to rerun with ``--debug`` for
the traceback); 130 when interrupted (Ctrl-C), with the one line ``interrupted; nothing was
written``. Tables and progress go to stdout (to stderr with ``export --json``, whose stdout
is the report alone); stderr carries only the error line (and, with ``--debug``, logs and
tracebacks). No command leaves a partial file behind: outputs are written to temporary files
and moved into place once complete, and a command that fails or is interrupted after writing
some of its outputs removes them.

The commands live one per module (:mod:`surgeon.cli.export`, :mod:`surgeon.cli.inspect`,
:mod:`surgeon.cli.bench`); their flags in :mod:`surgeon.cli.options`, model loading in
:mod:`surgeon.cli.loading`, and what they print in :mod:`surgeon.cli.output`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

import typer

from surgeon.cli.bench import bench_command
from surgeon.cli.export import export_command
from surgeon.cli.inspect import inspect_command
from surgeon.cli.options import VersionOption, flag_for
from surgeon.cli.output import console, debug, one_line
from surgeon.errors import SurgeonError

__all__ = ["app", "main", "INTERRUPTED"]

INTERRUPTED = "interrupted; nothing was written"

app = typer.Typer(
    name="surgeon",
    help="Structured pruning that physically removes channels, with ONNX export and "
    "onnxruntime parity and latency.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # click's plain help: it wraps option help at the terminal's width (80 columns at most)
    # where Rich's four-column panels truncate it at 80
    rich_markup_mode=None,
)


class _Interrupted(Exception):
    """Ctrl-C inside a command, carried past click (which would turn the KeyboardInterrupt
    into a silent exit 130) to :func:`main`, which says so."""


def _command(name: str, short_help: str, function: Callable[..., Any]) -> None:
    """Register ``function`` as the command ``name``, a KeyboardInterrupt in it made an
    _Interrupted. ``short_help``: the line ``surgeon --help`` lists (click would cut the
    docstring's)."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except KeyboardInterrupt as exc:
            raise _Interrupted from exc

    app.command(name, short_help=short_help)(run)


_command(
    "export", "Slim a model, export it to ONNX and compare it with the original.", export_command
)
_command("inspect", "List a model's channel groups; preview a ratio with --ratio.", inspect_command)
_command("bench", "Time one ONNX file, or two side by side, in onnxruntime.", bench_command)


@app.callback()
def _root(version: VersionOption = False) -> None:
    pass


def error_line(exc: SurgeonError) -> str:
    """The error's message, led by the flag of the setting at fault where it has one
    (``--ignore: ignore names 'conv9', ...``)."""
    flag = flag_for(getattr(exc, "option", None))
    return f"{flag}: {exc}" if flag else str(exc)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()
    return code


def _interrupted() -> int:
    """Ctrl-C: one line on stderr. Every command removes what it wrote before it ends."""
    sys.stderr.write(f"{INTERRUPTED}\n")
    sys.stderr.flush()
    return 130


def _traceback() -> None:
    if debug():
        import traceback

        traceback.print_exc()


def _usage_error(exc: typer.TyperException) -> int:
    """click's usage errors (a bad option, a missing argument): one line, exit 2; no
    arguments at all: the help, exit 0."""
    from typer._click.exceptions import NoArgsIsHelpError

    if isinstance(exc, NoArgsIsHelpError):
        text = exc.ctx.get_help() if exc.ctx is not None else exc.format_message()
        console.print(text, markup=False, highlight=False)
        return 0
    return _fail(exc.format_message(), 2 if exc.exit_code == 1 else exc.exit_code)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; exits with 0, 1 (unexpected error), 2 (user error) or 130 (interrupted)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug("--debug" in args)
    try:
        result = app(args=args, prog_name="surgeon", standalone_mode=False)
        code = result if isinstance(result, int) else 0
        if code == 130:  # typer's own answer to a Ctrl-C outside a command (while parsing)
            code = _interrupted()
    except (_Interrupted, KeyboardInterrupt):
        code = _interrupted()
    except SurgeonError as exc:
        _traceback()
        code = _fail(error_line(exc), 2)
    except typer.TyperException as exc:
        code = _usage_error(exc)
    except typer.Abort:
        code = _fail("aborted", 1)
    except Exception as exc:
        _traceback()
        hint = "" if debug() else " (rerun with --debug for the traceback)"
        code = _fail(f"unexpected {type(exc).__name__}: {exc}{hint}", 1)
    sys.exit(code)
