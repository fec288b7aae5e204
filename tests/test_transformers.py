"""Hugging Face transformers models, built from tiny configs (random weights, no download):
decorated ``**kwargs`` forwards captured through an explicit signature, sizes specialised to
the example, attention heads pruned whole, and the user's own class given back (a causal LM
still generates). (The config that follows the slim sizes: tests/test_modelconfig.py.)"""

from __future__ import annotations

import warnings

import pytest
import torch

import surgeon
from surgeon.cost import count_macs
from surgeon.errors import SurgeonFixedSizeError
from tests.helpers import assert_exact_at_zero, assert_slims_at_half

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

IDS = {"input_ids": torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))}
PIXELS = {"pixel_values": torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))}


_TEXT = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, intermediate_size=128)
_MEL = {"input_features": torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(0))}

# name -> (config class, its arguments, model class, example inputs, the query projection's
# name suffix, the least MAC drop at 0.5). An encoder whose output is its hidden state keeps
# that width (T5EncoderModel), so only its heads and MLP prune there.
MODELS = {
    "bert": (
        "BertConfig",
        {**_TEXT, "num_attention_heads": 4, "num_labels": 3},
        "BertForSequenceClassification",
        IDS,
        "attention.self.query",
        3.0,
    ),
    "distilbert": (
        "DistilBertConfig",
        {"vocab_size": 100, "dim": 64, "n_layers": 2, "n_heads": 4, "hidden_dim": 128},
        "DistilBertForSequenceClassification",
        IDS,
        "attention.q_lin",
        3.0,
    ),
    "gpt2": (  # its heads are packed in one c_attn
        "GPT2Config",
        {
            "vocab_size": 100,
            "n_embd": 64,
            "n_layer": 2,
            "n_head": 4,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
        "GPT2LMHeadModel",
        IDS,
        None,
        3.0,
    ),
    "llama": (  # grouped-query attention: 8 query heads, 4 kv heads
        "LlamaConfig",
        {**_TEXT, "num_attention_heads": 8, "num_key_value_heads": 4},
        "LlamaForCausalLM",
        IDS,
        "self_attn.q_proj",
        3.0,
    ),
    "qwen2": (
        "Qwen2Config",
        {**_TEXT, "num_attention_heads": 8, "num_key_value_heads": 4},
        "Qwen2ForCausalLM",
        IDS,
        "self_attn.q_proj",
        3.0,
    ),
    "opt": (  # its decoder makes positions with torch.ones(b, n) of traced sizes
        "OPTConfig",
        {**_TEXT, "num_attention_heads": 4, "ffn_dim": 128, "word_embed_proj_dim": 64},
        "OPTForCausalLM",
        IDS,
        "self_attn.q_proj",
        3.0,
    ),
    "falcon": (  # linear layers are x @ w.T; multi-query: one key/value head, kept whole
        "FalconConfig",
        {"vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
        "FalconForCausalLM",
        IDS,
        None,
        2.5,
    ),
    "gemma": (  # embeddings scaled by sqrt(hidden); RMSNorm in float32 cast back by type_as
        "GemmaConfig",
        {**_TEXT, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16},
        "GemmaForCausalLM",
        IDS,
        "self_attn.q_proj",
        3.0,
    ),
    "deberta_v2": (  # its attention scale is torch.tensor(head_dim); relative positions
        "DebertaV2Config",
        {**_TEXT, "num_attention_heads": 4, "num_labels": 3},
        "DebertaV2ForSequenceClassification",
        IDS,
        "attention.self.query_proj",
        3.0,
    ),
    "t5_encoder": (
        "T5Config",
        {
            "vocab_size": 100,
            "d_model": 64,
            "d_kv": 16,
            "d_ff": 128,
            "num_layers": 2,
            "num_heads": 4,
        },
        "T5EncoderModel",
        IDS,
        "SelfAttention.q",
        1.9,
    ),
    "vit": (
        "ViTConfig",
        {
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "num_labels": 5,
        },
        "ViTForImageClassification",
        PIXELS,
        "attention.q_proj",
        3.0,
    ),
    "swin": (
        "SwinConfig",
        {
            "image_size": 32,
            "patch_size": 4,
            "embed_dim": 16,
            "depths": [1, 1],
            "num_heads": [2, 4],
            "window_size": 4,
            "num_labels": 5,
        },
        "SwinForImageClassification",
        PIXELS,
        "attention.q_proj",
        3.0,
    ),
    "whisper_encoder": (
        "WhisperConfig",
        {
            "d_model": 64,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "num_mel_bins": 16,
            "max_source_positions": 32,
            "num_labels": 3,
        },
        "WhisperForAudioClassification",
        _MEL,
        "q_proj",
        3.0,
    ),
}


def build(name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], str | None]:
    """Model ``name`` (random weights, seeded, eval mode), its example inputs and the name
    suffix of its query projections."""
    config, kwargs, cls, x, q, _ = MODELS[name]
    torch.manual_seed(0)
    model = getattr(transformers, cls)(getattr(transformers, config)(**kwargs))
    return model.eval(), x, q


@pytest.mark.parametrize("name", list(MODELS))
def test_hugging_face_model_slims_exactly(name, tmp_path):
    model, x, q = build(name)
    assert_exact_at_zero(model, x)
    slim = assert_slims_at_half(model, x, tmp_path)  # onnxruntime parity included
    assert type(slim) is type(model), slim.meta["surgeon.plan"]["form_reason"]
    assert count_macs(model, x) / count_macs(slim, x) >= MODELS[name][5]
    if q is not None:  # heads prune whole: the query projection loses half its width
        (name_q, proj), *_ = [(n, m) for n, m in slim.named_modules() if n.endswith(q)]
        assert proj.out_features == dict(model.named_modules())[name_q].out_features // 2


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_causal_lm_still_generates(name):
    model, x, _ = build(name)
    slim = surgeon.slim(model, 0.5, x)
    out = slim.generate(
        x["input_ids"], max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0
    )
    assert out.shape == (1, 16)
    with torch.no_grad():  # with and without the generation cache: the same logits
        torch.testing.assert_close(slim(**x).logits, slim(**x, use_cache=False).logits)


def test_tied_input_and_output_embeddings_stay_tied():
    model, x, _ = build("gpt2")
    slim = surgeon.slim(model, 0.5, x)
    assert slim.lm_head.weight is slim.transformer.wte.weight
    assert slim.lm_head.weight.shape[0] == 100  # the vocabulary is never pruned


@pytest.mark.parametrize("name, halves", [("bert", True), ("llama", False)])
def test_the_head_dim_can_prune_instead_of_whole_heads(name, halves, tmp_path):
    """``attention="head_dim"``: every head keeps its count and loses the same offsets of its
    width (BERT). LLaMA's rotary embeddings split the head width in halves at a size read
    (``x[..., : x.shape[-1] // 2]``), so its head width stays; the rest still prunes, exactly."""
    model, x, q = build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # hand-zeroed thirds leave head widths the config's head count cannot split, so the
        # graph comes back, captured at the example's sequence length: asked for here
        assert_exact_at_zero(model, x, attention="head_dim", returns="graph")
    with pytest.raises(SurgeonFixedSizeError, match=r"fixed to the example inputs' sizes \(1x8\)"):
        assert_exact_at_zero(model, x, attention="head_dim")
    # LLaMA's own forward cannot run its halved rotary width: its graph, at the example's sizes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        returns = "auto" if halves else "graph"
        slim = assert_slims_at_half(model, x, tmp_path, attention="head_dim", returns=returns)
    assert slim.meta["surgeon.plan"]["attention"] == "head_dim"
    (name_q, proj), *_ = [(n, m) for n, m in slim.named_modules() if n.endswith(q)]
    width = dict(model.named_modules())[name_q].out_features
    assert proj.out_features == (width // 2 if halves else width)
