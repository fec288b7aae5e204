"""A Hugging Face model's config follows its slim sizes (surgeon/modelconfig.py): the int
fields that count the classes of a group that shrank scale with it, those the shapes do not
need keep their values, the model built from the new config computes what the slim model
computes (so ``save_pretrained`` -> ``from_pretrained`` gives it back), and a config that
cannot describe the slim model is left alone with the reason. Tiny configs, random weights,
no download."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import surgeon
from surgeon.errors import SurgeonExportError
from surgeon.modelconfig import update_config
from tests.helpers import main_output
from tests.test_transformers import MODELS, build

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

IDS = {"input_ids": torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))}


def _llama_config(**changes: int):
    sizes = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4)
    sizes.update(num_key_value_heads=2, num_hidden_layers=2, vocab_size=100)
    return transformers.LlamaConfig(**{**sizes, **changes})


def _llama(config=None):
    torch.manual_seed(0)
    return transformers.LlamaModel(config or _llama_config()).eval()


def _ints(config) -> dict[str, int]:
    return {k: v for k, v in config.to_dict().items() if type(v) is int}


def test_a_slim_llamas_config_follows_its_sizes():
    model = _llama()
    before = _ints(model.config)
    slim = surgeon.slim(model, 0.5, IDS)
    assert slim.meta["surgeon.plan"]["config"] == "updated"
    config, attention = slim.config, slim.layers[0].self_attn
    # heads prune whole (2 kv groups -> 1, 4 query heads over them -> 2), the MLP halves; the
    # hidden width is LlamaModel's output, so it stays
    assert config.num_key_value_heads == attention.k_proj.out_features // 16 == 1
    assert config.num_attention_heads == attention.q_proj.out_features // 16 == 2
    assert config.intermediate_size == slim.layers[0].mlp.gate_proj.out_features == 64
    assert config.hidden_size == slim.embed_tokens.embedding_dim == 64
    changed = {"intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1}
    assert _ints(config) == {**before, **changed}  # head_dim 16, 2 layers, 100 tokens, ...
    assert _ints(model.config) == before  # the input model's config is its own
    rebuilt = transformers.LlamaModel(config).eval()
    rebuilt.load_state_dict(slim.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(main_output(rebuilt(**IDS)), main_output(slim(**IDS)))


def test_the_fields_that_scale_are_kept_only_where_the_shapes_need_them():
    """Every int field divisible by a shrunk group's count is a candidate (hidden 64 over the
    2 kv groups -> 32, 2 layers -> 1, head_dim 16 -> 8, 100 tokens -> 50, eos 2 -> 1); the
    shapes put back those that do not fit, and the shape-neutral ones keep their values."""
    sizes = dict(intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    slim = _llama(_llama_config(**sizes, head_dim=16))
    slim.config = copy.deepcopy(_llama().config)  # slim weights, the original's config
    before = _ints(slim.config)
    assert update_config(slim, {128: {64}, 2: {1}}, IDS) == ""
    assert _ints(slim.config) == {**before, **sizes}


def test_a_config_whose_shapes_fit_but_whose_heads_differ_is_left_alone():
    """2 heads of 32 (q_proj 64 wide) where the config can only say 4 heads of 16 or 2 of 16:
    the shapes of 4 x 16 fit, the outputs do not."""
    slim = _llama(_llama_config(intermediate_size=64, num_attention_heads=2, num_key_value_heads=1))
    assert slim.layers[0].self_attn.head_dim == 32
    slim.config = copy.deepcopy(_llama().config)
    before = slim.config.to_dict()
    why = update_config(slim, {128: {64}, 2: {1}}, IDS)
    assert why.startswith("the config that builds the slim shapes computes something else: ")
    assert "differs from the slim graph's" in why
    assert slim.config.to_dict() == before


def test_a_config_no_field_of_which_fits_is_left_alone_with_the_reason():
    model = _llama()
    mlp = model.layers[0].mlp  # only the first layer's MLP shrinks: no one intermediate_size
    mlp.gate_proj, mlp.up_proj, mlp.down_proj = (nn.Linear(64, 64, bias=False) for _ in "abc")
    before = model.config.to_dict()
    why = update_config(model, {128: {64}}, IDS)
    assert why.startswith("no config of LlamaConfig builds the slim shapes (first: [")
    assert "'layers.1.mlp.down_proj.weight'" in why
    assert model.config.to_dict() == before


def test_a_model_without_a_config_is_left_as_it_is():
    assert update_config(nn.Linear(4, 2), {4: {2}}, torch.randn(1, 4)) == ""
    model = nn.Linear(4, 2)
    model.config = {"hidden_size": 4}  # no to_dict: not a Hugging Face config
    assert update_config(model, {4: {2}}, torch.randn(1, 4)) == ""
    assert model.config == {"hidden_size": 4}


# falcon: its fused multi-query heads stay (split by list indexing) while the hidden width
# halves, so head_dim = hidden / heads no longer holds; gemma: forward scales embeddings by
# sqrt(config.hidden_size), which a config with the slim width would change (slim checks and
# keeps the original config, the graph's constant). swin's head counts per stage follow as a
# list.
@pytest.mark.parametrize("name", [n for n in MODELS if n not in ("falcon", "gemma")])
def test_save_pretrained_and_from_pretrained_give_the_slim_model_back(name, tmp_path):
    """The config follows the slim sizes (hidden, MLP, head and kv-head counts), so the
    library's own save / load round-trips with the same outputs."""
    model, x, _ = build(name)
    slim = surgeon.slim(model, 0.5, x)
    assert slim.meta["surgeon.plan"]["config"] == "updated"
    slim.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(main_output(back(**x)), main_output(slim(**x)))


