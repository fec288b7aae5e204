"""Shared test helpers: the exactness harnesses (``slim(0)`` keeps the function; hand-zeroed
channels -> ``slim(0)`` -> the same outputs with fewer parameters), the ratio-0.5 harness (slim,
train, export with onnxruntime parity), hand-zeroing channels, counting parameters from module
widths, the small nets and data that several test files share, and a traced model carrying a
fresh surgery state for the pass tests."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import surgeon
from surgeon.capture import as_args, trace
from surgeon.cost import count_params
from surgeon.graph import ChannelGraph, Group, build_channel_graph
from surgeon.models import create
from surgeon.passes import begin
from surgeon.spaces import ParamSlice


# -- harnesses ------------------------------------------------------------------------------
def assert_exact(model: nn.Module, x: Any, *, tol: float = 1e-5, **slim_kwargs: Any) -> nn.Module:
    """``slim(model, 0.0, x, **slim_kwargs)`` computes what ``model`` computes (same shape, to
    ``tol`` of the output's scale). ``model`` is prepared by the caller (hand-zeroed or made
    constant channels) and not changed; returns the slim model."""
    args, kwargs = as_args(x)
    with torch.no_grad():
        want = model(*args, **kwargs)
    slim = surgeon.slim(model, 0.0, x, **slim_kwargs)
    with torch.no_grad():
        got = slim(*args, **kwargs)
    got, want = main_output(got), main_output(want)
    assert got.shape == want.shape
    assert_same(got, want, tol)
    return slim


def main_output(out: Any) -> torch.Tensor:
    """The first tensor of a model's output (a Hugging Face ModelOutput or dict: its logits
    or last hidden state)."""
    return next(t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor))


def assert_exact_at_zero(
    model: nn.Module,
    x: Any,
    *,
    tol: float = 1e-5,
    return_zeroed: bool = False,
    attention: str = "heads",
    grouped: str = "offsets",
    returns: str = "auto",
) -> Any:
    """The exactness harness: zero about a third of every prunable group's channels by hand
    (:func:`zero_thirds`), then ``slim(model, 0.0, x)`` must compute the same outputs (to
    ``tol`` of their scale) with fewer parameters. ``model`` is not changed; returns the slim
    model, or ``(slim, zeroed)`` with ``return_zeroed`` (``zeroed``: what :func:`zero_thirds`
    returned, per producer module the number of output channels it zeroed)."""
    graph = surgeon.analyze(model, x, attention=attention, grouped=grouped)
    assert graph.prunable_groups(), "nothing to prune: the harness would prove nothing"
    zeroed_model = copy.deepcopy(model)
    zeroed = zero_thirds(zeroed_model, graph)
    slim = assert_exact(
        zeroed_model, x, tol=tol, attention=attention, grouped=grouped, returns=returns
    )
    assert count_params(slim) < count_params(model)
    return (slim, zeroed) if return_zeroed else slim


def assert_slims_at_half(
    model: nn.Module,
    x: Any,
    tmp_path: Path | None = None,
    *,
    export: bool = True,
    deterministic: bool = False,
    **slim_kwargs: Any,
) -> nn.Module:
    """The ratio-0.5 harness: the slim model keeps the output shape, trains (backward reaches
    every parameter), has fewer parameters, and exports to ONNX with onnxruntime parity
    (``surgeon.export`` checks it and raises otherwise; at ``tmp_path / "slim.onnx"``; skipped
    with ``export=False``). With ``deterministic``, a second ``slim`` gives the same tensors.
    Returns the slim model (its parameters keep their gradients)."""
    args, kwargs = as_args(x)
    slim = surgeon.slim(model, 0.5, x, **slim_kwargs)
    with torch.no_grad():
        ref = main_output(model(*args, **kwargs))
    out = main_output(slim(*args, **kwargs))
    assert out.shape == ref.shape
    out.float().pow(2).mean().backward()
    unused = _unused_parameters(model, x)  # the model's own form keeps what forward never reads
    assert all(
        p.grad is not None
        for n, p in slim.named_parameters()
        if p.requires_grad and n not in unused
    )
    assert count_params(slim) < count_params(model)
    if deterministic:
        again = surgeon.slim(model, 0.5, x, **slim_kwargs)
        assert_same_tensors(slim, again)
    if export:
        assert tmp_path is not None, "export needs tmp_path"
        surgeon.export(slim.eval(), x, tmp_path / "slim.onnx")
    return slim


class Widen(nn.Module):
    """``a``: 6 -> 12 channels, ``o``: 12 -> 3; a rule's test net writes the op under test
    between them in ``forward``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 12)
        self.o = nn.Linear(12, 3)


def _unused_parameters(model: nn.Module, x: Any) -> set[str]:
    """Names of the parameters that ``model``'s forward does not reach (no gradient)."""
    probe = copy.deepcopy(model)
    args, kwargs = as_args(x)
    main_output(probe(*args, **kwargs)).float().pow(2).mean().backward()
    return {n for n, p in probe.named_parameters() if p.requires_grad and p.grad is None}


