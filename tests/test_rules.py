"""Each rule on a small network: exactness with hand-zeroed channels, and slimming at 0.5."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import surgeon
from surgeon.cost import count_params
from tests.helpers import assert_same, randomize_norms, zero_thirds


class CatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 9, 1)
        self.bn = nn.BatchNorm2d(15)
        self.head = nn.Conv2d(15, 4, 3, padding=1)

    def forward(self, x):
        return self.head(F.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1))))


class SplitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.left = nn.Conv2d(4, 4, 3, padding=1)
        self.right = nn.Conv2d(8, 8, 1)
        self.tail = nn.Conv2d(12, 8, 1)
        self.pair = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        a, b = torch.split(y, [4, 8], dim=1)
        y = torch.cat((self.left(a), self.right(b)), 1)
        h1, h2 = self.tail(y).chunk(2, dim=1)
        return self.pair(torch.cat([h1 * h2, h1 + h2], dim=1))


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc1 = nn.Conv2d(16, 4, 1)
        self.fc2 = nn.Conv2d(4, 16, 1)
        self.out = nn.Conv2d(16, 5, 3)

    def forward(self, x):
        y = F.silu(self.bn(self.conv(x)))
        s = y.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return self.out(y * s)


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(16, 32, 3, padding=1, groups=16)  # depthwise, multiplier 2
        self.bn = nn.BatchNorm2d(32)
        self.gn = nn.GroupNorm(4, 32)
        self.head = nn.Conv2d(32, 6, 1)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = F.relu6(self.grouped(y))
        y = self.gn(F.hardswish(self.bn(self.dw(y))))
        return self.head(y)


class ChannelsLast(nn.Module):
    """Conv, then a channels-last LayerNorm / MLP through permute, then back."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.ln = nn.LayerNorm(12)
        self.fc1 = nn.Linear(12, 24)
        self.fc2 = nn.Linear(24, 12)
        self.gamma = nn.Parameter(torch.rand(12) + 0.5)
        self.head = nn.Conv2d(12, 3, 1)

    def forward(self, x):
        y = self.conv(x)
        z = y.permute(0, 2, 3, 1)
        z = self.fc2(F.gelu(self.fc1(self.ln(z))))
        z = z * self.gamma
        return self.head(y + z.permute(0, 3, 1, 2))


class FlattenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.flat = nn.Flatten()
        self.fc = nn.Linear(32, 16)
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(16, 12)
        self.fc3 = nn.Linear(12, 3)

    def forward(self, x):
        y = self.flat(self.pool(F.max_pool2d(torch.relu(self.conv(x)), 2)))
        y = self.drop(F.leaky_relu(self.fc(y), 0.1))
        y = self.fc2(y).reshape(-1, 3, 4).transpose(1, 2).reshape(y.shape[0], 12)
        return self.fc3(y.sigmoid())


class UpNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.skip = nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        u = self.up(torch.tanh(self.down(x)))
        u2 = F.interpolate(self.down(x), scale_factor=2.0, mode="nearest")
        return self.head(torch.cat([u, self.skip(x)], 1)) + u2[:, :2]


class TokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.fc = nn.Linear(16, 32)
        self.ln = nn.LayerNorm(32)
        self.out = nn.Linear(32, 5)

    def forward(self, ids):
        h = self.ln(F.relu(self.fc(self.emb(ids))))
        att = torch.softmax(h @ h.transpose(1, 2), dim=-1)
        return self.out(att @ h).mean(1)