def test_a_config_that_cannot_hold_the_slim_sizes_is_left_alone_with_the_reason(tmp_path):
    """Falcon's fused multi-query heads stay while its hidden width halves: no config says
    that (head_dim is hidden / heads). Its save_pretrained then refuses, writing nothing: a
    checkpoint transformers cannot load is worse than none; surgeon.save / load still
    round-trip."""
    model, x, _ = build("falcon")
    slim = surgeon.slim(model, 0.5, x)
    assert "no config of FalconConfig builds the slim shapes" in slim.meta["surgeon.plan"]["config"]
    assert slim.config.to_dict() == model.config.to_dict()
    with pytest.raises(
        SurgeonExportError, match=r"save_pretrained: the slim Falcon\w+'s config cannot"
    ):
        slim.save_pretrained(tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert model.save_pretrained(tmp_path / "original") is None  # the input model's own
    torch.save(slim, tmp_path / "whole.pt")  # the refusing save_pretrained still pickles
    path = surgeon.save(slim, tmp_path / "falcon.surgeon")
    back = surgeon.load(path, build("falcon")[0])
    with torch.no_grad():
        torch.testing.assert_close(main_output(back(**x)), main_output(slim(**x)))
    with pytest.raises(SurgeonExportError, match="save_pretrained"):  # loaded: the same
        back.save_pretrained(tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_widths_per_stage_follow_in_a_list(tmp_path):
    """``hidden_sizes`` (one width per stage) follows item by item: a ConvNeXt classifier
    saves and loads through transformers with the slim outputs."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    torch.manual_seed(0)
    config = ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=5)
    model = ConvNextForImageClassification(config).eval()
    x = torch.randn(1, 3, 64, 64)
    slim = surgeon.slim(model, 0.5, x)
    assert slim.meta["surgeon.plan"]["config"] == "updated"
    assert slim.config.hidden_sizes == [8, 16, 32, 64]
    slim.save_pretrained(tmp_path)
    back = ConvNextForImageClassification.from_pretrained(tmp_path).eval()
    other = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(back(other).logits, slim(other).logits)


def test_a_forward_that_reads_its_config_comes_back_as_its_class(tmp_path):
    """SegFormer's classifier reshapes to ``config.hidden_sizes[-1]``: its own forward runs on
    the slim weights only once the config follows, so the config follows first (checked as
    always: the model built from it computes the slim outputs), and it is its own class."""
    from transformers import SegformerConfig, SegformerForImageClassification

    torch.manual_seed(0)
    config = SegformerConfig(
        hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 4, 8],
        num_labels=5, decoder_hidden_size=32,
    )  # fmt: skip
    model = SegformerForImageClassification(config).eval()
    x = torch.randn(2, 3, 64, 64)
    slim = surgeon.slim(model, 0.5, x)
    assert type(slim) is SegformerForImageClassification
    assert slim.meta["surgeon.plan"]["config"] == "updated"
    assert slim.config.hidden_sizes == [8, 16, 32, 64]
    graph = surgeon.slim(model, 0.5, x, returns="graph")
    other = torch.randn(1, 3, 96, 96)
    slim.save_pretrained(tmp_path)
    back = SegformerForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(slim(x).logits, graph(x)["logits"])
        torch.testing.assert_close(back(other).logits, slim(other).logits, rtol=1e-4, atol=1e-5)
