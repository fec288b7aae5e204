"""Capture (surgeon/capture/): what fx cannot trace gets a SurgeonTraceError naming the module,
the line and the way out (leaf modules); example inputs are a tensor, a tuple or a dict, are
checked against forward, and are never changed; the shape run leaves BatchNorm statistics
alone; a graph that computes something else than the model is refused."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import surgeon
from surgeon.capture import capture, trace
from surgeon.errors import SurgeonError, SurgeonInputError, SurgeonTraceError
from surgeon.models import create
from tests.helpers import (
    assert_exact_at_zero,
    assert_same,
    assert_same_tensors,
    assert_slims_at_half,
    randomize_norms,
)
from tests.test_graph import InPlace


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = Gate()

    def forward(self, x):
        return self.gate(self.conv(x))


class Gate(nn.Module):
    def forward(self, x):
        if x.mean() > 0:  # data-dependent control flow
            return x * 2
        return x


class TopBranchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:  # data-dependent control flow in the model's own forward
            return y * 2
        return y


def test_data_dependent_control_flow_at_the_top_is_refused():
    with pytest.raises(SurgeonTraceError) as info:
        surgeon.slim(TopBranchy(), 0.5, torch.randn(1, 3, 8, 8))
    msg = str(info.value)
    assert "the top-level forward" in msg
    assert "test_capture.py" in msg and "if y.mean() > 0" in msg
    assert "leaf_modules" in msg
    assert isinstance(info.value, SurgeonError)


class Deep(nn.Module):
    """A traceable stem and head around an untraceable gate: only the gate is given up."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.gate = Branchy()  # its conv traces; its Gate does not
        self.head = nn.Conv2d(4, 5, 1)

    def forward(self, x):
        y = torch.relu(self.mid(torch.relu(self.stem(x))))
        return self.head(self.gate(y[:, :3]))


def test_an_untraceable_submodule_becomes_a_leaf_and_the_rest_slims(caplog):
    torch.manual_seed(0)
    net, x = Deep().eval(), torch.randn(1, 3, 8, 8)
    (why,) = capture(net, x).auto_leaves
    assert why.startswith("gate.gate (Gate)") and "if x.mean() > 0" in why
    assert "traced as a leaf" in caplog.text
    slim = surgeon.slim(net, 0.5, x)
    assert slim.meta["surgeon.plan"]["auto_leaves"] == [why]  # the plan says so too
    assert slim.stem.out_channels == 4  # the traceable part still prunes
    assert slim.gate.gate.__class__ is Gate  # the leaf is called as it is
    with torch.no_grad():
        assert slim(x).shape == net(x).shape
    again = surgeon.slim(net, 0.0, x)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x))


def test_leaf_modules_are_honoured():
    net = Branchy()
    x = torch.randn(1, 3, 8, 8)
    graph = surgeon.analyze(net, x, leaf_modules=(Gate,))
    assert any(n.op == "call_module" and n.target == "gate" for n in graph.gm.graph.nodes)
    slim = surgeon.slim(net, 0.5, x, leaf_modules=(Gate,))
    with torch.no_grad():
        torch.testing.assert_close(slim(x), net(x))  # the leaf's dims are blocked: nothing changes


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x, scale=None):
        h = torch.relu(self.a(x))
        if scale is not None:
            h = h * scale
        return self.b(h)


def test_tuple_and_dict_inputs():
    net = TwoInputs()
    x = torch.randn(5, 6)
    for inputs in (x, (x,), {"x": x}):
        slim = surgeon.slim(net, 0.5, inputs)
        assert slim.a.out_features == 8
        assert slim(x).shape == (5, 3)
    with pytest.raises(SurgeonInputError, match="unknown key"):
        surgeon.slim(net, 0.5, {"x": x, "y": x})


def test_bad_example_inputs():
    model, _ = create("lenet5")
    with pytest.raises(SurgeonTraceError, match="example_inputs"):
        surgeon.slim(model, 0.5, torch.randn(1, 3, 32, 32))


def test_example_inputs_are_not_mutated():
    """(A review regression.)"""

    class Mutates(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x.mul_(2))

    x = torch.ones(2, 3)
    surgeon.slim(Mutates(), 0.5, x)
    assert torch.equal(x, torch.ones(2, 3))


def test_train_mode_slim_leaves_batchnorm_statistics_alone():
    """(A review regression.)"""
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


