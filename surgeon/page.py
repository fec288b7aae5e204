"""The surgery as one self-contained HTML page: what was removed, where the time went.

:func:`write_page` draws with matplotlib (inline SVG, no network, no script, the styles in the
page) from a :class:`~surgeon.report.Report`, the slim model's plan and the two timings:

1. the totals and the settings (ratio or target and its rounds, the form returned, how the
   model was captured);
2. channels before -> after for every group with parameters, in model order (one bar pair per
   prunable group, ids ``width-before-<i>`` / ``width-after-<i>``), and the groups that could
   not prune with their reason;
3. per layer (onnxruntime's node profile, original and slim matched by node): MACs, time, the
   theoretical and measured speedup, and measured / theoretical, the layers that did not pay
   (under :data:`PAID` of their MAC drop) marked;
4. the latency distribution of both models over the interleaved rounds, median and p90.

:func:`report_html` does the whole for two models from Python: export both, time them side by
side, profile them, and write the page.
"""

from __future__ import annotations

import html
import io
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from surgeon.benchmark import BenchResult
    from surgeon.report import Report

__all__ = ["write_page", "report_html", "figures", "PAID"]

#: a layer whose measured speedup is under this share of its MAC drop "did not pay"
PAID = 0.7

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: right; }
td:first-child, th:first-child { text-align: left; }
table.settings td { text-align: left; }
tr.unpaid td { background: #fde2e1; }
.note { color: #555; font-size: 0.9em; }
figure { margin: 1em 0; }
"""


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # the XML prolog does not belong inside HTML
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF: links, no content


def figures(
    plan: Mapping[str, Any] | None,
    layers: Sequence[Mapping[str, Any]],
    benches: tuple[BenchResult | None, BenchResult | None],
    provider: str,
) -> dict[str, Any]:
    """The page's matplotlib figures, by name (``widths``, ``layers``, ``latency``; those
    there is data for)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out: dict[str, Any] = {}
    widths = [w for w in (plan or {}).get("widths", []) if "reason" not in w]
    if widths:
        fig, ax = plt.subplots(figsize=(9, 0.5 + 0.16 * len(widths)))
        ys = range(len(widths))
        before = ax.barh(ys, [w["channels"][0] for w in widths], color="#c6d4e6", label="before")
        after = ax.barh(ys, [w["channels"][1] for w in widths], color="#2f6db5", label="after")
        for i, (a, b) in enumerate(zip(before, after, strict=True)):
            a.set_gid(f"width-before-{i}")
            b.set_gid(f"width-after-{i}")
        ax.set_yticks(list(ys), [w["name"] for w in widths], fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel("channels")
        ax.legend(loc="lower right")
        ax.set_title("channels per prunable group, before and after (model order)")
        out["widths"] = fig
    timed = [r for r in layers if r["ms"][0] is not None]
    if timed:
        fig, ax = plt.subplots(figsize=(9, 0.5 + 0.16 * len(timed)))
        ys = range(len(timed))
        ax.barh(ys, [r["ms"][0] for r in timed], color="#d9d9d9", label="original")
        ax.barh(ys, [r["ms"][1] or 0 for r in timed], color="#e07b39", label="slim", height=0.5)
        ax.set_yticks(list(ys), [r["layer"] for r in timed], fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel(f"ms per run ({provider}, onnxruntime node profile)")
        ax.legend(loc="lower right")
        ax.set_title("time per layer")
        out["layers"] = fig
    samples = [
        b[provider].samples_ms if b is not None and provider in b.timings else () for b in benches
    ]
    if all(samples):
        fig, ax = plt.subplots(figsize=(9, 2.6))
        for s, name, color in zip(
            samples, ("original", "slim"), ("#7f7f7f", "#2f6db5"), strict=True
        ):
            ax.hist(s, bins=30, alpha=0.7, color=color, label=name)
            for q, style in ((50, "-"), (90, "--")):
                ax.axvline(sorted(s)[min(len(s) - 1, int(len(s) * q / 100))], color=color, ls=style)
        ax.set_xlabel("ms per run (solid: median, dashed: p90)")
        ax.legend()
        ax.set_title(f"latency over {len(samples[0])} interleaved rounds ({provider})")
        out["latency"] = fig
    return out


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    classes: Sequence[str] = (),
    kind: str = "",
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        cells = "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    attr = f' class="{kind}"' if kind else ""
    return f"<table{attr}><tr>{head}</tr>{''.join(body)}</table>"


def _fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _settings_rows(report: Report, plan: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    s = report.settings
    rows = []
    target = s.get("target") or (plan or {}).get("target")
    if target:
        got = (
            f"{target['slim_ms']:.3g} ms"
            if target["kind"] == "latency_ms"
            else f"{target['achieved']:.3g}x"
        )
        rows.append(
            (
                "target",
                f"{target['kind']} {target['value']:g} — achieved {got}, theoretical "
                f"{target['theoretical']:.3g}x fewer MACs, round {target['round']} of "
                f"{len(target['rounds'])}, {target.get('blocks', 0)} whole block(s) removed",
            )
        )
    elif "ratio" in s:
        rows.append(("ratio", f"{s['ratio']:g} ({s.get('scope', 'local')})"))
    for key in ("importance", "round_to", "grouped", "attention", "compensate", "form"):
        if key in s:
            rows.append((key, str(s[key])))
    if plan:
        rows.append(("captured", str(plan.get("captured", "—"))))
        if plan.get("form_reason"):
            rows.append(("why the graph", str(plan["form_reason"])))
    return rows


def write_page(
    report: Report,
    path: str | os.PathLike[str],
    *,
    plan: Mapping[str, Any] | None = None,
    benches: tuple[BenchResult | None, BenchResult | None] = (None, None),
    plots: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the page for ``report`` (its ``layers`` rows, ``plan`` the slim model's, the two
    timings) to ``path`` atomically; with ``plots``, also each figure as a PNG there."""
    import matplotlib.pyplot as plt

    from surgeon.files import write_bytes_atomic

    provider = next(iter(report.providers), "cpu")
    figs = figures(plan, report.layers, benches, provider)
    parts = [
        f"<h1>surgeon: {html.escape(report.model)}</h1>",
        _table(
            ["", "original", "slim", "original / slim"],
            [
                [
                    "params",
                    f"{report.original.params:,}",
                    f"{report.slim.params:,}",
                    _fmt(report.compression_ratio, ".2f", "x"),
                ],
                [
                    "MACs",
                    f"{report.original.macs:,}",
                    f"{report.slim.macs:,}",
                    _fmt(report.theoretical_speedup, ".2f", "x"),
                ],
                *(
                    [
                        f"latency ({p}, median)",
                        _fmt(report.original.latency_ms.get(p), ".3f", " ms"),
                        _fmt(report.slim.latency_ms.get(p), ".3f", " ms"),
                        _fmt(report.measured_speedup(p), ".2f", "x"),
                    ]
                    for p in report.providers
                ),
            ],
        ),
        "<h2>Settings</h2>",
        _table(["setting", "value"], _settings_rows(report, plan), kind="settings"),
        "<h2>Channels</h2>",
    ]
    if "widths" in figs:
        parts.append(f"<figure>{_svg(figs['widths'])}</figure>")
    blocked = [w for w in (plan or {}).get("widths", []) if "reason" in w]
    if blocked:
        parts.append(
            f"<p class='note'>{len(blocked)} group(s) with parameters could not prune:</p>"
        )
        parts.append(
            _table(
                ["group", "first member", "channels", "why", "where"],
                [
                    [w["group"], w["name"], w["channels"][0], w["reason"], w.get("source", "")]
                    for w in blocked
                ],
            )
        )
    if plan and plan.get("blocks"):
        parts.append(
            f"<p class='note'>whole blocks removed: {', '.join(b['add'] for b in plan['blocks'])}</p>"
        )
    parts.append("<h2>Time per layer</h2>")
    if report.layers:
        parts.append(f"<figure>{_svg(figs['layers'])}</figure>" if "layers" in figs else "")
        unpaid = [
            "unpaid" if r["efficiency"] is not None and r["efficiency"] < PAID else ""
            for r in report.layers
        ]
        parts.append(
            f"<p class='note'>Rows in red: the layer's measured speedup is under {PAID:.0%} "
            "of its MAC drop (it did not pay). Node times are onnxruntime's, after its fusions "
            "(a Conv fused with its norm and activation is one node, named after its last "
            "output).</p>"
        )
        parts.append(
            _table(
                ["layer", "op", "MACs", "MACs slim", "ms", "ms slim", "theoretical", "measured", "measured / theoretical"],
                [
                    [
                        r["layer"], r["op"], _fmt(r["macs"][0], ","), _fmt(r["macs"][1], ","),
                        _fmt(r["ms"][0], ".3f"), _fmt(r["ms"][1], ".3f"),
                        _fmt(r["theoretical"], ".2f", "x"), _fmt(r["measured"], ".2f", "x"),
                        _fmt(r["efficiency"], ".2f"),
                    ]
                    for r in report.layers
                ],
                unpaid,
            )
        )  # fmt: skip
    else:
        parts.append("<p class='note'>Not profiled (timing was off).</p>")
    parts.append("<h2>Latency</h2>")
    parts.append(
        f"<figure>{_svg(figs['latency'])}</figure>"
        if "latency" in figs
        else "<p class='note'>Not timed.</p>"
    )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>surgeon: {html.escape(report.model)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )
    if plots is not None:
        folder = Path(plots)
        folder.mkdir(parents=True, exist_ok=True)
        for name, fig in figs.items():
            fig.savefig(folder / f"{name}.png", dpi=120, bbox_inches="tight")
    for fig in figs.values():
        plt.close(fig)
    out = Path(path).expanduser().absolute()
    write_bytes_atomic(out, page.encode(), what="HTML report")
    return out


def report_html(
    original: nn.Module,
    slim: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    threads: int | None = None,
    runs: int = 50,
    warmup: int = 10,
    plots: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> Path:
    """Export ``original`` and ``slim``, time them side by side and profile them node by node
    in onnxruntime on ``device``, and write the page to ``path`` (see the module docstring);
    with ``plots``, the figures as PNG files there too. Returns the page's path."""
    from surgeon.benchmark import bench_interleaved
    from surgeon.exporter import export
    from surgeon.keys import PLAN_KEY
    from surgeon.profile import layer_rows, node_profile
    from surgeon.report import build_report

    with tempfile.TemporaryDirectory(prefix="surgeon-page-") as tmp:
        paths = [
            export(m, example_inputs, Path(tmp) / f"m{i}.onnx")
            for i, m in enumerate((original, slim))
        ]
        benches = bench_interleaved(
            paths, example_inputs, providers=(device,), warmup=warmup, runs=runs, threads=threads
        )
        profiles = [
            node_profile(p, example_inputs, provider=device, threads=threads) for p in paths
        ]
        plan = getattr(slim, "meta", {}).get(PLAN_KEY)
        report = build_report(
            name or type(original).__name__, original, slim, example_inputs,
            original_onnx=paths[0], slim_onnx=paths[1], original_bench=benches[0],
            slim_bench=benches[1], settings={"form": type(slim).__name__, **(plan or {}).get("settings", {})},
            layers=layer_rows(*profiles),
        )  # fmt: skip
    return write_page(report, path, plan=plan, benches=(benches[0], benches[1]), plots=plots)
