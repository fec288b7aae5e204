"""Hugging Face transformers models from tiny configs (random weights, no download), ratio 0.5.

For each model: parameters and MACs before -> after, attention heads before -> after (all
layers), the hidden width (input embeddings) and the first MLP width before -> after, the form
slim gave back, onnxruntime parity of the exported slim model (max |ort - torch| over the
output's largest magnitude), slim time, and Torch-Pruning's MAC drop at the same ratio when it
is installed and runs (a bench-only dependency). ``--set named`` (the default): the configs
``tests/test_transformers.py`` uses; ``--set wide``: 23 more architectures of other families
(encoders, decoders, encoder-decoders, vision and speech models nobody named in an issue), each
also checked for ratio-0 exactness (a third of every group's channels zeroed, then ``slim(0)``
must compute the same outputs); ``--set all``: both.

Run from the repository root: ``PYTHONPATH=. python bench/transformers.py [--set named|wide|all]
[--markdown]``.
"""

from __future__ import annotations

import os
import sys

# run as a script, this file's folder comes first on sys.path, and this file would then be
# imported as the `transformers` package it measures
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import copy
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

import surgeon
from bench.realworld import _time_limit
from surgeon.cost import count_macs, count_params
from surgeon.errors import SurgeonFixedSizeError
from tests.helpers import main_output

_G = torch.Generator().manual_seed(0)
_IDS = {"input_ids": torch.randint(0, 100, (1, 8), generator=_G)}
_PIX = {"pixel_values": torch.randn(1, 3, 32, 32, generator=_G)}
_PIX64 = {"pixel_values": torch.randn(1, 3, 64, 64, generator=_G)}
_WAVE = {"input_values": torch.randn(1, 400, generator=_G)}
_T = dict(
    vocab_size=100,
    hidden_size=64,
    num_hidden_layers=2,
    intermediate_size=128,
    num_attention_heads=4,
)
_V = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
_STAGES = dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])
# name -> (config class, its arguments, model class, example inputs, query projection suffix)
WIDE: dict[str, tuple[str, dict[str, Any], str, dict[str, torch.Tensor], str | None]] = {
    "albert": ("AlbertConfig", {**_T, "embedding_size": 32}, "AlbertModel", _IDS, "query"),
    "roberta": ("RobertaConfig", _T, "RobertaModel", _IDS, "self.query"),
    "electra": ("ElectraConfig", {**_T, "embedding_size": 32}, "ElectraModel", _IDS, "self.query"),
    "mobilebert": (
        "MobileBertConfig",
        {**_T, "embedding_size": 32, "intra_bottleneck_size": 32, "num_feedforward_networks": 2},
        "MobileBertModel",
        _IDS,
        "self.query",
    ),
    "bart": (
        "BartConfig",
        dict(
            vocab_size=100,
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
        ),
        "BartModel",
        _IDS,
        "self_attn.q_proj",
    ),
    "gpt_neo": (
        "GPTNeoConfig",
        dict(
            vocab_size=100,
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            attention_types=[[["global", "local"], 1]],
            intermediate_size=128,
        ),
        "GPTNeoForCausalLM",
        _IDS,
        "attention.q_proj",
    ),
    "gptj": (
        "GPTJConfig",
        dict(vocab_size=100, n_embd=64, n_layer=2, n_head=4, rotary_dim=8),
        "GPTJForCausalLM",
        _IDS,
        "attn.q_proj",
    ),
    "gpt_neox": ("GPTNeoXConfig", _T, "GPTNeoXForCausalLM", _IDS, None),
    "bloom": (
        "BloomConfig",
        dict(vocab_size=100, hidden_size=64, n_layer=2, n_head=4),
        "BloomForCausalLM",
        _IDS,
        None,
    ),
    "phi": ("PhiConfig", _T, "PhiForCausalLM", _IDS, "self_attn.q_proj"),
    "mistral (GQA 4 / 2)": (
        "MistralConfig",
        {**_T, "num_key_value_heads": 2},
        "MistralForCausalLM",
        _IDS,
        "self_attn.q_proj",
    ),
    "qwen3 (GQA 4 / 2)": (
        "Qwen3Config",
        {**_T, "num_key_value_heads": 2, "head_dim": 16},
        "Qwen3ForCausalLM",
        _IDS,
        "self_attn.q_proj",
    ),
    "dinov2": ("Dinov2Config", {**_V, "mlp_ratio": 2}, "Dinov2Model", _PIX, "attention.q_proj"),
    "beit": ("BeitConfig", {**_V, "intermediate_size": 128}, "BeitModel", _PIX, "attention.q_proj"),
    "deit": ("DeiTConfig", {**_V, "intermediate_size": 128}, "DeiTModel", _PIX, "attention.q_proj"),
    "clip_vision": (
        "CLIPVisionConfig",
        {**_V, "intermediate_size": 128},
        "CLIPVisionModel",
        _PIX,
        "self_attn.q_proj",
    ),
    "convnext": ("ConvNextConfig", {**_STAGES, "image_size": 32}, "ConvNextModel", _PIX, None),
    "resnet": ("ResNetConfig", {**_STAGES, "embedding_size": 16}, "ResNetModel", _PIX, None),
    "regnet": (
        "RegNetConfig",
        {**_STAGES, "embedding_size": 16, "groups_width": 8},
        "RegNetModel",
        _PIX,
        None,
    ),
    "segformer": (
        "SegformerConfig",
        {**_STAGES, "num_attention_heads": [1, 2, 4, 8], "decoder_hidden_size": 64},
        "SegformerForSemanticSegmentation",
        _PIX,
        None,
    ),
    "mobilevit": (
        "MobileViTConfig",
        dict(
            image_size=64, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64]
        ),
        "MobileViTForImageClassification",
        _PIX64,
        None,
    ),
    "levit": (
        "LevitConfig",
        dict(
            image_size=32,
            hidden_sizes=[32, 48, 64],
            num_attention_heads=[1, 2, 2],
            depths=[1, 1, 1],
            key_dim=[8, 8, 8],
            patch_size=16,
        ),
        "LevitModel",
        _PIX,
        None,
    ),
    "wav2vec2": (
        "Wav2Vec2Config",
        {
            **_T,
            "conv_dim": (16, 16),
            "conv_stride": (5, 2),
            "conv_kernel": (10, 3),
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 4,
        },
        "Wav2Vec2Model",
        _WAVE,
        "attention.q_proj",
    ),
}


