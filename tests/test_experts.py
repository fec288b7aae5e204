"""surgeon/experts.py: whole experts of mixture-of-experts layers (structures with "experts"):
router rows and expert weights together, counts and config following, round trips, and the
expert the router never selects."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import surgeon
from surgeon.experts import find_moes

transformers = pytest.importorskip("transformers")

IDS = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
DATA = [({"input_ids": torch.randint(0, 100, (2, 12))}, None) for _ in range(2)]


def _moe(kind: str, layers: int = 2, norm_topk_prob: bool = True) -> nn.Module:
    torch.manual_seed(0)
    common = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        num_experts_per_tok=2,
    )
    if kind == "mixtral":
        cfg = transformers.MixtralConfig(**common, num_local_experts=8)
        return transformers.MixtralForCausalLM(cfg).eval()
    cfg = transformers.Qwen2MoeConfig(
        **common,
        num_experts=8,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=48,
        norm_topk_prob=norm_topk_prob,
    )
    return transformers.Qwen2MoeForCausalLM(cfg).eval()


def _count(config) -> int:
    return getattr(config, "num_local_experts", None) or config.num_experts


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("kind", ["mixtral", "qwen_moe"])
def test_half_the_experts_go_and_the_config_round_trips(kind, tmp_path):
    model = _moe(kind)
    moes = find_moes(model)
    assert [m.path for m in moes] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert {(m.size, m.top_k) for m in moes} == {(8, 2)}
    slim = surgeon.slim(model, 0.5, {"input_ids": IDS}, structures=("experts",), data=DATA)
    assert type(slim) is type(model)
    records = slim.meta["surgeon.plan"]["experts"]
    assert [len(r["removed"]) for r in records] == [4, 4]
    assert _count(slim.config) == 4 and _count(model.config) == 8
    for r in records:
        block = slim.get_submodule(r["path"])
        kept = [i for i in range(8) if i not in r["removed"]]
        original = model.get_submodule(r["path"])
        assert block.gate.weight.shape[0] == 4 == block.experts.num_experts
        torch.testing.assert_close(block.gate.weight, original.gate.weight[kept])
        torch.testing.assert_close(block.experts.down_proj, original.experts.down_proj[kept])
        # the least used went: every removed score is at most every kept one
        scores = r["scores"]
        assert max(scores[i] for i in r["removed"]) <= min(scores[i] for i in kept)
    assert slim.meta["surgeon.plan"]["config"] == "updated"
    assert slim.generate(IDS, max_new_tokens=3, min_new_tokens=3).shape == (2, 15)
    slim.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(again), _logits(slim), rtol=0, atol=0)
    path = tmp_path / "slim.pt"
    surgeon.save(slim, path)
    torch.testing.assert_close(_logits(surgeon.load(path, _moe(kind))), _logits(slim))


def _never_routed(model: nn.Module, expert: int) -> None:
    """One decoder layer whose router can never send a token to ``expert``: hidden
    coordinate 0 is 10 for every token (embedding column, nothing adds to it before the MoE),
    the other experts' router rows read it positively and ``expert``'s negatively."""
    layer = model.model.layers[0]
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        layer.self_attn.o_proj.weight[0] = 0.0
        gate = layer.mlp.gate.weight
        gate.mul_(0.01)
        gate[:, 0] = 1.0
        gate[expert, 0] = -1.0


@pytest.mark.parametrize("kind", ["mixtral", "qwen_moe"])
def test_an_expert_the_router_never_selects_goes_exactly_at_ratio_0(kind):
    model = _moe(kind, layers=1)
    _never_routed(model, expert=5)
    slim = surgeon.slim(model, 0.0, {"input_ids": IDS}, structures=("experts",), data=DATA)
    (record,) = slim.meta["surgeon.plan"]["experts"]
    assert 5 in record["removed"]  # (others the data never routed to may go with it)
    assert all(record["scores"][i] == 0.0 for i in record["removed"])
    assert _count(slim.config) == 8 - len(record["removed"])
    torch.testing.assert_close(_logits(slim), _logits(model))


def test_an_unused_expert_stays_where_the_softmax_would_change_the_others_weights():
    """Without renormalised top-k weights the removed expert's softmax share changes every
    other weight: at ratio 0 it stays, and the model is unchanged."""
    model = _moe("qwen_moe", layers=1, norm_topk_prob=False)
    _never_routed(model, expert=5)
    with torch.no_grad():  # its share of the softmax is not negligible
        model.model.layers[0].mlp.gate.weight[5, 0] = 0.5
        model.model.layers[0].mlp.gate.weight[:5, 0] = 0.9
        model.model.layers[0].mlp.gate.weight[6:, 0] = 0.9
    slim = surgeon.slim(model, 0.0, {"input_ids": IDS}, structures=("experts",), data=DATA)
    assert slim.meta["surgeon.plan"]["experts"][0]["removed"] == []
    torch.testing.assert_close(_logits(slim), _logits(model))


def test_no_layer_keeps_fewer_experts_than_it_routes_to():
    model = _moe("mixtral", layers=1)
    slim = surgeon.slim(model, 0.9, {"input_ids": IDS}, structures=("experts",), data=DATA)
    assert _count(slim.config) == 2
    assert _logits(slim).shape == _logits(model).shape
