"""Property-based tests: ``slim`` on random small CNNs composed from blocks.

The strategy ``nets()`` draws a small CNN (conv, depthwise / grouped conv, norms, activations,
residual adds, cat / split / chunk, squeeze-excitation, and a pooled or flattened Linear head)
with the forms real code writes and that once went wrong (issue 15): ``F.conv2d`` /
``F.batch_norm`` / ``F.relu`` on a module's own tensors, index slicing (``x[:, :k]``), a
``torch.jit.script``-ed block (opaque to fx), a weight-norm parametrized conv, and a
``forward(self, x, **kwargs)`` fed keyword example inputs. It builds the net as a real
``nn.Module``. Its ``repr`` is a readable listing
of the blocks with their widths and spatial sizes, so a falsifying example prints the net.

* ``test_slim_export_roundtrip`` (property A): at any ratio in [0, 0.9) (local or global scope,
  L1 or L2 importance) ``slim`` runs, keeps the output shape (and the function at ratio 0), does
  not grow the parameter count (at ratio 0: the same parameter and state-dict sizes, so an
  opaque block loses nothing), trains (backward), and exports to ONNX with onnxruntime parity.
* ``test_slim_zero_ratio_is_exact`` (property B): zeroing random channel classes of random
  prunable groups and slimming at ratio 0 keeps the function exactly and removes parameters.

Profiles ("ci" under ``CI``, "dev" otherwise: 200 examples each) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import event, given, note
from hypothesis import strategies as st
from torch.nn.utils import parametrizations

import surgeon
from tests.helpers import assert_exact, assert_same, randomize_norms, zero_classes

MIN_WIDTH, MAX_WIDTH = 4, 16
ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "hardswish": nn.Hardswish,
    "sigmoid": nn.Sigmoid,
}


# ------------------------------------------------------------------------------------------
# Blocks: small modules with a one-line description each.
# ------------------------------------------------------------------------------------------


def _out_size(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


@dataclass
class Shape:
    """What flows between blocks: channels and spatial size (batch is fixed)."""

    c: int
    h: int
    w: int

    def __str__(self) -> str:
        return f"{self.c}x{self.h}x{self.w}"


@dataclass
class ConvSpec:
    c_in: int
    c_out: int
    k: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = True

    def make(self) -> nn.Conv2d:
        return nn.Conv2d(
            self.c_in,
            self.c_out,
            self.k,
            stride=self.stride,
            padding=self.padding,
            groups=self.groups,
            bias=self.bias,
        )

    def __str__(self) -> str:
        g = f" g{self.groups}" if self.groups > 1 else ""
        b = "" if self.bias else " nobias"
        return f"conv {self.c_in}->{self.c_out} k{self.k} s{self.stride} p{self.padding}{g}{b}"

    def shape(self, x: Shape) -> Shape:
        return Shape(
            self.c_out,
            _out_size(x.h, self.k, self.stride, self.padding),
            _out_size(x.w, self.k, self.stride, self.padding),
        )


class Seq(nn.Module):
    """A plain chain (conv / norm / act), kept as its own module for readable names."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Cat(nn.Module):
    """``cat([a(x), b(x)], 1)``; ``b`` may be ``None`` (then ``x`` itself: a dense block)."""

    def __init__(self, a: nn.Module, b: nn.Module | None) -> None:
        super().__init__()
        self.a = a
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        other = x if self.b is None else self.b(x)
        return torch.cat([self.a(x), other], dim=1)