def test_augmented_assignment_fx_cannot_follow_is_refused():
    """fx records `r += 1` (r aliasing h, which is read later) as an out-of-place add: the
    graph computes something else than the model, so slim refuses instead of guessing. (A
    review regression.)"""
    net = InPlace("iadd")
    with pytest.raises(SurgeonTraceError, match="in-place update"):
        surgeon.slim(net, 0.5, torch.randn(5, 4))


class SamePad(nn.Module):
    """Branches and loops on sizes the way same-padding and window code does: plain symbolic
    tracing refuses it (``math.ceil`` of a size, ``max(..., 0)``, ``if``, ``range``)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2)
        self.mid = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        ih, iw = x.size()[-2:]
        ph = max((math.ceil(ih / 2) - 1) * 2 + 3 - ih, 0)
        pw = max((math.ceil(iw / 2) - 1) * 2 + 3 - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        y = torch.relu(self.stem(x))
        if y.shape[-1] > 4:
            y = F.avg_pool2d(y, 2)
        for _ in range(y.shape[-1] // 4):
            y = y + torch.relu(self.mid(y))
        return self.head(y)


def test_code_that_branches_on_sizes_is_captured_specialised_and_slims(tmp_path, caplog):
    torch.manual_seed(0)
    net, x = SamePad().eval(), torch.randn(2, 3, 17, 17)
    with pytest.raises((TypeError, torch.fx.proxy.TraceError)):  # what plain fx says
        torch.fx.symbolic_trace(net)
    captured = capture(net, x)
    assert captured.how == "specialised"
    where = captured.specialised
    assert where["inputs"]["shape"] == [2, 3, 17, 17]
    assert any("math.ceil(ih / 2)" in w for w in where["where"])
    assert any("if y.shape[-1] > 4" in w for w in where["where"])
    assert "specialised to the example inputs' sizes" in caplog.text
    assert_exact_at_zero(net, x)
    slim = assert_slims_at_half(net, x, tmp_path)
    assert slim.stem.out_channels == 8 and slim.mid.out_channels == 8
    assert slim.meta["surgeon.plan"]["specialised"] == where
    # the pads stay computed from H and W, the batch dim stays free
    x3 = torch.randn(3, 3, 17, 17)
    with torch.no_grad():
        assert slim(x3).shape == net(x3).shape


def test_specialised_capture_still_refuses_branches_on_values():
    class Gated(SamePad):
        def forward(self, x):
            y = super().forward(x)
            if y.mean() > 0:  # on values: refused, with the line
                return y * 2
            return y

    with pytest.raises(SurgeonTraceError) as info:
        trace(Gated(), torch.randn(1, 3, 17, 17))
    msg = str(info.value)
    assert "control flow on tensor values" in msg and "if y.mean() > 0" in msg


def test_specialised_capture_keeps_the_users_inputs_and_statistics():
    net, x = SamePad().train(), torch.randn(2, 3, 17, 17)
    net.stem = nn.Sequential(net.stem, nn.BatchNorm2d(16))
    before, x0 = copy.deepcopy(net.state_dict()), x.clone()
    trace(net, x)
    assert_same_tensors(net.state_dict(), before)
    assert torch.equal(x, x0) and net.training


def test_a_graph_module_is_used_as_it_is():
    """An fx.GraphModule (a user's own capture, a slim model) is not traced again: its own
    graph is what slims."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    gm = torch.fx.symbolic_trace(net)
    x = torch.randn(3, 4)
    assert trace(gm, x) is gm
    slim = surgeon.slim(gm, 0.5, x)
    assert isinstance(slim, torch.fx.GraphModule) and slim.get_submodule("0").out_features == 4
    assert_exact_at_zero(gm, x)


class TakesKwargs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x, **kwargs):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("given", ["tensor", "tuple", "dict"])
def test_a_forward_with_kwargs_slims_when_the_inputs_give_what_it_needs(given):
    """``forward(self, x, **kwargs)``: captured through an explicit ``forward(self, x)``."""
    torch.manual_seed(0)
    net, x = TakesKwargs().eval(), torch.randn(3, 4)
    inputs = {"tensor": x, "tuple": (x,), "dict": {"x": x}}[given]
    assert_exact_at_zero(net, inputs)
    slim = surgeon.slim(net, 0.5, inputs)
    assert type(slim) is TakesKwargs and slim.a.out_features == 4
    assert type(net) is TakesKwargs  # the capture's explicit forward is gone again


