"""``surgeon inspect``: a model's channel groups, and with ``--ratio`` what slimming keeps.

Without ``--ratio`` it prints the channel graph: which parameters are coupled into groups,
which groups can be pruned and, for the others, why not. With ``--ratio`` it slims the model
(counts only: no compensation, the graph form, nothing exported) and prints each group's
channels before and after.
"""

from __future__ import annotations

from surgeon.cli.loading import build, parse_shape
from surgeon.cli.options import (
    Attention,
    AttentionOption,
    DebugOption,
    GroupedOption,
    IgnoreOption,
    ImportanceOption,
    InputShapeOption,
    InspectModelArgument,
    InspectRatioOption,
    LeafModuleOption,
    MaxRowsOption,
    RoundToOption,
    Scope,
    ScopeOption,
    WeightsOption,
    measured,
    slim_options,
    with_names,
)
from surgeon.cli.output import console, err_console, preview_table, setup_logging
from surgeon.errors import SurgeonInputError

__all__ = ["inspect_command"]


def inspect_command(
    model: InspectModelArgument,
    input_shape: InputShapeOption = None,
    weights: WeightsOption = None,
    ratio: InspectRatioOption = None,
    scope: ScopeOption = Scope.local,
    round_to: RoundToOption = "auto",
    grouped: GroupedOption = None,
    importance: ImportanceOption = "l2",
    attention: AttentionOption = Attention.heads,
    ignore: IgnoreOption = None,
    leaf_module: LeafModuleOption = None,
    max_rows: MaxRowsOption = 40,
    debug: DebugOption = False,
) -> None:
    """Print MODEL's channel groups: what is coupled, what can be pruned and why not. With
    --ratio, each group's channels before and after slimming at that ratio."""
    setup_logging(debug)
    shape = parse_shape(input_shape) if input_shape is not None else None
    opts = slim_options(
        0.0 if ratio is None else ratio, importance=importance, scope=scope, round_to=round_to,
        attention=attention, grouped=grouped, ignore=ignore, leaf_module=leaf_module,
        compensate=False, returns="graph",  # counts only: no folding, nothing verified
    )  # fmt: skip
    if max_rows < 0:
        raise SurgeonInputError(f"--max-rows {max_rows} must be >= 0 (0 shows every group)")
    import surgeon

    with err_console.status(f"loading {model}"):
        _, loaded, example = build(model, shape, weights)
    opts = measured(with_names(opts, loaded), "cpu", None, multiple=ratio is not None)
    with err_console.status(f"analysing {model}"):
        graph = surgeon.analyze(
            loaded, example, leaf_modules=opts.leaf_modules, attention=opts.attention,
            grouped=opts.grouped,
        )  # fmt: skip
    if ratio is None:
        console.print(str(graph), markup=False, highlight=False)
        return
    with err_console.status(f"slimming {model} at ratio {ratio:g}"):
        slim_model = surgeon.slim(loaded, opts, example)
    table, hidden = preview_table(model, graph, slim_model, opts, max_rows)
    console.print(table)
    if hidden:
        console.print(
            f"… and {hidden} more groups (--max-rows 0 shows them all)",
            markup=False,
            highlight=False,
        )
