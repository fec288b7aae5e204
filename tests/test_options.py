"""SlimOptions: one frozen, self-validating value for every setting of a slimming."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import surgeon
from surgeon.errors import SurgeonInputError
from surgeon.models import create
from surgeon.options import SlimOptions


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ratio": 1.5}, r"ratio=1.5 is out of range"),
        ({"ratio": "0.5"}, r"ratio='0.5' is not a number"),
        ({"ratio": 0.5, "importance": "l3"}, r"importance='l3' is not a known criterion"),
        ({"ratio": 0.5, "importance": "taylor"}, r"needs data= and loss_fn="),
        ({"ratio": 0.5, "scope": "all"}, r"scope='all'"),
        ({"ratio": 0.5, "round_to": 0}, r"round_to=0"),
        ({"ratio": 0.5, "compensate": 1}, r"compensate=1: use True or False"),
        ({"ratio": 0.5, "max_group_ratio": 0}, r"max_group_ratio=0"),
        ({"ratio": 0.5, "ignore": 3}, r"ignore=3 is not a list"),
    ],
)
def test_validates_itself(kwargs, match):
    with pytest.raises(SurgeonInputError, match=match):
        SlimOptions(**kwargs)


def test_frozen_and_replace_validates_again():
    o = SlimOptions(0.5, ignore=["fc"])
    assert o.ignore == ("fc",) and o.ratio == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.ratio = 0.3  # type: ignore[misc]
    assert o.replace(ratio=0.25).ratio == 0.25 and o.ratio == 0.5
    with pytest.raises(SurgeonInputError, match="out of range"):
        o.replace(ratio=2)


def test_record_is_json():
    o = SlimOptions(0.5, scope="global", round_to=8, leaf_modules=[torch.nn.ReLU])
    rec = json.loads(json.dumps(o.to_record()))
    assert rec["scope"] == "global" and rec["round_to"] == 8
    assert rec["leaf_modules"] == ["torch.nn.modules.activation.ReLU"] and rec["data"] is False


def test_slim_takes_the_value_or_keywords_alike():
    m, x = create("lenet5")
    a = surgeon.slim(m, 0.5, x, scope="global", round_to=4)
    b = surgeon.slim(m, SlimOptions(0.5, scope="global", round_to=4), x)
    assert a.state_dict().keys() == b.state_dict().keys()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    with pytest.raises(SurgeonInputError, match=r"\['scope'\] were given beside it"):
        surgeon.slim(m, SlimOptions(0.5), x, scope="global")


def test_prune_iteratively_names_an_unknown_setting():
    m, x = create("lenet5")
    with pytest.raises(SurgeonInputError, match=r"unknown setting\(s\) \['scop'\]"):
        surgeon.prune_iteratively(m, 0.5, x, steps=1, scop="global")