@pytest.mark.parametrize("returns", ["auto", "graph"])
@pytest.mark.parametrize("with_data", [False, True], ids=["statistics", "data"])
def test_the_input_model_keeps_its_values_and_shares_no_tensor(returns, with_data):
    """slim works on a copy that holds the input's own parameters until it has cut them: a
    fold, a compensation or a regression onto kept weights must never write into them, and
    the slim model must not hold one of them at the end (a fine-tune would move both)."""
    torch.manual_seed(0)
    model, x = create("resnet18", input_shape=(2, 3, 32, 32))
    randomize_norms(model)
    with torch.no_grad():  # dead filters: PropagatePass folds their constants into biases
        model.layer1[0].conv1.weight[:3] = 0
        model.fc.weight[:, :5] = 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [(torch.randn(4, 3, 32, 32), None) for _ in range(2)] if with_data else None
    slim = surgeon.slim(model, 0.5, x, returns=returns, data=data)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    theirs = {t.untyped_storage().data_ptr() for t in model.state_dict().values() if t.numel()}
    mine = [t for t in slim.state_dict().values() if t.numel()]
    assert not any(t.untyped_storage().data_ptr() in theirs for t in mine)


class SizedFactories(nn.Module):
    """A mask and positions made with ``torch.ones(b, n)`` / ``torch.zeros(b, n)`` from
    traced sizes (OPT's decoder) and a scale ``torch.tensor(n)`` (DeBERTa's attention):
    torch's argument parser refuses traced sizes before fx sees the call, so the whole
    forward failed to trace."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x):
        b, n = x.shape[0], x.shape[1]
        pos = torch.ones(b, n, device=x.device).cumsum(1) / n + torch.zeros(b, n, dtype=x.dtype)
        h = torch.relu(self.fc1(x)) * pos[..., None]
        scale = torch.rsqrt(torch.tensor(x.size(1), dtype=torch.float))  # DeBERTa's scale
        return self.fc2(h * scale)


def test_factories_with_traced_sizes_trace_and_slim(tmp_path):
    net, x = SizedFactories().eval(), torch.randn(2, 5, 6)
    before = torch.ones, torch.zeros, torch.tensor
    captured = capture(net, x)
    assert (torch.ones, torch.zeros, torch.tensor) == before  # torch's own again
    assert captured.specialised is None  # plain symbolic tracing took it: sizes stay free
    assert captured.how == "symbolic"
    assert_exact_at_zero(net, x)
    slim = assert_slims_at_half(net, x, tmp_path)
    assert slim.fc1.out_features == 6
    with torch.no_grad():  # another batch and length: the factories' sizes stayed traced
        assert slim(torch.randn(3, 7, 6)).shape == (3, 7, 4)


class CachedBias(nn.Module):
    """LeViT's attention: in eval mode a tensor computed from a parameter is cached per
    device in a dict (and here in an attribute too); tracing fills both with graph values."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.table = nn.Parameter(torch.randn(12) * 0.1)
        self.cache = {}
        self.nested = {"by_device": {}}
        self.history = []
        self.fc2 = nn.Linear(12, 4)

    def scale(self, device):
        if self.training:
            return self.table.exp()
        if str(device) not in self.cache:
            self.cache[str(device)] = self.table.exp()
            self.last = self.cache[str(device)]
        if not self.history:  # a list and a nested dict written in place
            self.history.append(self.table.sigmoid())
            self.nested["by_device"][str(device)] = self.table.tanh()
        return self.cache[str(device)] * self.history[0] / self.history[0]

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)) * self.scale(x.device))


def test_what_forward_caches_while_traced_is_not_kept():
    net, x = CachedBias().eval(), torch.randn(2, 5, 6)
    gm = trace(net, x)
    # the eager check after the trace fills them with tensors, never with graph values
    kept = [*net.cache.values(), getattr(net, "last", x), *net.history]
    kept += list(net.nested["by_device"].values())
    assert all(type(v) is torch.Tensor for v in kept)
    with torch.no_grad():
        assert_same(gm(x), net(x))
    assert_exact_at_zero(net, x)


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3)
        self.aux = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.body(x)
        if self.training:
            return y, self.aux(y)
        return y


def test_the_trace_check_compares_the_output_count():
    model, x = TwoHeads().train(), torch.randn(2, 3, 12, 12)
    with pytest.raises(SurgeonTraceError, match=r"returns 2 tensor\(s\) where the model returns 1"):
        surgeon.slim(model, 0.5, x)
    with pytest.raises(SurgeonTraceError, match="call model.eval"):
        surgeon.slim(model, 0.5, x)
    assert isinstance(surgeon.slim(model.eval(), 0.5, x), TwoHeads)
