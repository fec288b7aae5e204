"""Channel spaces and what rules record about them (surgeon/spaces.py): a parameter slice's
tensor index, a reshape's factor digits and the constants they carry, the shapes of a traced
node's values (one space name per tuple element), and the RuleContext a rule reads a node
through and records its facts with."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from surgeon.spaces import FactorSite, ParamSlice, RuleContext, meta_shapes


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)

    def forward(self, x):
        a, b = torch.split(torch.relu(self.conv(x)), 2, dim=1)[:2]
        return a.view(2, -1) + b.flatten(1), x.size(0)


def _traced() -> tuple[fx.GraphModule, dict[str, fx.Node], dict[str, tuple[int, ...]]]:
    gm = fx.symbolic_trace(Net())
    ShapeProp(gm).propagate(torch.randn(2, 3, 4, 4))
    nodes = {n.name: n for n in gm.graph.nodes}
    shapes = dict(s for n in gm.graph.nodes for s in meta_shapes(n))
    return gm, nodes, shapes


def test_a_param_slice_maps_space_indices_to_tensor_indices():
    identity = ParamSlice("conv", "weight", 0, ("conv", 1), None, "producer")
    assert identity.tensor_index(4).tolist() == [0, 1, 2, 3]
    offset = ParamSlice("fc", "weight", 1, ("cat", 1), np.array([4, 5, 6]), "consumer")
    assert offset.tensor_index(3).tolist() == [4, 5, 6]


def test_a_factor_digit_is_the_row_major_digit_of_each_index():
    site = FactorSite(("v", 1), [("v", 1), ("v", 2)], [2, 3], "split", "view")
    assert site.digit(0).tolist() == [0, 0, 0, 1, 1, 1]
    assert site.digit(1).tolist() == [0, 1, 2, 0, 1, 2]
    three = FactorSite(("v", 1), [], [2, 3, 4], "split", "view")
    assert three.digit(1).tolist() == ([0] * 4 + [1] * 4 + [2] * 4) * 2


def test_a_split_carrier_is_constant_where_every_other_digit_agrees():
    whole, outer, inner = ("x", 1), ("v", 1), ("v", 2)
    values = {whole: np.array([5.0, 5.0, 5.0, 1.0, 2.0, 3.0])}
    site = FactorSite(whole, [outer, inner], [2, 3], "split", "view")
    assert site.constants(values.__getitem__) == {}  # no carrier: nothing carried
    site.carrier = 0
    (got,) = site.constants(values.__getitem__).items()
    assert got[0] == outer
    np.testing.assert_array_equal(got[1], [5.0, np.nan])  # the second row is not one value
    site.carrier = 1
    values[whole] = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(site.constants(values.__getitem__)[inner], [1.0, 2.0, 3.0])


def test_a_merge_spreads_the_carriers_constants_over_the_whole_dim():
    whole, outer, inner = ("flat", 1), ("x", 1), ("x", 2)
    site = FactorSite(whole, [outer, inner], [2, 3], "merge", "flatten", carrier=1)
    got = site.constants({inner: np.array([7.0, 8.0, 9.0])}.__getitem__)
    assert list(got) == [whole]
    assert got[whole].tolist() == [7.0, 8.0, 9.0, 7.0, 8.0, 9.0]


def test_meta_shapes_name_one_space_per_tuple_element():
    gm, nodes, shapes = _traced()
    assert meta_shapes(nodes["conv"]) == [("conv", (2, 6, 4, 4))]
    assert meta_shapes(nodes["split"]) == [
        ("split#0", (2, 2, 4, 4)),
        ("split#1", (2, 2, 4, 4)),
        ("split#2", (2, 2, 4, 4)),
    ]
    assert shapes["add"] == (2, 32)
    assert meta_shapes(fx.Graph().placeholder("fresh")) == []  # never shape-propagated


def test_the_rule_context_reads_the_node_its_module_args_and_shapes():
    gm, nodes, shapes = _traced()
    conv = RuleContext(gm, nodes["conv"], shapes)
    assert conv.module is gm.conv and conv.out == "conv" and conv.out_shape == (2, 6, 4, 4)
    assert conv.describe_name() == "Conv2d 'conv'"
    assert [n.name for n in conv.tensor_inputs()] == ["x"]
    split = RuleContext(gm, nodes["split"], shapes)
    assert split.module is None
    assert split.arg(1, "split_size_or_sections") == 2
    assert split.arg(2, "dim") == 1  # given as a keyword
    assert split.arg(3, "missing", default=7) == 7
    assert split.shape(nodes["relu"]) == (2, 6, 4, 4) and split.shape("conv") == (2, 6, 4, 4)
    assert split.shape(3) is None and split.out_shape is None  # a tuple has no one shape
    assert split.describe_name() == "split() at node 'split'"
    assert RuleContext(gm, nodes["view"], shapes).describe_name() == (
        "method .view() at node 'view'"
    )


def test_whole_groups_follows_grouped_and_the_nodes_named_whole():
    gm, nodes, shapes = _traced()
    conv = nodes["conv"]
    assert RuleContext(gm, conv, shapes, grouped="groups").whole_groups(4)
    assert not RuleContext(gm, conv, shapes, grouped="offsets").whole_groups(4)
    assert not RuleContext(gm, conv, shapes, grouped="anything else").whole_groups(4)
    widths = RuleContext(gm, conv, shapes, grouped=(4, 8))
    assert widths.whole_groups(4) and widths.whole_groups(8) and not widths.whole_groups(2)
    named = RuleContext(gm, conv, shapes, grouped=(4,), whole={"conv"})
    assert named.whole_groups(2)  # named whole: the widths no longer decide
    assert not RuleContext(gm, conv, shapes, grouped=(4,), whole={"other"}).whole_groups(4)


def test_the_rule_context_records_each_fact_and_the_spaces_it_describes():
    gm, nodes, shapes = _traced()
    ctx = RuleContext(gm, nodes["conv"], shapes)
    ia, ib = np.array([0, 1]), np.array([2, 3])
    ctx.couple(("x", 1), ("conv", 1), ia, ib)
    ctx.identity(("conv", 0), ("x", 0))
    ctx.block(("conv", 2), "a size read")
    ctx.produce(("conv", 1))
    ctx.reads_metadata(("x", 3))
    ctx.param("conv", "weight", 0, ("conv", 1))
    ctx.param("conv", "weight", 1, ("x", 1), index=ia, role="consumer")
    ctx.role(("w", 0), "norm")
    ctx.sink(("x", 1), "contract", out_space=("conv", 1))
    site = FactorSite(("conv", 1), [("f", 1), ("f", 2)], [2, 3], "split", "view")
    ctx.factor(site)
    ctx.tag(("conv", 1), "residual")
    ctx.transfer(dict)
    ctx.on_resize(print)
    record = ctx.record
    (a, b, got_ia, got_ib), identity = record.couplings
    assert (a, b, got_ia.tolist(), got_ib.tolist()) == (("x", 1), ("conv", 1), [0, 1], [2, 3])
    assert identity == (("conv", 0), ("x", 0), None, None)
    assert record.blocks == [(("conv", 2), "a size read")]
    assert [(p.owner, p.name, p.dim, p.space, p.role) for p in record.params] == [
        ("conv", "weight", 0, ("conv", 1), "producer"),
        ("conv", "weight", 1, ("x", 1), "consumer"),
    ]
    assert record.params[1].index is ia
    assert record.roles == [(("w", 0), "norm")]
    (sink,) = record.sinks
    assert (sink.space, sink.kind, sink.node, sink.owner) == (("x", 1), "contract", "conv", "conv")
    assert sink.out_space == ("conv", 1) and sink.ignores is None and sink.fold is None
    assert record.factors == [site] and record.tags == [(("conv", 1), "residual")]
    assert record.const_fn is dict and record.resize_fns == [print]
    assert record.described == {
        ("x", 0),
        ("x", 1),
        ("x", 3),
        ("conv", 0),
        ("conv", 1),
        ("conv", 2),
        ("f", 1),
        ("f", 2),
    }
    # a sink of a function node has no owning module
    relu = RuleContext(gm, nodes["relu"], shapes)
    relu.sink(("relu", 1), "stat")
    assert relu.record.sinks[0].owner is None and relu.record.sinks[0].node == "relu"
