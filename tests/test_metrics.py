"""level_prune (unstructured magnitude pruning) and metrics (sparse params / FLOPs, ratios)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

import surgeon
import surgeon.cost as cost_module
from surgeon.cost import PRUNABLE_TYPES, Metrics, count_params, level_prune, metrics
from surgeon.errors import SurgeonInputError
from surgeon.models import create
from tests.helpers import assert_same, randomize_norms


def _prunable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def _zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


# --- metrics: hand counts ------------------------------------------------------------------


N, H, W = 2, 6, 6


def _small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=True),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * H * W, 5),
    )


def _zero_by_hand(net: nn.Sequential) -> tuple[int, int, int]:
    """Zero known elements; return (conv weight zeros, bias zeros, linear weight zeros)."""
    conv, fc = net[0], net[3]
    with torch.no_grad():
        conv.weight[0] = 0  # a whole filter: 9
        conv.weight[2, 0, 1, 1] = 0  # one element
        conv.bias[3] = 0  # a bias: fewer nonzero params, same FLOPs
        fc.weight[1] = 0  # a whole row: 144
        fc.weight[4, :10] = 0  # 10 elements
    return 9 + 1, 1, 144 + 10


def test_metrics_match_hand_count_dense_and_sparse():
    net = _small_net()
    x = torch.randn(N, 1, H, W)
    params = (4 * 1 * 3 * 3 + 4) + (4 * H * W * 5 + 5)
    # MACs per sample: Cout*Cin*k*k*H*W (conv) + in*out (linear); FLOPs = 2 * MACs.
    macs = N * (4 * 1 * 3 * 3 * H * W + 4 * H * W * 5)
    assert (params, macs) == (765, 4032)

    dense = metrics(net, x)
    assert dense == Metrics(765, 765, 2 * macs, 2 * macs, 1.0, 1.0)

    conv_zeros, bias_zeros, fc_zeros = _zero_by_hand(net)
    # each conv weight element is applied at N*H*W output positions, each linear one at N.
    nonzero_flops = 2 * macs - 2 * (conv_zeros * N * H * W + fc_zeros * N)
    sparse = metrics(net, x)
    assert sparse.params == 765
    assert sparse.nonzero_params == 765 - conv_zeros - bias_zeros - fc_zeros == 600
    assert sparse.flops == 2 * macs == 8064
    assert sparse.nonzero_flops == nonzero_flops == 6008
    assert (sparse.macs, sparse.nonzero_macs) == (4032, 3004)
    assert sparse.compression_ratio == pytest.approx(765 / 600)
    assert sparse.theoretical_speedup == pytest.approx(8064 / 6008)


def test_metrics_ratios_use_the_reference():
    net = _small_net()
    x = torch.randn(N, 1, H, W)
    reference = copy.deepcopy(net)
    _zero_by_hand(net)
    # a smaller "original" makes the reference visible in both ratios
    smaller = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten())
    m = metrics(net, x, reference=reference)
    assert m.compression_ratio == pytest.approx(765 / 600)
    assert m.theoretical_speedup == pytest.approx(8064 / 6008)
    s = metrics(net, x, reference=smaller)
    assert s.compression_ratio == pytest.approx((2 * 9 + 2) / 600)
    assert s.theoretical_speedup == pytest.approx(2 * N * 2 * 9 * H * W / 6008)
    assert s.params == m.params and s.nonzero_flops == m.nonzero_flops


class _Transposed(nn.Module):
    """ConvTranspose2d, a grouped conv, and a Linear called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 2, kernel_size=2, stride=2)  # 3x3 -> 6x6
        self.grouped = nn.Conv2d(2, 4, 3, padding=1, groups=2)
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.grouped(self.up(x))
        return self.fc(torch.relu(self.fc(y)))


