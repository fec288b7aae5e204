"""Copies of a model (surgeon/copying.py): the graph form still holds the parameters and
buffers forward never reads; a model that cannot be deep-copied (the deprecated hook-based
weight_norm) is named with the way out."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import surgeon
from surgeon.cost import count_params
from surgeon.errors import SurgeonInputError
from tests.helpers import unused_head_net, weight_norm_net

X = torch.randn(2, 3, 12, 12)


def test_the_graph_form_keeps_parameters_and_buffers_forward_never_reads(tmp_path):
    model = unused_head_net()
    graph = surgeon.slim(model, 0.0, X, returns="graph")
    assert isinstance(graph, fx.GraphModule)
    assert list(graph.state_dict()) == list(model.state_dict())  # aux.*, unused_table
    assert count_params(graph) == count_params(model)
    slim = surgeon.slim(model, 0.5, X, returns="graph")
    assert "aux.0.weight" in slim.state_dict() and "unused_table" in slim.state_dict()
    surgeon.save(slim, tmp_path / "g.surgeon")
    back = surgeon.load(tmp_path / "g.surgeon", unused_head_net())
    assert list(back.state_dict()) == list(slim.state_dict())


def test_old_style_weight_norm_is_named_with_the_way_out():
    model = weight_norm_net("weight")
    model[2] = torch.nn.utils.weight_norm(nn.Conv2d(8, 8, 3, padding=1))
    model(X)  # the hook's computed weight cannot be deep-copied
    with pytest.raises(SurgeonInputError, match="parametrizations.weight_norm"):
        surgeon.slim(model, 0.5, X)
    slim = surgeon.slim(model, 0.5, X, inplace=True)  # no copy: the hook's conv stays whole
    assert slim[2].weight_v.shape == (8, 8, 3, 3)
