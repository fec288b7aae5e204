"""surgeon/textlm.py and the calibrated criteria on language models: the stdlib-text corpus,
a causal LM's own loss for taylor, and the CI-sized language-model benchmark (the best
calibrated criterion beats L2)."""

from __future__ import annotations

import pytest
import torch

import surgeon
from surgeon import textlm
from surgeon.errors import SurgeonInputError

transformers = pytest.importorskip("transformers")


def _tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def test_the_corpus_is_split_by_file_and_read_as_bytes():
    data = textlm.load_text()
    assert not set(data.train_files) & set(data.heldout_files)
    files = len(data.train_files) + len(data.heldout_files)
    assert len(data.heldout_files) == -(-files // 10)  # every tenth, from the first
    assert data.train.dtype == torch.uint8 and len(data.train) > 10 * len(data.heldout) / 2
    assert bytes(data.heldout.tolist()).decode("utf-8", "replace").count("\ndef ") > 100


def test_taylor_on_a_causal_lm_needs_no_loss_fn_and_uses_next_token_loss():
    """The default loss is the next-token cross-entropy: the scores equal those of the same
    loss given by hand (batches without targets take their input ids)."""
    model = _tiny_llama()
    ids = torch.randint(0, 100, (2, 10))
    data = [({"input_ids": ids}, None)]

    def by_hand(output, target):
        logits = output["logits"] if isinstance(output, dict) else output.logits
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), target[:, 1:].flatten()
        )

    own = surgeon.slim(model, 0.5, {"input_ids": ids}, importance="taylor", data=data)
    given = surgeon.slim(
        model,
        0.5,
        {"input_ids": ids},
        importance="taylor",
        data=[({"input_ids": ids}, ids)],
        loss_fn=by_hand,
    )
    assert own.meta["surgeon.plan"]["removed"] == given.meta["surgeon.plan"]["removed"]
    with pytest.raises(SurgeonInputError, match="needs loss_fn=.*no causal language model"):
        surgeon.slim(
            torch.nn.Linear(4, 4),
            0.5,
            torch.randn(2, 4),
            importance="taylor",
            data=[(torch.randn(2, 4), None)],
        )


def test_calibration_batches_of_other_shapes_than_a_specialised_graph_get_a_clear_error():
    model = _tiny_llama()
    data = [({"input_ids": torch.randint(0, 100, (3, 10))}, None)]
    with pytest.raises(SurgeonInputError, match=r"data= batch 0 \(\(3, 10\)\).*specialised"):
        surgeon.slim(
            model,
            0.5,
            {"input_ids": torch.randint(0, 100, (1, 10))},
            importance="activation",
            data=data,
        )


def test_the_best_calibrated_criterion_beats_l2_on_held_out_text():
    """The CI-sized language-model benchmark (bench/lm.py --small, zero-shot): half the
    parameters removed from a small LLaMA trained on the standard library's source, by L2
    under the same global threshold, by Torch-Pruning's recipe (uniform L2) and by the
    calibrated criteria; the best calibrated one keeps a lower held-out perplexity than
    both."""
    data = textlm.load_text()
    model, info = textlm.train_lm(textlm.SMALL, data)
    assert info["heldout_ppl"] < 30  # it learned something: bytes alone are 256
    calib = textlm.calibration_batches(data, textlm.SMALL.seq)
    ppl = {}
    for method in ("l2", "uniform-l2", "activation", "fluctuation"):
        slim, got = textlm.prune_lm(model, method, 0.5, calib)
        assert 0.4 < got < 0.6, (method, got)
        ppl[method] = textlm.perplexity(slim, data.heldout, textlm.SMALL.seq)
    best = min(ppl["activation"], ppl["fluctuation"])
    assert best < min(ppl["l2"], ppl["uniform-l2"]), ppl