class NetHarnesses:
    """Both harnesses for every small net of a rule family. Subclass it as ``TestNets`` in a
    ``tests/test_rules_<family>.py`` with ``nets = {name: (net class, make input)}``: each net,
    built by :func:`seeded`, gets ``test_exact_at_zero[name]`` (:func:`assert_exact_at_zero`)
    and ``test_slims_at_half[name]`` (:func:`assert_slims_at_half`, deterministic)."""

    nets: dict[str, tuple[Callable[[], nn.Module], Callable[[], Any]]] = {}

    @classmethod
    def build(cls, name: str) -> tuple[nn.Module, Any]:
        """``(net, x)`` for net ``name``, by :func:`seeded`."""
        return seeded(*cls.nets[name])

    @classmethod
    def slim(cls, name: str, ratio: float = 0.5) -> nn.Module:
        """Net ``name`` slimmed at ``ratio`` on its example input."""
        net, x = cls.build(name)
        return surgeon.slim(net, ratio, x)

    def pytest_generate_tests(self, metafunc: Any) -> None:
        if "net_name" in metafunc.fixturenames:
            metafunc.parametrize("net_name", list(self.nets))

    def test_exact_at_zero(self, net_name: str) -> None:
        assert_exact_at_zero(*self.build(net_name))

    def test_slims_at_half(self, net_name: str, tmp_path: Path) -> None:
        assert_slims_at_half(*self.build(net_name), tmp_path, deterministic=True)


def assert_same(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-5) -> None:
    """``got`` equals ``want`` to ``tol`` of the output's scale (its largest magnitude), so that
    a network whose outputs are tiny (1e-9) is held to as much as one whose outputs are O(1)."""
    scale = float(want.detach().abs().max())
    assert scale > 0, "the reference output is all zero: the comparison would prove nothing"
    torch.testing.assert_close(got, want, atol=tol * scale, rtol=tol)


def assert_same_tensors(a: nn.Module | dict, b: nn.Module | dict) -> None:
    """Two modules (or state dicts) hold the same tensors, by name and to the bit."""
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# -- building and zeroing -------------------------------------------------------------------
def seeded(cls: Callable[[], nn.Module], make_x: Callable[[], Any], seed: int = 0):
    """``(net, x)``: ``cls()`` built under ``seed`` in eval mode with random norm statistics
    (:func:`randomize_norms`), and its example input from ``make_x`` (drawn after the net)."""
    torch.manual_seed(seed)
    net = cls().eval()
    randomize_norms(net)
    return net, make_x()


def randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Give every norm non-trivial statistics and affine, so BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if (
                isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))
                and m.weight is not None
            ):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def constant_channels(module: nn.Module, idx: Any, value: Any = 0.0) -> None:
    """Make output channels ``idx`` of a Conv / Linear the constant ``value`` by hand: their
    filter rows zero, their bias ``value`` (0: dead channels)."""
    with torch.no_grad():
        module.weight[idx] = 0
        module.bias[idx] = value


def zero_classes(
    model: nn.Module, group: Group, chosen: np.ndarray
) -> list[tuple[ParamSlice, int]]:
    """Zero the channel classes ``chosen`` (a bool mask over ``group``'s classes) in ``model``:
    every producer slice of those classes (Conv / Linear filter rows and bias) and every norm's
    affine (weight and bias). Returns each slice filled (an absent bias is passed over) with
    how many tensor indices it zeroed."""
    filled = []
    with torch.no_grad():
        for sl in group.params:
            if sl.role not in ("producer", "norm"):
                continue
            cls = group.class_of[sl.space]
            idx = np.unique(sl.tensor_index(len(cls))[chosen[cls]])
            t = getattr(model.get_submodule(sl.owner), sl.name)
            if t is None:  # bias slices are registered even when None
                continue
            t.index_fill_(sl.dim, torch.as_tensor(idx, dtype=torch.long), 0.0)
            filled.append((sl, len(idx)))
    return filled


def zero_thirds(model: nn.Module, graph: ChannelGraph) -> dict[str, int]:
    """Zero about a third of the output channels of every producer of every prunable group.

    For each group, the classes with index % 3 == 1 are chosen and zeroed in ``model`` by
    :func:`zero_classes`. Returns, per producer module, how many output channels were zeroed.
    """
    zeroed: dict[str, int] = {}
    for group in graph.prunable_groups():
        chosen = np.arange(group.n_classes) % 3 == 1
        for sl, n in zero_classes(model, group, chosen):
            if sl.role == "producer" and sl.name == "weight":
                zeroed[sl.owner] = n
    return zeroed


def groups_of(graph: ChannelGraph, owner: str, dim: int = 0, name: str | None = "weight"):
    """The groups holding dim ``dim`` of ``owner``'s tensor ``name`` (of any of its tensors
    with ``name=None``)."""
    return [
        g
        for g in graph.groups
        if any(
            p.owner == owner and p.dim == dim and (name is None or p.name == name) for p in g.params
        )
    ]