def test_metrics_conv_transpose_grouped_and_reused_module():
    torch.manual_seed(0)
    net = _Transposed()
    x = torch.randn(1, 4, 3, 3)
    up_pos, grouped_pos, fc_pos = 1 * 3 * 3, 1 * 6 * 6, 1 * 4 * 6  # per weight element, per call
    macs = 32 * up_pos + 36 * grouped_pos + 2 * 36 * fc_pos  # weight elements x positions
    m = metrics(net, x)
    assert m.flops == m.nonzero_flops == 2 * macs == 2 * 3312
    with torch.no_grad():
        net.up.weight[0] = 0  # 2*2*2 = 8 elements, applied at every input position
        net.grouped.weight[1] = 0  # 9 elements
        net.fc.weight[0, :3] = 0  # 3 elements, the module runs twice
    m = metrics(net, x)
    assert m.flops == 2 * macs
    assert m.nonzero_flops == 2 * macs - 2 * (8 * up_pos + 9 * grouped_pos + 3 * fc_pos * 2)
    assert m.nonzero_flops == 5544


def test_metrics_str_and_as_dict():
    net = _small_net()
    _zero_by_hand(net)
    m = metrics(net, torch.randn(N, 1, H, W))
    lines = str(m).splitlines()
    assert len(lines) == 6
    assert len({len(line) for line in lines}) == 1  # aligned columns
    text = str(m)
    for figure in ("765", "600", "8,064", "6,008", "1.27x", "1.34x"):
        assert figure in text
    assert lines[0].split() == ["params", "765"]
    d = m.as_dict()
    assert d == {
        "params": 765,
        "nonzero_params": 600,
        "flops": 8064,
        "nonzero_flops": 6008,
        "compression_ratio": pytest.approx(765 / 600),
        "theoretical_speedup": pytest.approx(8064 / 6008),
    }
    assert Metrics(**d) == m
    with pytest.raises(AttributeError):
        m.params = 1  # frozen


def test_metrics_leave_mode_buffers_and_weights_alone():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 2, stride=2),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4 * 16 * 16, 3),
    )
    randomize_norms(net)
    reference = copy.deepcopy(net)
    level_prune(net, 0.7)
    net.train()
    net[4].eval()  # mixed modes must come back as they were
    reference.train()
    before = {k: copy.deepcopy(v) for k, v in net.state_dict().items()}
    ref_before = {k: copy.deepcopy(v) for k, v in reference.state_dict().items()}
    m = metrics(net, torch.randn(2, 3, 8, 8), reference=reference)
    assert m.nonzero_params < m.params and m.theoretical_speedup > 1
    assert [mod.training for mod in net.modules()] == [True] * 5 + [False, True, True]
    assert all(mod.training for mod in reference.modules())
    for state, after in ((before, net.state_dict()), (ref_before, reference.state_dict())):
        assert state.keys() == after.keys()
        for k in state:
            torch.testing.assert_close(after[k], state[k], rtol=0, atol=0, msg=k)


