"""What a user names in a model (surgeon/names.py): ``ignore`` and ``leaf_modules`` by object,
qualified name or (leaves) class, resolved to names and types that still match in a copy of
the model; a name the model lacks is refused with the option at fault and the names it has
(did you mean ...?)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import surgeon
from surgeon.errors import SurgeonInputError
from surgeon.names import leaf_name, resolve_ignore, resolve_leaves
from tests.helpers import ConvBN, unused_head_net

X = torch.randn(2, 3, 12, 12)

# the submodules of UnusedHeadNet, in order: a, inner, inner.conv, inner.bn, b, head, aux,
# aux.0, aux.1
NAMES_SUGGESTED = "give a qualified name such as 'a', 'inner', 'inner.conv' and 6 more"


def test_ignore_takes_names_and_instances_as_names_without_repeats():
    model = unused_head_net()
    got = resolve_ignore(model, ["head", model.inner.conv, model.head, "aux.0", "inner.conv"])
    assert got == ("head", "inner.conv", "aux.0")
    assert resolve_ignore(model, []) == ()


def test_an_ignored_name_the_model_lacks_is_refused_with_what_was_meant():
    with pytest.raises(SurgeonInputError) as info:
        resolve_ignore(unused_head_net(), ["heda"])
    assert info.value.option == "ignore"
    assert str(info.value) == (
        "ignore names 'heda', which is not a submodule of the UnusedHeadNet (did you mean "
        f"'head'?); {NAMES_SUGGESTED}"
    )
    with pytest.raises(SurgeonInputError, match="'inner.conv' or 'inner.bn' or 'inner'"):
        resolve_ignore(unused_head_net(), ["inner.cnv"])  # at most three guesses, best first


def test_an_ignored_module_of_another_model_is_refused():
    with pytest.raises(SurgeonInputError) as info:
        resolve_ignore(unused_head_net(), [nn.Linear(16, 4)])
    assert info.value.option == "ignore"
    assert str(info.value).startswith(
        "ignore holds Linear, which is not a submodule of the UnusedHeadNet"
    )


def test_leaves_are_types_names_instances_and_class_names():
    model = unused_head_net()
    got = resolve_leaves(
        model,
        [
            nn.BatchNorm1d,  # a type stays a type
            model.inner,  # an instance becomes its name
            "aux.0",  # a qualified name stays
            "ConvBN",  # a class name becomes the class
            "tests.helpers.ConvBN",  # so does the full path (the same class: once)
            "Linear",
        ],
    )
    assert got == (nn.BatchNorm1d, "inner", "aux.0", ConvBN, nn.Linear)
    assert leaf_name(ConvBN) == leaf_name(model.inner) == "tests.helpers.ConvBN"
    assert leaf_name("inner.conv") == "inner.conv"


def _block_class() -> type[nn.Module]:
    """A new class called ``Block`` at each call."""

    class Block(nn.Module):
        def forward(self, x):
            return x

    return Block


def test_a_class_name_two_classes_share_is_refused_with_both_paths():
    model = nn.Sequential(_block_class()(), _block_class()())
    with pytest.raises(SurgeonInputError, match="which is 2 classes of the Sequential") as info:
        resolve_leaves(model, ["Block"])
    assert info.value.option == "leaf_modules"
    assert str(info.value).count(f"{__name__}._block_class.<locals>.Block") == 2
    assert resolve_leaves(model, [type(model[0])]) == (type(model[0]),)  # a type is exact


def test_a_leaf_name_the_model_lacks_is_refused_with_what_was_meant():
    with pytest.raises(SurgeonInputError) as info:
        resolve_leaves(unused_head_net(), ["ConvBn"])
    assert info.value.option == "leaf_modules"
    assert str(info.value) == (
        "leaf_modules names 'ConvBn', which is neither a submodule of the UnusedHeadNet nor the "
        "class of one (did you mean 'ConvBN' or 'Conv2d'?); give a qualified name ('a', "
        "'inner', 'inner.conv' and 6 more) or a class name (BatchNorm1d, BatchNorm2d, Conv2d "
        "and 3 more)"
    )


@pytest.mark.parametrize("how", ["instance", "name"])
def test_a_leaf_module_instance_or_name_is_honoured(how):
    model = unused_head_net()
    leaf = model.inner if how == "instance" else "inner"
    graph = surgeon.slim(model, 0.5, X, leaf_modules=[leaf], returns="graph")
    called = [n.target for n in graph.graph.nodes if n.op == "call_module"]
    assert "inner" in called and "inner.conv" not in called  # not traced into
    assert graph.inner.conv.weight.shape == (8, 8, 3, 3)  # its channels stay
    assert graph.meta["surgeon.plan"]["leaf_modules"] == ["inner"]
    slim = surgeon.slim(model, 0.5, X, leaf_modules=[leaf])
    assert slim.inner.conv.weight.shape == (8, 8, 3, 3)


@pytest.mark.parametrize("bad", [nn.Conv2d(3, 3, 1), "no.such.module", 3])
def test_a_leaf_that_is_neither_a_type_nor_a_submodule_is_refused(bad):
    # a string is a qualified name or a class name; anything else a type or a submodule
    pattern = r"leaf_modules (holds|names) .*, which is neither a (torch.nn.Module type|submodule)"
    with pytest.raises(SurgeonInputError, match=pattern) as raised:
        surgeon.slim(unused_head_net(), 0.5, X, leaf_modules=[bad])
    assert raised.value.option == "leaf_modules"
    with pytest.raises(SurgeonInputError, match=pattern):
        surgeon.analyze(unused_head_net(), X, leaf_modules=[bad])