def build(name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], str | None]:
    """Model ``name`` of ``tests/test_transformers.py`` or of :data:`WIDE` (random weights,
    seeded, eval mode), its example inputs and its query projections' name suffix."""
    import transformers

    from tests.test_transformers import MODELS
    from tests.test_transformers import build as named

    if name in MODELS:
        return named(name)
    from tests.helpers import randomize_norms

    config, kwargs, cls, x, q = WIDE[name]
    torch.manual_seed(0)
    model = getattr(transformers, cls)(getattr(transformers, config)(**kwargs)).eval()
    with torch.no_grad():
        if not main_output(model(**x)).any():  # zero-initialised norms (MobileViT)
            randomize_norms(model)
    return model, x, q


def _exact_at_zero(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> str:
    from tests.helpers import assert_exact_at_zero

    try:
        try:
            assert_exact_at_zero(model, x)
        except SurgeonFixedSizeError:  # only a graph at the example's sizes: asked for
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                assert_exact_at_zero(model, x, returns="graph")
        return "exact"
    except Exception as exc:  # noqa: BLE001 - a failure is a figure
        return f"fails ({type(exc).__name__}: {str(exc)[:60]})"


HEAD = [
    "model",
    "params",
    "MACs",
    "MAC drop",
    "heads",
    "hidden",
    "MLP",
    "form",
    "ORT parity",
    "ratio 0",
    "slim time",
    "peer MAC drop",
]
_MLP = ("intermediate.dense", "mlp.c_fc", "mlp.up_proj", "ffn.lin1", "DenseReluDense.wi", "fc1")


def _out(m: torch.nn.Module) -> int:
    """A projection's output width (``nn.Linear``, or GPT-2's ``Conv1D`` with its ``nf``)."""
    return getattr(m, "out_features", None) or m.nf


def _q_width(model: torch.nn.Module, q: str | None) -> int:
    return sum(_out(m) for n, m in model.named_modules() if q and n.endswith(q))


def _widths(model: torch.nn.Module) -> tuple[str, str]:
    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # a vision model has none
        emb = None
    hidden = str(emb.weight.shape[1]) if isinstance(emb, torch.nn.Embedding) else "-"
    mlp = next((str(_out(m)) for n, m in model.named_modules() if n.endswith(_MLP)), "-")
    return hidden, mlp


def _parity(slim: torch.nn.Module, x: dict[str, torch.Tensor]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = surgeon.export(slim, x, Path(tmp) / "slim.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {i.name: x[i.name].numpy() for i in sess.get_inputs()}
        got = sess.run(None, feed)[0]
    with torch.no_grad():
        want = main_output(slim(**x)).numpy()
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def _peer(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> str:
    try:
        import torch_pruning as tp
    except ImportError:
        return "n/a"
    try:
        with _time_limit(300):
            m = copy.deepcopy(model)
            heads = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1:]
            tp.pruner.MetaPruner(
                m,
                x,
                importance=tp.importance.MagnitudeImportance(p=2),
                pruning_ratio=0.5,
                ignored_layers=heads,
            ).step()
            with torch.no_grad():
                if main_output(m(**x)).shape != main_output(model(**x)).shape:
                    return "fails (output shape changed)"
            return f"{count_macs(model, x) / count_macs(m, x):.2f}x"
    except Exception as exc:  # noqa: BLE001 - the peer's failure is a figure too
        return f"fails ({type(exc).__name__})"


def row(name: str) -> list[str]:
    model, x, q = build(name)
    exact = _exact_at_zero(model, x)
    try:
        start = time.perf_counter()
        fixed = False
        try:
            slim = surgeon.slim(model, 0.5, x)
        except SurgeonFixedSizeError:  # only a graph at the example's sizes: asked for
            fixed = True
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                slim = surgeon.slim(model, 0.5, x, returns="graph")
        took = time.perf_counter() - start
        parity = f"{_parity(slim, x):.1e}"
    except Exception as exc:  # noqa: BLE001 - a refusal is a row
        return [
            name,
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            f"{type(exc).__name__}: {exc}"[:80],
            exact,
            "-",
            "-",
        ]
    cfg_heads = getattr(model.config, "num_attention_heads", None)
    before, after = _q_width(model, q), _q_width(slim, q)
    layers = sum(1 for n, _ in model.named_modules() if q and n.endswith(q))
    heads = "-"
    if isinstance(cfg_heads, int) and before:
        heads = f"{cfg_heads * layers} -> {cfg_heads * layers * after // before}"
    (h0, m0), (h1, m1) = _widths(model), _widths(slim)
    p0, p1 = count_params(model), count_params(slim)
    c0, c1 = count_macs(model, x), count_macs(slim, x)
    return [
        name,
        f"{p0 / 1e3:.1f}K -> {p1 / 1e3:.1f}K",
        f"{c0 / 1e6:.2f}M -> {c1 / 1e6:.2f}M",
        f"{c0 / c1:.2f}x",
        heads,
        f"{h0} -> {h1}",
        f"{m0} -> {m1}",
        "own class"
        if not isinstance(slim, torch.fx.GraphModule)
        else "graph (example sizes)"
        if fixed
        else "graph",
        parity,
        exact,
        f"{took:.1f} s",
        _peer(model, x),
    ]


def main() -> None:
    from tests.test_transformers import MODELS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=("named", "wide", "all"), default="named")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    names = {"named": list(MODELS), "wide": list(WIDE), "all": [*MODELS, *WIDE]}[args.set]
    rows: list[list[Any]] = [row(name) for name in names]
    if args.markdown:
        print("| " + " | ".join(HEAD) + " |")
        print("|" + "---|" * len(HEAD))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        for r in [HEAD, *rows]:
            print("  ".join(f"{c:<16}" for c in r))


if __name__ == "__main__":
    main()