def test_metrics_reads_pruned_zoo_model():
    model, x = create("lenet5")
    reference = copy.deepcopy(model)
    weights = _prunable(model)
    n = sum(w.numel() for w in weights.values())
    level_prune(model, 0.5)
    m = metrics(model, x, reference=reference)
    assert m.params == count_params(reference) == 61_706
    biases = [m.bias for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
    assert sum(b.numel() for b in biases) == 61_706 - n == sum(_zeros(b) for b in biases)
    assert m.nonzero_params == n - round(0.5 * n)  # the zoo's init zeroes every bias
    assert m.compression_ratio == pytest.approx(61_706 / m.nonzero_params)
    assert m.flops == metrics(reference, x).flops
    # LeNet-5 positions per weight element: conv1 28x28, conv2 10x10, each Linear 1
    positions = {"conv1": 28 * 28, "conv2": 10 * 10, "fc1": 1, "fc2": 1, "fc3": 1}
    skipped = 2 * sum(_zeros(w) * positions[name] for name, w in weights.items())
    assert m.nonzero_flops == m.flops - skipped
    assert m.theoretical_speedup == pytest.approx(m.flops / (m.flops - skipped))


# --- level_prune -----------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_level_prune_global_hits_sparsity(sparsity):
    model, _ = create("lenet5")
    original = copy.deepcopy(model)
    assert level_prune(model, sparsity) is model
    weights = _prunable(model)
    n = sum(w.numel() for w in weights.values())
    zeros = sum(_zeros(w) for w in weights.values())
    assert zeros == round(sparsity * n)
    assert abs(zeros / n - sparsity) <= 0.01
    # one threshold: every removed magnitude is at most every kept one
    old = _prunable(original)
    removed = torch.cat([old[k][w == 0].abs() for k, w in weights.items()])
    kept = torch.cat([old[k][w != 0].abs() for k, w in weights.items()])
    assert removed.max() <= kept.min()
    # kept weights are untouched; biases too
    for k, w in weights.items():
        torch.testing.assert_close(w[w != 0], old[k][w != 0], rtol=0, atol=0)
    for (name, p), q in zip(model.named_parameters(), original.parameters(), strict=True):
        if name.endswith("bias"):
            assert torch.equal(p, q), name


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_level_prune_local_hits_sparsity_per_layer(sparsity):
    model, _ = create("lenet5")
    original = _prunable(copy.deepcopy(model))
    level_prune(model, sparsity, scope="local")
    weights = _prunable(model)
    assert len(weights) == 5
    for name, w in weights.items():
        assert _zeros(w) == round(sparsity * w.numel()), name
        assert abs(_zeros(w) / w.numel() - sparsity) <= 0.01, name
        assert original[name][w == 0].abs().max() <= original[name][w != 0].abs().min(), name


def test_level_prune_global_on_unet_leaves_norms_and_buffers():
    model, _ = create("unet_small")
    randomize_norms(model)
    original = copy.deepcopy(model)
    level_prune(model, 0.5)
    weights = _prunable(model)
    assert any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    n = sum(w.numel() for w in weights.values())
    assert sum(_zeros(w) for w in weights.values()) == round(0.5 * n)
    pruned = {id(w) for w in weights.values()}
    for (name, p), q in zip(model.named_parameters(), original.parameters(), strict=True):
        if id(p) not in pruned:
            assert torch.equal(p, q), name
    for (name, b), c in zip(model.named_buffers(), original.buffers(), strict=True):
        assert torch.equal(b, c), name


def test_level_prune_counts_existing_zeros():
    model, _ = create("lenet5")
    with torch.no_grad():
        model.conv1.weight.view(-1)[:90] = 0  # 90 of 150 = 60%
    mask = model.conv1.weight == 0
    level_prune(model, 0.5, scope="local")
    assert torch.equal(model.conv1.weight == 0, mask)  # no extra zeros where 60% already are
    assert _zeros(model.conv2.weight) == round(0.5 * model.conv2.weight.numel())

    model, _ = create("lenet5")
    with torch.no_grad():
        model.conv1.weight.zero_()
    n = sum(w.numel() for w in _prunable(model).values())
    level_prune(model, 0.001)  # round(0.001 * n) = 62 < 150 zeros already: nothing to do
    assert sum(_zeros(w) for w in _prunable(model).values()) == 150
    level_prune(model, 0.5)
    assert sum(_zeros(w) for w in _prunable(model).values()) == round(0.5 * n)
    assert _zeros(model.conv1.weight) == 150


def test_level_prune_ties_are_exact_and_deterministic():
    signs = torch.tensor([1.0, -1.0]).repeat(10).view(5, 4)
    masks = []
    for _ in range(2):
        fc = nn.Linear(4, 5)
        with torch.no_grad():
            fc.weight.copy_(signs)
        level_prune(fc, 0.3, scope="local")
        assert _zeros(fc.weight) == 6
        masks.append(fc.weight == 0)
    assert torch.equal(masks[0], masks[1])
    assert masks[0].view(-1)[:6].all()  # ties go to the first elements


def test_level_prune_shared_weight_counted_once():
    torch.manual_seed(0)
    a, b, c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 8)
    b.weight = a.weight
    model = nn.Sequential(a, b, c, nn.Embedding(10, 4))
    embedding = model[3].weight.detach().clone()
    level_prune(model, 0.5)
    za, zc = _zeros(a.weight), _zeros(c.weight)
    assert za + zc == round(0.5 * (16 + 32))  # not 0.5 * (16 + 16 + 32)
    assert torch.equal(model[3].weight, embedding)
    level_prune(model, 0.5, scope="local")  # now half of each weight, zeros already there kept
    assert (_zeros(a.weight), _zeros(c.weight)) == (max(za, 8), max(zc, 16))
    assert torch.equal(model[3].weight, embedding)