class Split(nn.Module):
    """``torch.split(x, sizes, 1)``, a conv per piece, then ``cat``."""

    def __init__(self, sizes: list[int], a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.sizes = sizes
        self.a = a
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = torch.split(x, self.sizes, dim=1)
        return torch.cat([self.a(p), self.b(q)], dim=1)


class ChunkCat(nn.Module):
    """``x.chunk(2, 1)``, a conv per piece, then ``cat``."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a = a
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = x.chunk(2, dim=1)
        return torch.cat([self.a(p), self.b(q)], dim=1)


class ChunkAdd(nn.Module):
    """``p, q = x.chunk(2, 1); p + q`` (halves the width)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = torch.chunk(x, 2, dim=1)
        return p + q


class SE(nn.Module):
    """Squeeze-excitation: mean over H, W -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid -> x * s."""

    def __init__(self, c: int, r: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, r, 1)
        self.expand = nn.Conv2d(r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.expand(torch.relu(self.reduce(s))))
        return x * s


class FunctionalConv(nn.Module):
    """The ``F.*`` forms: ``F.conv2d`` on its own parameters, ``F.batch_norm`` on its own
    buffers, ``F.relu`` — what real code writes instead of modules."""

    def __init__(self, conv: ConvSpec) -> None:
        super().__init__()
        made = conv.make()
        self.weight = nn.Parameter(made.weight.detach().clone())
        self.bias = None if made.bias is None else nn.Parameter(made.bias.detach().clone())
        self.conv = conv
        self.gamma = nn.Parameter(torch.rand(conv.c_out) + 0.5)
        self.beta = nn.Parameter(torch.randn(conv.c_out) * 0.1)
        self.register_buffer("mean", torch.randn(conv.c_out) * 0.1)
        self.register_buffer("var", torch.rand(conv.c_out) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        y = F.conv2d(x, self.weight, self.bias, c.stride, c.padding, 1, c.groups)
        y = F.batch_norm(y, self.mean, self.var, self.gamma, self.beta, False, 0.1, 1e-5)
        return F.relu(y)


class PartialConv(nn.Module):
    """Index slicing: a conv on the first ``k`` channels, the rest passed through
    (``torch.cat([conv(x[:, :k]), x[:, k:]], 1)``, FasterNet's partial convolution)."""

    def __init__(self, k: int, conv: nn.Module) -> None:
        super().__init__()
        self.k = k
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x[:, : self.k]), x[:, self.k :]], dim=1)