class Seq1d3d(nn.Module):
    """Conv1d / BatchNorm1d on a sequence and Conv3d / BatchNorm3d on a volume."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm1d(8)
        self.c1b = nn.Conv1d(8, 8, 3, padding=1, groups=8)
        self.c3 = nn.Conv3d(3, 6, 3, padding=1)
        self.b3 = nn.BatchNorm3d(6)
        self.p3 = nn.AdaptiveAvgPool3d(1)
        self.fc_in = nn.Linear(8 + 6, 10)
        self.bn_fc = nn.BatchNorm1d(10)
        self.fc = nn.Linear(10, 2)

    def forward(self, x):
        seq, vol = x[:, :, :, 0, 0], x
        a = F.avg_pool1d(self.c1b(F.elu(self.b1(self.c1(seq)))), 2).amax(-1)
        b = torch.flatten(self.p3(F.relu(self.b3(self.c3(vol)))), 1)
        return self.fc(F.relu(self.bn_fc(self.fc_in(torch.cat([a, b], 1)))))


NETS = {
    "conv1d_conv3d": (Seq1d3d, lambda: torch.randn(2, 3, 4, 4, 4)),
    "cat": (CatNet, lambda: torch.randn(2, 3, 8, 8)),
    "split_chunk": (SplitNet, lambda: torch.randn(2, 3, 8, 8)),
    "se_gate": (SENet, lambda: torch.randn(2, 3, 8, 8)),
    "grouped_depthwise": (GroupedNet, lambda: torch.randn(2, 3, 8, 8)),
    "channels_last": (ChannelsLast, lambda: torch.randn(2, 3, 6, 6)),
    "flatten_view": (FlattenNet, lambda: torch.randn(2, 3, 16, 16)),
    "upsample": (UpNet, lambda: torch.randn(2, 3, 8, 8)),
    "tokens": (TokenNet, lambda: torch.randint(0, 20, (2, 7))),
}


def _build(name):
    torch.manual_seed(0)
    cls, make_x = NETS[name]
    net = cls().eval()
    randomize_norms(net)
    return net, make_x()


@pytest.mark.parametrize("name", list(NETS))
def test_exactness(name):
    net, x = _build(name)
    graph = surgeon.analyze(net, x)
    assert graph.prunable_groups(), name
    zeroed = copy.deepcopy(net)
    zero_thirds(zeroed, graph)
    with torch.no_grad():
        want = zeroed(x)
    slim = surgeon.slim(zeroed, 0.0, x)
    with torch.no_grad():
        assert_same(slim(x), want)
    assert count_params(slim) < count_params(net), name


@pytest.mark.parametrize("name", list(NETS))
def test_half(name):
    net, x = _build(name)
    slim = surgeon.slim(net, 0.5, x)
    with torch.no_grad():
        ref = net(x)
    out = slim(x)
    assert out.shape == ref.shape
    out.sum().backward()
    assert count_params(slim) < count_params(net)
    again = surgeon.slim(net, 0.5, x)
    for (k, a), (_, b) in zip(slim.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_cat_keeps_one_channel_per_input():
    net, x = _build("cat")
    slim = surgeon.slim(net, 0.9, x)
    assert slim.a.out_channels >= 1 and slim.b.out_channels >= 1
    assert (
        slim.a.out_channels + slim.b.out_channels == slim.bn.num_features == slim.head.in_channels
    )
    assert slim(x).shape == (2, 4, 8, 8)


def test_split_sizes_and_chunks_are_rewritten():
    net, x = _build("split_chunk")
    slim = surgeon.slim(net, 0.5, x)
    assert slim.left.in_channels + slim.right.in_channels == slim.stem.out_channels
    assert slim.tail.out_channels % 2 == 0  # chunk(2) keeps its halves equal
    assert slim.pair.in_channels == slim.tail.out_channels


def test_grouped_conv_keeps_groups_equal():
    net, x = _build("grouped_depthwise")
    slim = surgeon.slim(net, 0.5, x)
    g = slim.grouped
    assert g.groups == 4 and g.in_channels % 4 == 0 and g.out_channels % 4 == 0
    assert slim.dw.groups == slim.dw.in_channels and slim.dw.out_channels == 2 * slim.dw.in_channels
    assert slim.gn.num_channels % 4 == 0


def test_layer_scale_parameter_is_sliced():
    net, x = _build("channels_last")
    slim = surgeon.slim(net, 0.5, x)
    assert slim.gamma.shape == (slim.conv.out_channels,) == (6,)
    assert slim.ln.normalized_shape == (6,)


class ConstChain(nn.Module):
    def __init__(self, pad):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=pad)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.conv2(F.relu(self.bn(self.conv1(x))))
        return self.fc(F.relu(y).mean((2, 3)))


@pytest.mark.parametrize("pad", [0, 1])
def test_constant_channel_is_folded_only_where_exact(pad):
    """A BN with zero scale and a shift gives a constant channel: it is folded into the next
    conv's bias when that conv has no padding, and kept when padding would make it wrong."""
    torch.manual_seed(0)
    net = ConstChain(pad).eval()
    randomize_norms(net)
    with torch.no_grad():
        net.bn.weight[[1, 4]] = 0  # a zero scale: the channel is the shift, in train and eval mode
        net.bn.bias[[1, 4]] = torch.tensor([0.7, 1.3])
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = net(x)
    slim = surgeon.slim(net, 0.0, x)
    with torch.no_grad():
        assert_same(slim(x), want)
    assert slim.conv1.out_channels == (4 if pad == 0 else 6)


