"""ONNX files in, slim ONNX files out: files nobody here wrote the graph of, slimmed at 0.5.

The files: torchvision and timm classifiers exported by both PyTorch exporters (TorchScript at
opsets 13-20, dynamo at 18-21; dynamic batch), a Hugging Face BERT encoder (token ids in,
dynamic batch and length), an ultralytics-style YOLOv8n detector and the pretrained ONNX
models that packages on the registry ship inside their wheels: RapidOCR's PaddlePaddle
detection / direction / recognition models (paddle2onnx, opsets 11-12), NudeNet's YOLOv8n
detector (opset 17) and ddddocr's YOLO detector (opset 11). The wheel files are read from the
installed packages, found by path and never imported: ``pip install --no-deps
rapidocr_onnxruntime nudenet ddddocr`` (a file whose package is missing is a row saying so).

Per file: the import checked against onnxruntime on the file, ratio 0 (the slim file against
the original file in onnxruntime), ratio 0.5 (MACs and parameters before -> after, the slim file
against the slim graph, the opset written), both files timed side by side in onnxruntime on the
CPU (interleaved rounds), the ops kept opaque and the first blocked reason. Each file runs in
its own process with a time limit, so a failure is a row.

Run from the repository root: ``PYTHONPATH=. python bench/onnx_in.py [--files a,b]
[--markdown] [--out bench/onnx_in.jsonl]``; ``--markdown`` prints the table from the rows kept.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # bench/transformers.py would shadow the transformers package

CACHE = Path(os.environ.get("SURGEON_ONNX_ZOO", Path.home() / ".cache" / "surgeon" / "onnx_zoo"))
TIMEOUT = 900

# name -> (how it is made, input shape or None for the declared one)
FILES: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "resnet50 (TorchScript, opset 13)": ("ts:tv:resnet50:13", None),
    "regnet_y_400mf (TorchScript, opset 14)": ("ts:tv:regnet_y_400mf:14", None),
    "densenet121 (TorchScript, opset 16)": ("ts:tv:densenet121:16", None),
    "mobilenet_v3_large (TorchScript, opset 17)": ("ts:tv:mobilenet_v3_large:17", None),
    "convnext_tiny (TorchScript, opset 20)": ("ts:tv:convnext_tiny:20", None),
    "efficientnet_b0 (dynamo, opset 18)": ("dynamo:tv:efficientnet_b0:18", None),
    "mobilenet_v2 (dynamo, opset 19)": ("dynamo:tv:mobilenet_v2:19", None),
    "resnet18 (dynamo, opset 21)": ("dynamo:tv:resnet18:21", None),
    "timm vit_tiny (TorchScript, opset 14)": ("ts:timm:vit_tiny_patch16_224:14", None),
    "timm vit_small (dynamo, opset 18)": ("dynamo:timm:vit_small_patch16_224:18", None),
    "timm mobilevit_xs (TorchScript, opset 17)": ("ts:timm:mobilevit_xs:17", None),
    "BERT encoder (TorchScript, opset 14)": ("ts:bert::14", None),
    "YOLOv8n-style detector (ultralytics yaml, opset 17)": ("ts:yolo::17", None),
    "RapidOCR PP-OCRv4 det (wheel, paddle2onnx)": (
        "wheel:rapidocr_onnxruntime:models/ch_PP-OCRv4_det_infer.onnx",
        (1, 3, 640, 640),
    ),
    "RapidOCR mobile cls (wheel, paddle2onnx)": (
        "wheel:rapidocr_onnxruntime:models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        (1, 3, 48, 192),
    ),
    "RapidOCR PP-OCRv4 rec (wheel, paddle2onnx)": (
        "wheel:rapidocr_onnxruntime:models/ch_PP-OCRv4_rec_infer.onnx",
        (1, 3, 48, 320),
    ),
    "NudeNet 320n YOLOv8 (wheel)": ("wheel:nudenet:320n.onnx", (1, 3, 320, 320)),
    "ddddocr detector (wheel)": ("wheel:ddddocr:common_det.onnx", None),
}

#: files checked at a looser tolerance, and why: the slim recognizer's softmax (max 1) differs
#: by 2.4e-4 between onnxruntime's optimised kernels and PyTorch, 6e-5 with the runtime's
#: graph optimisations off; PyTorch itself is 2e-5 off float64 there
RTOL = {"RapidOCR PP-OCRv4 rec (wheel, paddle2onnx)": 1e-3}


def _torch_model(kind: str, name: str) -> tuple[Any, Any, list[str], dict[str, dict[int, str]]]:
    import torch

    if kind == "tv":
        import torchvision

        m = torchvision.models.get_model(name, weights=None)
        return m, (torch.randn(1, 3, 224, 224),), ["input"], {"input": {0: "batch"}}
    if kind == "timm":
        import timm

        m = timm.create_model(name)
        size = 256 if "mobilevit" in name else 224
        return m, (torch.randn(1, 3, size, size),), ["input"], {"input": {0: "batch"}}
    if kind == "bert":
        from transformers import BertConfig, BertModel

        config = BertConfig(
            hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
            vocab_size=1000, attn_implementation="eager",
        )  # fmt: skip
        model = BertModel(config, add_pooling_layer=False)

        class Encoder(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bert = model

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                return self.bert(
                    input_ids=input_ids, attention_mask=attention_mask
                ).last_hidden_state

        ids = torch.randint(0, 1000, (1, 32))
        return (
            Encoder(), (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"],
            {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"}},
        )  # fmt: skip
    if kind == "yolo":
        from ultralytics.nn.tasks import DetectionModel

        m = DetectionModel("yolov8n.yaml", verbose=False)
        m.fuse = lambda *a, **k: m  # noqa: ARG005
        for mod in m.modules():
            if type(mod).__name__ == "Detect":
                mod.export, mod.format = True, "onnx"
        return m, (torch.randn(1, 3, 320, 320),), ["images"], {"images": {0: "batch"}}
    raise ValueError(kind)


def make_file(how: str) -> Path:
    """The ONNX file ``how`` names: exported once into the cache, or found in a package."""
    parts = how.split(":")
    if parts[0] == "wheel":
        spec = importlib.util.find_spec(parts[1])
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"the package {parts[1]} is not installed (pip install --no-deps {parts[1]})"
            )
        return Path(next(iter(spec.submodule_search_locations))) / parts[2]
    exporter, kind, name, opset = parts
    path = CACHE / f"{kind}_{name or kind}_{exporter}{opset}.onnx"
    if path.exists():
        return path
    import torch

    CACHE.mkdir(parents=True, exist_ok=True)
    model, args, names, dynamic = _torch_model(kind, name)
    model.eval()
    tmp = path.with_suffix(".part")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "ts":
            torch.onnx.export(
                model, args, str(tmp), dynamo=False, opset_version=int(opset), input_names=names,
                dynamic_axes=dynamic,
            )  # fmt: skip
        else:
            batch = torch.export.Dim("batch", min=1, max=64)
            program = torch.onnx.export(
                model, args, dynamo=True, opset_version=int(opset),
                dynamic_shapes=tuple({0: batch} for _ in args), verbose=False,
            )  # fmt: skip
            program.save(str(tmp), external_data=False)
    os.replace(tmp, path)
    return path


def measure(name: str) -> dict[str, Any]:
    import collections
    import logging

    import onnx

    import surgeon
    from surgeon.benchmark import bench_interleaved

    logging.disable(logging.WARNING)
    how, shape = FILES[name]
    rtol = RTOL.get(name)
    example = None
    if how.startswith("ts:bert"):  # two inputs with a free length: ids and a mask of 32
        import torch

        ids = torch.randint(0, 1000, (1, 32), generator=torch.Generator().manual_seed(0))
        example = (ids, torch.ones_like(ids))
    path = make_file(how)
    proto = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    row: dict[str, Any] = {
        "file": name,
        "path": str(path),
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "producer": proto.producer_name or "?",
        "nodes": sum(ops.values()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        zero = surgeon.slim_onnx(
            path, 0.0, Path(tmp) / "zero.onnx", example_inputs=example, input_shape=shape, rtol=rtol
        )
        row["import_diff"] = zero.source.import_diff
        row["ratio0_diff"] = zero.original_diff
        row["opaque"] = zero.source.opaque
        t = time.perf_counter()
        half = surgeon.slim_onnx(
            path, 0.5, Path(tmp) / "half.onnx", example_inputs=example, input_shape=shape, rtol=rtol
        )
        row["slim_s"] = time.perf_counter() - t
        row["macs"] = list(half.macs)
        row["params"] = list(half.params)
        row["parity"] = half.diff
        row["parity_abs"], row["out_max"] = _abs_parity(half)
        row["opset_written"] = half.opset
        graph = surgeon.analyze(
            half.source.module, half.source.example, leaf_modules=[surgeon.OnnxOp]
        )
        groups = [g for g in graph.groups if g.params]
        blocked = [g for g in groups if g.blocked]
        row["groups"] = len(groups)
        row["blocked"] = len(blocked)
        row["first_blocked"] = blocked[0].reasons[0][:200] if blocked else ""
        src = half.source  # timed at batch 1 where the batch is free
        feed = tuple(
            t[:1] if 0 in src.free_dims.get(n, {}) else t
            for n, t in zip(src.input_names, src.example, strict=True)
        )
        bench = bench_interleaved([path, half.path], feed, providers=("cpu",), warmup=5, runs=30)
        row["ms"] = [b.cpu.median_ms if b.cpu else None for b in bench]
    return row


def _abs_parity(half: Any) -> tuple[float, float]:
    """max |ort - torch| of the slim file against the slim graph, and max |output|: a slim
    model whose outputs are all ~0 (a text detector on noise) has no meaningful ratio."""
    import numpy as np
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(half.path), providers=["CPUExecutionProvider"])
    feed = {n: t.numpy() for n, t in zip(half.source.input_names, half.source.example, strict=True)}
    got = session.run(None, feed)
    with torch.no_grad():
        out = half.model(*half.source.example)
    want = [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]
    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))
    return diff, max(float(np.abs(w).max()) for w in want)


def _child(name: str, out: Path) -> None:
    try:
        row = measure(name)
    except Exception as exc:  # noqa: BLE001 - a failure is a row
        row = {
            "file": name,
            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
        }
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["file"]] = row
    return rows


def _parity(r: dict[str, Any]) -> str:
    if r.get("out_max") is not None and r["out_max"] < 1e-3:
        return f"{r['parity_abs']:.0e} abs (outputs ≤ {r['out_max']:.0e})"
    return f"{r['parity']:.1e}"


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    head = (
        "| file | opset in → out | import diff | ratio 0 vs file | MACs 0.5 | params 0.5 "
        "| parity | ORT ms (CPU) | opaque | groups blocked |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for name in FILES:
        r = rows.get(name)
        if r is None:
            continue
        if "error" in r or r.get("ratio0_diff") is None:
            lines.append(f"| {name} | | {r.get('error', 'no ratio-0 check')} | | | | | | | |")
            continue
        m0, m1 = r["macs"]
        p0, p1 = r["params"]
        ms = r["ms"]
        lines.append(
            f"| {name} | {r['opset']} → {r['opset_written']} | {r['import_diff']:.1e} "
            f"| {r['ratio0_diff']:.1e} | {m0 / 1e9:.2f}G → {m1 / 1e9:.2f}G ({m0 / max(m1, 1):.2f}×) "
            f"| {p0 / 1e6:.2f}M → {p1 / 1e6:.2f}M | {_parity(r)} "
            f"| {ms[0]:.2f} → {ms[1]:.2f} ({ms[0] / ms[1]:.2f}×) | {', '.join(o.split(' ')[0] for o in r['opaque']) or '-'} "
            f"| {r['blocked']}/{r['groups']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="", help="comma-separated substrings of FILES names")
    parser.add_argument("--out", type=Path, default=Path("bench/onnx_in.jsonl"))
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.out)
        return
    if args.markdown:
        print(markdown(_rows(args.out)))
        return
    wanted = [n for n in FILES if not args.files or any(s in n for s in args.files.split(","))]
    done = _rows(args.out)
    for name in wanted:
        if name in done and "error" not in done[name]:
            continue
        t = time.perf_counter()
        try:
            subprocess.run(
                [sys.executable, __file__, "--child", name, "--out", str(args.out)],
                timeout=TIMEOUT, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            with args.out.open("a") as f:
                f.write(json.dumps({"file": name, "error": f"over {TIMEOUT} s"}) + "\n")
        print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
    print(markdown(_rows(args.out)))


if __name__ == "__main__":
    main()