def scripted(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """A block torch.jit.script compiles: opaque to fx, so its channels keep their size and
    its parameters must all survive."""

    def build() -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # jit.script is deprecated
            return torch.jit.script(make())

    return build


def weight_normed(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """A conv with a weight-norm parametrization (``parametrizations.weight_norm``)."""
    return lambda: parametrizations.weight_norm(make())


class PoolHead(nn.Module):
    def __init__(self, c: int, n: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(c * 4, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class MeanHead(nn.Module):
    def __init__(self, c: int, n: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


@dataclass
class BlockSpec:
    """One drawn block: its description, how to build it, and the flags property B needs."""

    text: str
    build: Callable[[], nn.Module]  # called under the net's seed
    sigmoid: bool = False  # a Sigmoid activation block (alone or in a residual body)
    groupnorm: bool = False
    pool: bool = False  # the adaptive-pool head


@dataclass
class NetSpec:
    input_shape: tuple[int, int, int, int]
    seed: int
    blocks: list[BlockSpec] = field(default_factory=list)
    head: BlockSpec | None = None
    out: Shape | None = None  # what reaches the head


class Net(nn.Module):
    """The generated network: ``blocks`` in order, then ``head``; ``repr`` is its listing."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        with torch.random.fork_rng():
            torch.manual_seed(spec.seed)
            self.blocks = nn.ModuleList(b.build() for b in spec.blocks)
            self.head = spec.head.build()
        self.example = torch.randn(
            spec.input_shape, generator=torch.Generator().manual_seed(spec.seed + 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    @property
    def inputs(self) -> torch.Tensor | dict:
        """The example inputs ``slim`` gets."""
        return self.example

    @property
    def has_sigmoid(self) -> bool:
        return any(b.sigmoid for b in self.spec.blocks)

    @property
    def has_groupnorm(self) -> bool:
        return any(b.groupnorm for b in self.spec.blocks)

    def __repr__(self) -> str:
        lines = [f"Net(input={self.spec.input_shape}, seed={self.spec.seed})"]
        lines += [f"  {i}: {b.text}" for i, b in enumerate(self.spec.blocks)]
        lines.append(f"  head: {self.spec.head.text}")
        return "\n".join(lines)


class KwargsNet(Net):
    """A decorated-style ``forward(self, x, **kwargs)`` (Hugging Face writes them): the example
    inputs are keywords, and one of them (``gain``) changes what the net computes."""

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == 0 and kwargs.get("gain") is not None:
                x = x * kwargs["gain"]
        return self.head(x)

    @property
    def inputs(self) -> dict:
        return {"x": self.example, "gain": 1.5}

    def __repr__(self) -> str:
        return "forward(self, x, **kwargs) with gain=1.5 after block 0; " + super().__repr__()


# ------------------------------------------------------------------------------------------
# The strategy.
# ------------------------------------------------------------------------------------------

widths = st.integers(MIN_WIDTH, MAX_WIDTH)


@st.composite
def conv_specs(draw, x: Shape, c_out: int, *, groups: int = 1, keep_size: bool = False):
    """A conv from ``x`` to ``c_out`` channels; ``keep_size``: stride 1, same padding."""
    k = draw(st.sampled_from([1, 3]))
    if keep_size:
        return ConvSpec(x.c, c_out, k, 1, k // 2, groups, draw(st.booleans()))
    strides = [1, 2] if min(x.h, x.w) >= 4 else [1]
    stride = draw(st.sampled_from(strides))
    pads = [0, 1] if k == 1 or min(x.h, x.w) >= 3 else [1]
    padding = draw(st.sampled_from(pads))
    return ConvSpec(x.c, c_out, k, stride, padding, groups, draw(st.booleans()))


def _norm(draw, c: int) -> tuple[str, object, bool]:
    kind = draw(st.sampled_from(["bn", "gn"]))
    if kind == "bn":
        return f"bn {c}", lambda: nn.BatchNorm2d(c), False
    g = draw(st.sampled_from([d for d in (1, 2, 4, c) if c % d == 0]))
    return f"gn {g}x{c // g}", lambda: nn.GroupNorm(g, c), True


@st.composite
def blocks(draw, x: Shape) -> tuple[BlockSpec, Shape]:
    kinds = ["conv", "dwconv", "norm", "act", "res", "cat", "se", "fconv", "script", "wnorm"]
    if x.c % 2 == 0 and x.c >= 4:
        kinds.append("gconv")
    if x.c >= 4:
        kinds += ["split", "chunk", "slice"]
    kind = draw(st.sampled_from(kinds))

    if kind == "conv":
        conv = draw(conv_specs(x, draw(widths)))
        y = conv.shape(x)
        return BlockSpec(f"{conv}  [{x} -> {y}]", conv.make), y

    if kind == "fconv":
        conv = draw(conv_specs(x, draw(widths)))
        y = conv.shape(x)
        return BlockSpec(
            f"F.conv2d / F.batch_norm / F.relu {conv}  [{x} -> {y}]", lambda: FunctionalConv(conv)
        ), y

    if kind in ("script", "wnorm"):
        conv = draw(conv_specs(x, draw(widths)))
        y = conv.shape(x)
        wrap, what = (scripted, "scripted") if kind == "script" else (weight_normed, "weight-norm")
        return BlockSpec(f"{what} {conv}  [{x} -> {y}]", wrap(conv.make)), y

    if kind == "slice":
        k = draw(st.integers(1, x.c - 1))
        conv = draw(conv_specs(Shape(k, x.h, x.w), draw(widths), keep_size=True))
        y = Shape(conv.c_out + x.c - k, x.h, x.w)
        text = f"cat[{conv}(x[:, :{k}]), x[:, {k}:]]  [{x} -> {y}]"
        return BlockSpec(text, lambda: PartialConv(k, conv.make())), y

    if kind == "dwconv":
        mult = draw(st.sampled_from([1, 2]))
        conv = draw(conv_specs(x, x.c * mult, groups=x.c))
        y = conv.shape(x)
        return BlockSpec(f"depthwise {conv}  [{x} -> {y}]", conv.make), y

    if kind == "gconv":
        g = draw(st.sampled_from([d for d in (2, 4) if x.c % d == 0]))
        c_out = g * draw(st.integers(max(1, -(-MIN_WIDTH // g)), MAX_WIDTH // g))
        conv = draw(conv_specs(x, c_out, groups=g))
        y = conv.shape(x)
        return BlockSpec(f"grouped {conv}  [{x} -> {y}]", conv.make), y

    if kind == "norm":
        text, make, gn = _norm(draw, x.c)
        return BlockSpec(text, make, groupnorm=gn), x

    if kind == "act":
        name = draw(st.sampled_from(sorted(ACTIVATIONS)))
        return BlockSpec(name, ACTIVATIONS[name], sigmoid=name == "sigmoid"), x

    if kind == "res":
        conv = draw(conv_specs(x, x.c, keep_size=True))
        parts, makes, gn, sig = [str(conv)], [conv.make], False, False
        if draw(st.booleans()):
            text, make, gn = _norm(draw, x.c)
            parts.append(text)
            makes.append(make)
        if draw(st.booleans()):
            name = draw(st.sampled_from(sorted(ACTIVATIONS)))
            parts.append(name)
            makes.append(ACTIVATIONS[name])
            sig = name == "sigmoid"
        text = f"residual x + ({' -> '.join(parts)})  [{x}]"
        return BlockSpec(
            text, lambda: Residual(Seq(*(m() for m in makes))), sigmoid=sig, groupnorm=gn
        ), x

    if kind == "cat":
        a = draw(conv_specs(x, draw(widths), keep_size=True))
        dense = draw(st.booleans())
        b = None if dense else draw(conv_specs(x, draw(widths), keep_size=True))
        y = Shape(a.c_out + (x.c if dense else b.c_out), x.h, x.w)
        text = f"cat[{a}, {'x' if dense else b}]  [{x} -> {y}]"
        return BlockSpec(text, lambda: Cat(a.make(), None if dense else b.make())), y

    if kind == "split":
        first = draw(st.integers(2, x.c - 2))
        sizes = [first, x.c - first]
        a = draw(conv_specs(Shape(first, x.h, x.w), draw(widths), keep_size=True))
        b = draw(conv_specs(Shape(x.c - first, x.h, x.w), draw(widths), keep_size=True))
        y = Shape(a.c_out + b.c_out, x.h, x.w)
        text = f"split{sizes} -> cat[{a}, {b}]  [{x} -> {y}]"
        return BlockSpec(text, lambda: Split(sizes, a.make(), b.make())), y

    if kind == "chunk":
        if x.c % 2 == 0 and x.c >= 8 and draw(st.booleans()):
            y = Shape(x.c // 2, x.h, x.w)
            return BlockSpec(f"chunk2 -> add  [{x} -> {y}]", ChunkAdd), y
        p = -(-x.c // 2)
        a = draw(conv_specs(Shape(p, x.h, x.w), draw(widths), keep_size=True))
        b = draw(conv_specs(Shape(x.c - p, x.h, x.w), draw(widths), keep_size=True))
        y = Shape(a.c_out + b.c_out, x.h, x.w)
        text = f"chunk2[{p}, {x.c - p}] -> cat[{a}, {b}]  [{x} -> {y}]"
        return BlockSpec(text, lambda: ChunkCat(a.make(), b.make())), y

    assert kind == "se"
    r = draw(st.integers(2, max(2, x.c // 2)))
    return BlockSpec(f"se {x.c}->{r}->{x.c}  [{x}]", lambda: SE(x.c, r)), x


@st.composite
def nets(draw) -> Net:
    h, w = draw(st.integers(8, 16)), draw(st.integers(8, 16))
    seed = draw(st.integers(0, 2**16))
    spec = NetSpec((2, 3, h, w), seed)
    x = Shape(3, h, w)
    depth = draw(st.integers(1, 5))
    if draw(st.integers(0, 4)) > 0:
        # most nets start with a plain conv stem: blocks on the 3 input channels are blocked
        # (model input), so without one most small nets would have nothing to prune
        conv = draw(conv_specs(x, draw(widths)))
        y = conv.shape(x)
        spec.blocks.append(BlockSpec(f"{conv}  [{x} -> {y}]", conv.make))
        x, depth = y, depth - 1
    for _ in range(depth):
        block, x = draw(blocks(x))
        spec.blocks.append(block)
    spec.out = x
    n = draw(st.integers(2, 5))
    c = x.c
    if draw(st.booleans()):
        spec.head = BlockSpec(
            f"adaptive_avg_pool 2x2 -> flatten({c * 4}) -> linear {c * 4}->{n}",
            lambda: PoolHead(c, n),
            pool=True,
        )
    else:
        spec.head = BlockSpec(f"mean(H, W) -> linear {c}->{n}", lambda: MeanHead(c, n))
    return (KwargsNet if draw(st.integers(0, 4)) == 0 else Net)(spec)


# ------------------------------------------------------------------------------------------
# Properties.
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


def _params(model: nn.Module) -> int:
    return surgeon.count_params(model)


def _state_numel(model: nn.Module) -> int:
    return sum(t.numel() for t in model.state_dict().values())


@given(
    net=nets(),
    ratio=st.floats(0.0, 0.9, exclude_max=True),
    scope=st.sampled_from(["local", "global"]),
    importance=st.sampled_from(["l2", "l1"]),
)
def test_slim_export_roundtrip(
    net: Net, ratio: float, scope: str, importance: str, onnx_dir
) -> None:
    inputs = net.inputs
    net.eval()
    with torch.no_grad():
        want = _call(net, inputs)
    options = {"scope": scope, "importance": importance}
    try:
        _check_roundtrip(net, ratio, options, inputs, want, onnx_dir / "slim.onnx")
    except BaseException:
        note(str(surgeon.analyze(net, inputs)))  # only for the falsifying example: it costs time
        raise


def _call(model: nn.Module, inputs: torch.Tensor | dict) -> torch.Tensor:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def _feed(inputs: torch.Tensor | dict) -> dict[str, np.ndarray]:
    """onnxruntime's inputs: ``input`` for one tensor, the keyword names otherwise (the float
    keywords are constants in the graph)."""
    if not isinstance(inputs, dict):
        return {"input": inputs.numpy()}
    return {k: v.numpy() for k, v in inputs.items() if isinstance(v, torch.Tensor)}


def _check_roundtrip(
    net: Net, ratio: float, options: dict, inputs: torch.Tensor | dict, want: torch.Tensor, path
) -> None:
    if net.spec.head.pool:
        out = net.spec.out
        divides = out.h % 2 == 0 and out.w % 2 == 0
        event(f"pool head: {'2 divides H, W' if divides else 'odd H or W (dynamo export)'}")
    event(f"forward: {type(net).__name__}")
    for form in ("scripted", "weight-norm", "F.conv2d", "x[:, :"):
        if any(form in b.text for b in net.spec.blocks):
            event(f"has a block: {form}")
    slim = surgeon.slim(net, ratio, inputs, **options)
    event(f"channels removed: {'some' if _params(slim) < _params(net) else 'none'}")
    event(f"form: {'graph' if isinstance(slim, torch.fx.GraphModule) else 'module'}")
    assert _params(slim) <= _params(net)
    with torch.no_grad():
        got = _call(slim, inputs)
        assert_same(_call(net, inputs), want, tol=0)  # slim left the model alone
    assert got.shape == want.shape
    assert torch.isfinite(got).all()
    if ratio == 0.0:
        assert_same(got, want)
        # random weights hold no dead channel: nothing goes, nothing is lost (an opaque
        # scripted block's parameters, a weight-norm's g and v)
        assert _params(slim) == _params(net)
        assert _state_numel(slim) == _state_numel(net)

    try:
        surgeon.export(slim, inputs, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (ort_out,) = session.run(None, _feed(inputs))
    finally:
        path.unlink(missing_ok=True)
    scale = float(got.abs().max())
    torch.testing.assert_close(torch.from_numpy(ort_out), got, rtol=0, atol=1e-4 * scale + 1e-5)

    slim.train()
    slim.zero_grad()
    out = _call(slim, inputs)
    assert out.shape == want.shape
    out.square().mean().backward()
    for name, p in slim.named_parameters():
        assert p.grad is not None, f"{name} has no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


@given(net=nets(), data=st.data())
def test_slim_zero_ratio_is_exact(net: Net, data) -> None:
    x = net.inputs
    net.eval()
    randomize_norms(net, seed=net.spec.seed)
    graph = surgeon.analyze(net, x)
    note(str(graph))

    groups = {g.index: g for g in graph.prunable_groups()}
    event(f"prunable groups: {min(len(groups), 3)}{'+' if len(groups) >= 3 else ''}")
    picked = []
    if groups:
        picked = data.draw(
            st.sets(st.sampled_from(sorted(groups)), min_size=1), label="groups to zero in"
        )
    zeroed_any = False
    for gi in sorted(picked):
        group = groups[gi]
        n = group.n_classes
        chosen_ids = data.draw(
            st.sets(st.integers(0, n - 1), min_size=1, max_size=n - 1),
            label=f"classes zeroed in group {group.index} (of {n})",
        )
        chosen = np.zeros(n, dtype=bool)
        chosen[sorted(chosen_ids)] = True
        zeroed_any |= any(k > 0 for _, k in zero_classes(net, group, chosen))

    slim = assert_exact(net, x)  # the same shape and outputs

    before, after = _params(net), _params(slim)
    assert after <= before
    # Zeroed classes are dead and removable, except where a zero channel turns into a non-zero
    # constant (Sigmoid(0) = 0.5) that a padded conv cannot fold, or feeds a statistic over
    # channels (GroupNorm): there the function is kept but the channel may stay.
    strict = zeroed_any and not net.has_sigmoid and not net.has_groupnorm
    event(
        "zeroed: none"
        if not zeroed_any
        else f"zeroed: some, {'strict check' if strict else 'sigmoid/groupnorm: <= only'}"
    )
    if strict:
        assert after < before, f"nothing was removed: {before} params before, {after} after"