# --- level_prune then slim: channels that became zero go ----------------------------------


def _conv_net(bias: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )


def test_level_prune_then_slim_removes_zeroed_filters():
    net = _conv_net(bias=False)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        net[0].weight[[1, 5]] *= 1e-3  # two filters far below the global threshold
    level_prune(net, 0.5)
    assert net[0].weight[[1, 5]].eq(0).all()
    want = net(x)
    slimmed = surgeon.slim(net, 0.0, x)
    # conv1 loses 2 filters (2*27), conv2 loses their input columns (6*2*9)
    assert count_params(slimmed) <= count_params(net) - 2 * 27 - 6 * 2 * 9
    assert_same(slimmed(x), want)


def test_slimmed_model_costs_what_metrics_predicts():
    """Zero two channels end to end (filters, biases, next conv's inputs): the dense cost of
    the slimmed model is the nonzero cost that metrics reads off the zeroed one."""
    net = _conv_net(bias=True)
    original = copy.deepcopy(net)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        net[0].weight[[1, 5]] = 0
        net[0].bias[[1, 5]] = 0
        net[2].weight[:, [1, 5]] = 0
    sparse = metrics(net, x, reference=original)
    slimmed = surgeon.slim(net, 0.0, x)
    assert_same(slimmed(x), net(x))
    dense = metrics(slimmed, x, reference=original)
    assert dense.params == dense.nonzero_params == sparse.nonzero_params
    assert dense.params == count_params(original) - 2 * (27 + 1) - 6 * 2 * 9
    assert dense.flops == dense.nonzero_flops == sparse.nonzero_flops
    assert dense.compression_ratio == pytest.approx(sparse.compression_ratio)
    assert dense.theoretical_speedup == pytest.approx(sparse.theoretical_speedup)


# --- errors and exports ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sparsity": 1.0}, r"sparsity=1\.0 is out of range.*0 <= sparsity < 1"),
        ({"sparsity": -0.1}, r"sparsity=-0\.1 is out of range"),
        ({"sparsity": math.nan}, r"sparsity=nan is out of range"),
        ({"sparsity": "0.5"}, r"sparsity='0\.5' is not a number"),
        ({"sparsity": True}, r"sparsity=True is not a number"),
        ({"scope": "layer"}, r"scope='layer': use 'global'.*or 'local'"),
        ({"model": "lenet5"}, r"model must be a torch\.nn\.Module, got str"),
        ({"model": nn.Sequential(nn.BatchNorm1d(3), nn.Embedding(4, 3))}, r"model .* no Conv"),
    ],
)
def test_level_prune_rejects_bad_input(kwargs, match):
    args = {"model": nn.Linear(3, 3), "sparsity": 0.5, **kwargs}
    with pytest.raises(SurgeonInputError, match=match) as info:
        level_prune(args.pop("model"), args.pop("sparsity"), **args)
    assert isinstance(info.value, ValueError)


def test_metrics_rejects_bad_input():
    x = torch.randn(1, 3)
    with pytest.raises(SurgeonInputError, match=r"model must be a torch\.nn\.Module, got NoneType"):
        metrics(None, x)
    with pytest.raises(SurgeonInputError, match=r"reference must be a torch\.nn\.Module, got str"):
        metrics(nn.Linear(3, 2), x, reference="original")


def test_package_exports_metrics_and_level_prune_as_functions():
    import surgeon.api  # noqa: F401 - loads every submodule slim needs

    net = _small_net()
    x = torch.randn(N, 1, H, W)
    assert surgeon.metrics is metrics and surgeon.level_prune is level_prune
    assert surgeon.metrics(net, x) == metrics(net, x)
    assert {"metrics", "level_prune", "Metrics"} <= set(cost_module.__all__)
