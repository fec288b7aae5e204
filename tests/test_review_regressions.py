"""Regressions from a review hunting silently wrong slim models: each net here once slimmed
wrongly or crashed. slim(net, 0.0) must keep the function exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import surgeon
from surgeon.errors import SurgeonError, SurgeonTraceError
from tests.helpers import assert_same


def _exact(net, x, **kw):
    with torch.no_grad():
        want = net(x)
    slim = surgeon.slim(net, 0.0, x, **kw)
    with torch.no_grad():
        assert_same(slim(x), want)
    return slim


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        return self.fc(h) + self.fc(h.relu())


def test_module_called_twice_is_not_folded_twice():
    torch.manual_seed(0)
    net = CalledTwice()
    with torch.no_grad():
        net.a.weight[2] = 0
        net.a.bias[2] = 1.0
    _exact(net, torch.randn(5, 4))


class InPlace(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a = nn.Linear(4, 6)
        self.f1 = nn.Linear(6, 3)
        self.f2 = nn.Linear(6, 3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.a(x)
        if self.how == "relu":
            r = F.relu(h, inplace=True)
        elif self.how == "module":
            r = self.act(h)
        elif self.how == "add_":
            r = h.add_(1)
        else:
            r = h
            r += 1
        return self.f1(r) + self.f2(h)


@pytest.mark.parametrize("how", ["relu", "module", "add_"])
def test_in_place_op_on_a_shared_tensor(how):
    torch.manual_seed(0)
    net = InPlace(how)
    with torch.no_grad():
        net.a.weight[2] = 0
        net.a.bias[2] = -1.0
    _exact(net, torch.randn(5, 4))


def test_augmented_assignment_fx_cannot_follow_is_refused():
    """fx records `r += 1` (r aliasing h, which is read later) as an out-of-place add: the
    graph computes something else than the model, so slim refuses instead of guessing."""
    net = InPlace("iadd")
    with pytest.raises(SurgeonTraceError, match="in-place update"):
        surgeon.slim(net, 0.5, torch.randn(5, 4))


class NormOnOtherDim(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 1)
        self.norm = norm
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.norm(self.conv(x).transpose(1, 2)))


@pytest.mark.parametrize("kind", ["bn_eval", "bn_train", "gn"])
def test_norm_statistics_over_a_channel_dim(kind):
    torch.manual_seed(0)
    norm = nn.GroupNorm(2, 6) if kind == "gn" else nn.BatchNorm1d(6)
    net = NormOnOtherDim(norm)
    net.train(kind == "bn_train")
    with torch.no_grad():
        if kind == "bn_eval":
            net.norm.running_mean.uniform_(0.5, 1)
            net.conv.weight[3] = 0
            net.conv.bias[3] = 0
        else:
            net.fc.weight[:, 3] = 0
    _exact(net, torch.randn(2, 4, 6))


class SizeArithmetic(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        y = self.conv(x)
        return self.fc((y.sum(1) / y.size(1)).flatten(1))


def test_size_used_in_arithmetic_blocks_the_dim():
    torch.manual_seed(0)
    net = SizeArithmetic()
    with torch.no_grad():
        net.conv.weight[3] = 0
        net.conv.bias[3] = 0
    slim = _exact(net, torch.randn(2, 3, 4, 4))
    assert slim.conv.out_channels == 8
    assert surgeon.slim(net, 0.5, torch.randn(2, 3, 4, 4)).conv.out_channels == 8


class FoldIntoNoBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 8, bias=False)
        self.c = nn.Linear(8, 2)

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x)))))


def test_bias_created_by_a_fold_is_resized_with_its_module():
    torch.manual_seed(0)
    net = FoldIntoNoBias()
    with torch.no_grad():
        net.a.weight[2] = 0
        net.a.bias[2] = 0.7
        net.b.weight[:, 2] *= 100
    x = torch.randn(3, 4)
    slim = surgeon.slim(net, 0.5, x)
    assert slim.b.bias is not None and slim.b.bias.shape == (slim.b.out_features,)
    assert slim(x).shape == (3, 2)
    _exact(net, x)


class TuplePieces(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(4 if how in ("last", "split_last") else 8, 2, 1)

    def forward(self, x):
        y = self.a(x)
        if self.how == "last":
            z = y.chunk(2, 1)[-1]
        elif self.how == "split_last":
            z = torch.split(y, [4, 4], 1)[-1]
        elif self.how == "cat":
            z = torch.cat(y.chunk(2, 1), 1)
        else:
            z = torch.stack(y.chunk(2, 1)).sum(0).repeat(1, 2, 1, 1)
        return self.c(z)


@pytest.mark.parametrize("how", ["last", "split_last", "cat", "stack"])
def test_tuple_valued_nodes_are_described_or_blocked(how):
    torch.manual_seed(0)
    net = TuplePieces(how)
    _exact(net, torch.randn(2, 3, 4, 4))
    assert surgeon.slim(net, 0.5, torch.randn(2, 3, 4, 4))(torch.randn(2, 3, 4, 4)).shape == (
        2,
        2,
        4,
        4,
    )


class WSConv(nn.Conv2d):
    """A conv subclass that changes the computation without overriding forward."""

    def _conv_forward(self, x, w, b):
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.var((1, 2, 3), keepdim=True) + 1e-5).sqrt()
        return super()._conv_forward(x, w, b)


def test_leaf_subclass_that_overrides_a_method_is_not_trusted():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), WSConv(8, 4, 1), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        net[0].weight[2] = 0
        net[0].bias[2] = 0
    slim = _exact(net, torch.randn(2, 3, 4, 4), leaf_modules=(WSConv,))
    assert slim.get_submodule("1").in_channels == 8


def test_train_mode_slim_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 2)
    ).train()
    x = torch.randn(4, 3, 8, 8) + 1
    slim = surgeon.slim(net, 0.0, x)
    assert int(slim.get_submodule("1").num_batches_tracked) == 0
    net.eval()
    slim.eval()
    with torch.no_grad():
        assert_same(slim(x), net(x))


def test_example_inputs_are_not_mutated():
    class Mutates(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x.mul_(2))

    x = torch.ones(2, 3)
    surgeon.slim(Mutates(), 0.5, x)
    assert torch.equal(x, torch.ones(2, 3))


def test_bool_index_is_not_an_int_index():
    class BoolIndex(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x)[True]

    x = torch.randn(2, 3, 4, 4)
    assert surgeon.slim(BoolIndex(), 0.5, x)(x).shape == (1, 2, 4, 4, 4)


class Viewed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.a(x).view(-1, 4))


def test_resize_failure_names_the_pass():
    from surgeon.graph import build_channel_graph
    from surgeon.passes import STATE_KEY, PassManager, ResizePass, begin
    from surgeon.trace import trace

    x = torch.randn(2, 3)
    gm = trace(Viewed(), x)
    state = begin(gm, build_channel_graph(gm), x)
    (g,) = state.removed
    removed = {g: state.removed[g].copy()}
    removed[g][:2] = True
    gm.meta[STATE_KEY] = state.replace(removed=removed)
    view = next(n for n in gm.graph.nodes if n.target == "view")

    def sabotage(size):  # a wrong size constant, as a broken rule would write
        view.args = (view.args[0], -1, 3)

    state.graph.records["view"].resize_fns.append(sabotage)
    with pytest.raises(
        SurgeonError, match=r"ResizePass failed: the resized model no longer runs.*view"
    ):
        PassManager([ResizePass()]).run(gm)
