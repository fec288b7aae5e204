"""The slim model is the user's own model (surgeon/adopt.py): same class, attributes and
state-dict names where its own forward verifiably computes what the slim graph computes; the
graph form, with the reason, where it does not."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import surgeon
from surgeon.errors import SurgeonFixedSizeError, SurgeonPassError
from surgeon.models import ZOO, create
from tests.helpers import assert_same, randomize_norms

# every zoo model, on inputs small enough for CI (ViT-Ti keeps its 224 x 224 patch grid);
# LeNet-5 flattens with a literal on purpose (``view(N, 16 * 5 * 5)``): the graph form
SIDES = {"vit_tiny": 224, "digits_cnn": 16}
OWN_CLASS = sorted(set(ZOO) - {"lenet5"})


@pytest.mark.parametrize("name", OWN_CLASS)
def test_every_zoo_model_comes_back_as_its_own_class(name):
    side = SIDES.get(name, 64)
    channels = create(name)[1].shape[1]
    model, x = create(name, input_shape=(1, channels, side, side))
    randomize_norms(model)
    keys = list(model.state_dict())
    # compensation off: the graph form would add biases the module form does not (below)
    slim = surgeon.slim(model, 0.5, x, compensate=False)
    graph = surgeon.slim(model, 0.5, x, returns="graph", compensate=False)
    assert type(slim) is type(model) and isinstance(graph, fx.GraphModule)
    assert slim.meta["surgeon.plan"]["form"] == "module"
    assert list(slim.state_dict()) == keys  # the original's names, in order
    with torch.no_grad():
        assert_same(slim(x), graph(x), 1e-5)
    assert list(model.state_dict()) == keys and all(  # the input model is not mutated
        model.state_dict()[k].shape == v.shape for k, v in create(name)[0].state_dict().items()
    )


def test_compensation_adds_no_state_dict_key_to_the_module_form():
    # DenseNet's conv2 has no bias and feeds a concatenation, not a batch norm: the graph form
    # compensates into a new bias, the module form keeps the original's names (those convs are
    # then not compensated; a conv followed by its batch norm still is, in running_mean)
    model, x = create("densenet121", input_shape=(1, 3, 64, 64))
    randomize_norms(model)
    keys = list(model.state_dict())
    slim = surgeon.slim(model, 0.5, x)
    graph = surgeon.slim(model, 0.5, x, returns="graph")
    assert type(slim) is type(model) and list(slim.state_dict()) == keys
    assert "features.denseblock1.layers.0.conv2.bias" in graph.state_dict()
    assert slim.features.denseblock1.layers[0].conv2.bias is None
    moved = slim.features.denseblock1.layers[0].norm2.running_mean
    cut = surgeon.slim(model, 0.5, x, compensate=False).features.denseblock1.layers[0].norm2
    assert not torch.allclose(moved, cut.running_mean)  # conv1 -> norm2: compensated


def test_heads_pruned_whole_set_the_head_count_attribute():
    model, x = create("vit_tiny")
    slim = surgeon.slim(model, 0.5, x)
    assert slim.blocks[0].attn.num_heads == 2 and slim.blocks[0].attn.head_dim == 64
    assert "blocks.0.attn.num_heads: 3 -> 2" in slim.meta["surgeon.plan"]["sized"]


class SizedFromWidth(nn.Module):
    """Swin's window attention in small: the head width is read off the embedding
    (``C // num_heads``), and the merged heads are reshaped back to ``C``."""

    def __init__(self, width: int = 48, num_heads: int = 3) -> None:
        super().__init__()
        self.stem = nn.Linear(8, width)
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.num_heads = num_heads
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.norm(x)
        B, N, C = y.shape
        qkv = self.qkv(y).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q * (C // self.num_heads) ** -0.5) @ k.transpose(-2, -1)
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.head((x + self.proj(y)).mean(1))


class WithTorchMHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 64)
        self.enc = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.inp(x)).mean(1))


@pytest.mark.parametrize(
    "net, ratio, width, heads",
    [(SizedFromWidth, 0.5, 32, 2), (WithTorchMHA, 0.3, 48, 3)],
    ids=["head-width-read-off-the-embedding", "nn.MultiheadAttention"],
)
def test_widths_the_code_ties_prune_in_step(net, ratio, width, heads):
    # 3 heads lose 1 (2 kept, 32 wide), where the embedding alone would keep 24 of 48: the
    # forward's C // num_heads only gives the head width back when the embedding keeps 32
    torch.manual_seed(0)
    model, x = net().eval(), torch.randn(2, 7, 8 if net is SizedFromWidth else 16)
    slim = surgeon.slim(model, ratio, x)
    graph = surgeon.slim(model, ratio, x, returns="graph")
    assert type(slim) is net, slim.meta["surgeon.plan"]["form_reason"]
    attn = slim if net is SizedFromWidth else slim.enc.self_attn
    assert attn.num_heads == heads
    proj = slim.proj if net is SizedFromWidth else attn.out_proj
    assert proj.in_features == proj.out_features == width  # never more removed than asked
    with torch.no_grad():
        assert_same(slim(x), graph(x), 1e-5)


def test_lenet_with_its_literal_flatten_comes_back_as_the_graph():
    model, x = create("lenet5")
    slim = surgeon.slim(model, 0.5, x)
    assert isinstance(slim, fx.GraphModule)
    assert "shape '[1, 400]' is invalid" in slim.meta["surgeon.plan"]["form_reason"]