def params_from_widths(model: nn.Module) -> int:
    """Parameter count computed from module attributes alone (not from tensor shapes)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            k = int(np.prod(m.kernel_size))
            total += m.out_channels * (m.in_channels // m.groups) * k + (
                m.out_channels if m.bias is not None else 0
            )
        elif isinstance(m, nn.Linear):
            total += m.out_features * m.in_features + (m.out_features if m.bias is not None else 0)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            total += 2 * m.num_features if m.affine else 0
        elif isinstance(m, nn.LayerNorm):
            total += 2 * int(np.prod(m.normalized_shape)) if m.elementwise_affine else 0
        elif isinstance(m, nn.GroupNorm):
            total += 2 * m.num_channels if m.affine else 0
        elif isinstance(m, nn.Embedding):
            total += m.num_embeddings * m.embedding_dim
    return total


def out_channels(module: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "num_features"):
        if hasattr(module, attr):
            return getattr(module, attr)
    raise AssertionError(f"{type(module).__name__} has no output width")


def matching_rows(original: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Indices of ``original`` whose values the (distinct) values of ``kept`` are."""
    idx = [int((original == v).nonzero()[0]) for v in kept.detach()]
    assert idx == sorted(idx)
    return torch.as_tensor(idx)


# -- the pass tests: a traced model with a fresh surgery state ------------------------------
def traced_with_state(name: str = "lenet5", zero: bool = False) -> tuple[fx.GraphModule, Any]:
    """``(gm, x)``: zoo model ``name`` traced, its channel graph built and the surgery begun
    (``gm.meta["surgeon.state"]``). With ``zero``, LeNet's conv2 filters 0-4 are zeroed first."""
    model, x = create(name)
    if zero:
        with torch.no_grad():
            model.conv2.weight[:5] = 0
            model.conv2.bias[:5] = 0
    gm = trace(model, x)
    begin(gm, build_channel_graph(gm), x)
    return gm, x


def weights_of(gm: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in gm.state_dict().items()}


# -- small nets with hand-computed expectations (importance, compensation, schedules) -------
class MLP(nn.Module):
    def __init__(self, d_in: int = 6, hidden: int = 8, d_out: int = 3, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, d_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class ConvNet(nn.Module):
    """conv-bn-relu x2, pooled, linear head: three prunable spaces in two groups."""

    def __init__(self, c1: int = 8, c2: int = 12) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.fc = nn.Linear(c2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def mlp_data(seed: int = 0, batches: int = 3, n: int = 16):
    """``batches`` batches of ``n`` (input, class) pairs for :class:`MLP` (6 in, 3 classes)."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))
        for _ in range(batches)
    ]


def convnet(seed: int = 0) -> tuple[ConvNet, torch.Tensor]:
    """A seeded :class:`ConvNet` in eval mode with random norm statistics, and an input."""
    torch.manual_seed(seed)
    model = ConvNet().eval()
    randomize_norms(model, seed)
    return model, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


# -- the digits data (with the session fixture ``digits_trained`` of tests/conftest.py) -----
def digit_batches(
    data: Any, n: int = 4, size: int = 256
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` training batches of ``size`` digits."""
    return [
        (data.x_train[i : i + size], data.y_train[i : i + size]) for i in range(0, n * size, size)
    ]


def digits_test_accuracy(model: nn.Module, data: Any) -> float:
    """Accuracy (%) of ``model`` on the digits test split."""
    from surgeon.digits import accuracy

    return accuracy(model, data.x_test, data.y_test)


# -- small nets the API, capture, copying, naming and registry tests share ------------------
class ConvBN(nn.Module):
    """conv (8 -> 8, 3x3) -> batch norm: a submodule to script or to make a leaf."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.conv(x))


class UnusedHeadNet(nn.Module):
    """conv -> [inner] -> conv -> head, with an auxiliary head forward never calls in eval
    (and a buffer it never reads). Input: ``(N, 3, H, W)``."""

    def __init__(self, inner: nn.Module | None = None) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.inner = inner if inner is not None else ConvBN()
        self.b = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)
        self.aux = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))  # unused: stays whole
        self.register_buffer("unused_table", torch.arange(5.0))

    def forward(self, x):
        x = self.inner(torch.relu(self.a(x)))
        return self.head(torch.relu(self.b(x)).mean((2, 3)))


def unused_head_net(inner: nn.Module | None = None) -> UnusedHeadNet:
    """A seeded :class:`UnusedHeadNet` in eval mode (``inner``: its middle block)."""
    torch.manual_seed(0)
    return UnusedHeadNet(inner).eval()


def weight_norm_net(kind: str) -> nn.Module:
    """conv -> relu -> a conv under ``parametrizations.weight_norm`` (``kind="weight"``) or
    ``spectral_norm`` (``"spectral"``) -> relu -> conv -> pooled linear head; seeded, eval
    mode. Input: ``(N, 3, H, W)``."""
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    norm = {"weight": parametrizations.weight_norm, "spectral": parametrizations.spectral_norm}
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        norm[kind](nn.Conv2d(8, 8, 3, padding=1)),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()


def tiny_conv() -> tuple[nn.Module, torch.Tensor]:
    """``(model, x)``: conv -> batch norm -> relu -> flatten (3 -> 4 channels, 6x6 input),
    seeded, eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    return model.eval(), torch.randn(1, 3, 6, 6)