def test_consumer_that_ignores_a_channel_removes_it():
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        net[2].weight[:, [0, 5]] = 0
    x = torch.randn(4, 5)
    with torch.no_grad():
        want = net(x)
    slim = surgeon.slim(net, 0.0, x)
    assert slim.get_submodule("0").out_features == 6
    with torch.no_grad():
        assert_same(slim(x), want)


def test_removal_cascades_through_dead_consumers():
    """conv2's filter 0 reads only channels that conv1 loses: it becomes its bias, a constant,
    and goes too (folded into the Linear)."""
    net = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.Conv2d(4, 3, 1), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)
    )
    with torch.no_grad():
        net[0].weight[[0, 1]] = 0
        net[0].bias[[0, 1]] = 0
        net[1].weight[0, 2:] = 0
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        want = net(x)
    slim = surgeon.slim(net, 0.0, x)
    assert slim.get_submodule("0").out_channels == 2
    assert slim.get_submodule("1").out_channels == 2
    with torch.no_grad():
        assert_same(slim(x), want)


def test_train_mode_model_slims():
    net, x = _build("se_gate")
    net.train()
    slim = surgeon.slim(net, 0.5, x)
    assert slim.training
    slim(x).sum().backward()


class ShuffleNet(nn.Module):
    """chunk + channel shuffle through view / transpose / view, as in ShuffleNetV2."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        a, b = x.chunk(2, dim=1)
        x = torch.cat((a, torch.relu(self.branch(b))), dim=1)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        return self.head(x)


class Attention(nn.Module):
    def __init__(self, dim=24, heads=3):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 5, dim))
        self.ln = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        b, n, c = x.shape
        x = torch.cat([self.cls.expand(b, -1, -1), x], dim=1) + self.pos
        qkv = (
            self.qkv(self.ln(x))
            .reshape(b, n + 1, 3, self.num_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv.unbind(0)
        att = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, n + 1, c))
        x = x + self.fc2(F.gelu(self.fc1(self.ln(x))))
        return self.head(x[:, 0])


def test_channel_shuffle_is_pruned_consistently():
    torch.manual_seed(0)
    net, x = ShuffleNet().eval(), torch.randn(2, 3, 8, 8)
    graph = surgeon.analyze(net, x)
    (g,) = [g for g in graph.groups if any(p.owner == "stem" and p.dim == 0 for p in g.params)]
    assert g.prunable, g.reasons
    zeroed = copy.deepcopy(net)
    zero_thirds(zeroed, graph)
    with torch.no_grad():
        want = zeroed(x)
    slim = surgeon.slim(zeroed, 0.0, x)
    with torch.no_grad():
        assert_same(slim(x), want)
    assert slim.stem.out_channels < 16
    half = surgeon.slim(net, 0.5, x)
    assert half.stem.out_channels == 8 and half.head.in_channels == 8
    assert half(x).shape == (2, 4, 8, 8)


def test_attention_heads_are_pruned_across_q_k_v_and_proj():
    torch.manual_seed(0)
    net, x = Attention().eval(), torch.randn(2, 3, 8, 8)
    graph = surgeon.analyze(net, x)
    (g,) = [g for g in graph.groups if any(p.owner == "qkv" and p.dim == 0 for p in g.params)]
    assert g.prunable, g.reasons
    assert g.n_classes == 3  # whole heads: q, k and v of a head go together
    (emb,) = [g for g in graph.groups if any(p.owner == "patch" and p.dim == 0 for p in g.params)]
    assert emb.prunable, emb.reasons  # the embedding width, through cls cat, pos add, LN, residuals
    slim = surgeon.slim(net, 0.5, x)
    assert slim.qkv.out_features == 3 * 16 and slim.proj.in_features == 16
    assert (
        slim.patch.out_channels == 12
        and slim.cls.shape == (1, 1, 12)
        and slim.pos.shape == (1, 5, 12)
    )
    assert slim.fc1.out_features == 24
    out = slim(x)
    assert out.shape == (2, 5)
    out.sum().backward()