def test_the_returned_module_fine_tunes_and_compiles():
    model, x = create("digits_cnn")
    slim = surgeon.slim(model, 0.5, x)
    before = [p.detach().clone() for p in slim.parameters()]
    opt = torch.optim.SGD(slim.parameters(), lr=0.1)
    slim.train()
    assert type(slim) is type(model)
    slim(torch.randn(4, 1, 16, 16)).pow(2).mean().backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, slim.parameters(), strict=True))
    slim.eval()
    compiled = torch.compile(slim, backend="aot_eager")
    with torch.no_grad():
        assert_same(compiled(x), slim(x), 1e-5)


def test_save_and_load_keep_the_form(tmp_path):
    model, x = create("resnet18", input_shape=(1, 3, 64, 64))
    for returns in ("auto", "graph"):
        slim = surgeon.slim(model, 0.5, x, returns=returns)
        path = surgeon.save(slim, tmp_path / f"{returns}.surgeon")
        back = surgeon.load(path, create("resnet18")[0])
        assert isinstance(back, fx.GraphModule) == (returns == "graph")
        assert returns == "graph" or type(back) is type(model)
        assert list(back.state_dict()) == list(slim.state_dict())
        with torch.no_grad():
            assert_same(back(x), slim(x), 1e-6)


def test_inplace_returns_the_model_itself():
    model, x = create("resnet18", input_shape=(1, 3, 64, 64))
    slim = surgeon.slim(model, 0.5, x, inplace=True)
    assert slim is model and model.conv1.out_channels == 32


class LiteralWidth(nn.Module):
    """A literal channel count in forward (``view(-1, 16)``): only the graph can be rewritten."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 16)
        self.b = nn.Linear(16, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).view(-1, 16))


class OwnMeta(nn.Module):
    meta = "the user's own attribute"

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 16)
        self.b = nn.Linear(16, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize(
    "net, why",
    [
        (LiteralWidth, "its forward fails once resized"),
        (OwnMeta, "has an attribute 'meta' of its own"),
    ],
)
def test_fallbacks_give_the_graph_with_the_reason(net, why, caplog):
    torch.manual_seed(0)
    model, x = net().eval(), torch.randn(3, 4)
    with caplog.at_level(logging.WARNING):
        slim = surgeon.slim(model, 0.5, x)
    assert isinstance(slim, fx.GraphModule) and slim.a.out_features == 8
    plan = slim.meta["surgeon.plan"]
    assert plan["form"] == "graph" and why in plan["form_reason"]
    assert why in caplog.text
    with pytest.raises(SurgeonPassError, match=why):
        surgeon.slim(model, 0.5, x, returns="module")


class WrongValues(nn.Module):
    """A forward that runs once resized but computes something else: it divides by the width
    it reads, where the graph keeps dividing by the original width."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 16)
        self.b = nn.Linear(16, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) + h.sum(-1, keepdim=True) / h.shape[-1]


def test_a_forward_that_computes_something_else_is_not_given_back():
    torch.manual_seed(0)
    model, x = WrongValues().eval(), torch.randn(3, 4)
    slim = surgeon.slim(model, 0.5, x)
    assert isinstance(slim, fx.GraphModule) and slim.a.out_features == 8
    assert "differs from the slim graph's" in slim.meta["surgeon.plan"]["form_reason"]


def test_returns_is_validated():
    model, x = create("lenet5")
    with pytest.raises(surgeon.SurgeonInputError, match="returns='modul'"):
        surgeon.slim(copy.deepcopy(model), 0.5, x, returns="modul")


class SizedAndFixed(nn.Module):
    """Branches on a size (captured specialised) and flattens to a literal width its own class
    cannot follow once the conv narrows (the graph form comes back)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16 * 2 * 2, 5)

    def forward(self, x):
        if x.shape[-1] > 4:
            x = x * 2
        h = self.pool(torch.relu(self.conv(x)))
        return self.fc(h.reshape(-1, 16 * 2 * 2))


class SizedFlatten(SizedAndFixed):
    def forward(self, x):
        if x.shape[-1] > 4:
            x = x * 2
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def test_a_graph_fixed_to_the_example_sizes_is_an_error_unless_asked_for():
    torch.manual_seed(0)
    net, x = SizedAndFixed().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(
        SurgeonFixedSizeError, match=r"fixed to the example inputs' sizes \(2x3x8x8\)"
    ):
        surgeon.slim(net, 0.5, x)
    with pytest.warns(UserWarning, match="if x.shape\\[-1\\] > 4"):
        graph = surgeon.slim(net, 0.5, x, returns="graph")
    assert isinstance(graph, torch.fx.GraphModule) and graph.fc.in_features == 32
    assert graph.meta["surgeon.plan"]["specialised"]["inputs"]["shape"] == [2, 3, 8, 8]
    with torch.no_grad():
        assert graph(x).shape == (2, 5)
    # with inplace the model is cut already: the graph comes back, with the warning
    with pytest.warns(UserWarning, match="fixed to the example inputs' sizes"):
        cut = surgeon.slim(copy.deepcopy(net), 0.5, x, inplace=True)
    assert isinstance(cut, torch.fx.GraphModule)
    # a slim graph slimmed again keeps the record of what its capture specialised
    again = surgeon.slim(graph, 0.2, x)
    assert again.meta["surgeon.plan"]["specialised"] == graph.meta["surgeon.plan"]["specialised"]
    # one that branches on sizes but comes back as its own class runs its own forward
    own = surgeon.slim(SizedFlatten().eval(), 0.5, x)
    assert isinstance(own, SizedFlatten) and own.fc.in_features == 32
    with torch.no_grad():
        assert own(torch.randn(3, 3, 4, 4)).shape == (3, 5)  # another batch and size
