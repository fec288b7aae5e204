"""surgeon/stacks.py: whole layers of a stack (structures with "layers"), own class kept,
config following, round trips, and the stacks it must leave alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import surgeon
from surgeon.errors import SurgeonInputError
from surgeon.stacks import find_stacks, score_stacks

transformers = pytest.importorskip("transformers")

IDS = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
DATA = [({"input_ids": torch.randint(0, 100, (2, 12))}, None) for _ in range(2)]


def _decoder(kind: str, layers: int = 4) -> nn.Module:
    torch.manual_seed(0)
    common = dict(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
    )
    if kind == "llama":
        cfg = transformers.LlamaConfig(**common)
        return transformers.LlamaForCausalLM(cfg).eval()
    if kind == "qwen2":  # sliding-window layers: a per-layer list in the config
        cfg = transformers.Qwen2Config(
            **common, use_sliding_window=True, sliding_window=4, max_window_layers=2
        )
        return transformers.Qwen2ForCausalLM(cfg).eval()
    cfg = transformers.GemmaConfig(**common, head_dim=16)
    return transformers.GemmaForCausalLM(cfg).eval()


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma"])
def test_half_the_layers_go_and_the_config_round_trips(kind, tmp_path):
    model = _decoder(kind)
    before_types = list(getattr(model.config, "layer_types", None) or [])
    slim = surgeon.slim(model, 0.5, {"input_ids": IDS}, structures=("layers",), data=DATA)
    assert type(slim) is type(model)
    plan = slim.meta["surgeon.plan"]
    (record,) = plan["layers"]
    assert record["path"] == "model.layers" and len(record["removed"]) == 2
    assert slim.config.num_hidden_layers == 2 == len(slim.model.layers)
    assert model.config.num_hidden_layers == 4 == len(model.model.layers)  # input untouched
    kept = [i for i in range(4) if i not in record["removed"]]
    if before_types:
        assert slim.config.layer_types == [before_types[i] for i in kept]
    # the kept layers are the original's, in order, renumbered for the generation cache
    for j, i in enumerate(kept):
        torch.testing.assert_close(
            slim.model.layers[j].mlp.down_proj.weight, model.model.layers[i].mlp.down_proj.weight
        )
        assert slim.model.layers[j].self_attn.layer_idx == j
    assert plan["config"] == "updated"
    assert slim.generate(IDS, max_new_tokens=3, min_new_tokens=3).shape == (2, 15)
    slim.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(again), _logits(slim), rtol=0, atol=0)


def test_layers_go_by_how_little_they_change_their_input():
    """The scores are 1 - cos(input, output) per token; the removed layers score lowest."""
    model = _decoder("llama")
    with torch.no_grad():  # layer 1 barely touches its input
        model.model.layers[1].self_attn.o_proj.weight.mul_(1e-3)
        model.model.layers[1].mlp.down_proj.weight.mul_(1e-3)
    slim = surgeon.slim(model, 0.25, {"input_ids": IDS}, structures=("layers",), data=DATA)
    (record,) = slim.meta["surgeon.plan"]["layers"]
    assert record["removed"] == [1]
    assert min(record["scores"]) == record["scores"][1] < 1e-4


def test_a_zeroed_layer_goes_exactly_at_any_ratio():
    model = _decoder("llama")
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    slim = surgeon.slim(model, 0.0, {"input_ids": IDS}, structures=("layers",))
    assert slim.meta["surgeon.plan"]["layers"][0]["removed"] == [2]
    assert slim.config.num_hidden_layers == 3
    torch.testing.assert_close(_logits(slim), _logits(model), rtol=0, atol=0)


def test_layers_and_widths_together_save_and_load(tmp_path):
    model = _decoder("llama")
    slim = surgeon.slim(
        model, 0.5, {"input_ids": IDS}, structures=("channels", "heads", "layers"), data=DATA
    )
    assert slim.config.num_hidden_layers == 2
    assert slim.config.intermediate_size == 48
    path = tmp_path / "slim.pt"
    surgeon.save(slim, path)
    loaded = surgeon.load(path, _decoder("llama"))
    assert loaded.config.num_hidden_layers == 2
    torch.testing.assert_close(_logits(loaded), _logits(slim), rtol=0, atol=0)


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.fc(x))


class _Tower(nn.Module):
    """A plain model: a stack of residual blocks in an nn.Sequential, then a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.Sequential(*[_Residual(16) for _ in range(4)])
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


class _Ensemble(nn.Module):
    """Four blocks of one class that each read the input: no stack."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.members = nn.ModuleList([_Residual(16) for _ in range(4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(m(x) for m in self.members)


def test_a_plain_sequential_stack_keeps_its_class():
    model = _Tower().eval()
    x = torch.randn(5, 16)
    slim = surgeon.slim(model, 0.5, x, structures=("channels", "heads", "layers"))
    assert type(slim) is _Tower and len(slim.blocks) == 2
    assert len(model.blocks) == 4
    assert slim(x).shape == (5, 3)


def test_modules_that_do_not_run_in_a_chain_are_no_stack():
    model = _Ensemble().eval()
    stacks = find_stacks(model)
    assert [s.path for s in stacks] == ["members"]
    assert score_stacks(model, stacks, [torch.randn(3, 16)]) == []
    assert "does not read what layer 0 returned" in stacks[0].why_not
    slim = surgeon.slim(model, 0.5, torch.randn(3, 16), structures=("layers",))
    assert len(slim.members) == 4


@pytest.mark.parametrize(
    "structures", [(), ("channels",), ("heads", "layers"), ("rows",), "widths"]
)
def test_structures_name_what_may_go(structures):
    with pytest.raises(SurgeonInputError, match="structures=.*'channels' and 'heads' together"):
        surgeon.SlimOptions(0.5, structures=structures)


def test_a_target_needs_the_widths():
    with pytest.raises(SurgeonInputError, match="a target needs the widths"):
        surgeon.SlimOptions(surgeon.Target(params=2.0), structures=("layers",))


def test_whole_layers_go_in_one_step():
    with pytest.raises(SurgeonInputError, match="prune in one step"):
        surgeon.prune_iteratively(
            _Tower().eval(), 0.5, torch.randn(2, 16), steps=3, structures=("layers",)
        )


def test_a_target_takes_whole_layers_and_widths_in_one_budget(tmp_path):
    """Target(params=2) with "layers": the layers least useful per parameter go first (up to
    half of what the target saves), the widths the rest; the model keeps its class, the plan
    records the layers in the original's indices, and a save / load replays them."""
    model = _decoder("llama")
    slim = surgeon.slim(
        model,
        surgeon.Target(params=2.0),
        {"input_ids": IDS},
        structures=("channels", "heads", "layers"),
        data=DATA,
    )
    assert type(slim) is type(model)
    plan = slim.meta["surgeon.plan"]
    (record,) = plan["layers"]
    assert plan["target"]["layers"] == len(record["removed"]) >= 1
    assert len(slim.model.layers) == 4 - len(record["removed"])
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / sum(p.numel() for p in slim.parameters()) / 2.0 - 1) <= 0.01
    path = tmp_path / "slim.pt"
    surgeon.save(slim, path)
    torch.testing.assert_close(_logits(surgeon.load(path, _decoder("llama"))), _logits(slim))


def test_experts_are_not_in_a_targets_budget():
    with pytest.raises(SurgeonInputError, match="experts go with a ratio"):
        surgeon.SlimOptions(surgeon.Target(params=2.0), structures=("channels", "heads", "experts"))
