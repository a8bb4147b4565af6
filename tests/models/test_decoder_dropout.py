"""Dropout in the decoder, against its definition: in eval mode every dropout (embedding, residual, attention,
stochastic depth) is off, so the logits are those of the same weights built without it; in training the masks come
from torch's RNG (the same seed, the same logits; another seed, others); attention dropout zeroes each attention weight
with probability p and scales the rest by 1 / (1 - p), as transformers' eager attention does."""

from __future__ import annotations

import pytest
import torch
from nl_model_helpers import config, random_ids

from neurallayers.models.decoder import DecoderLM

DROPS = dict(dropout=0.1, attn_dropout=0.2, drop_path=0.1)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "alibi", "post-norm"])
@pytest.mark.parametrize("autocast", [False, True])  # bf16 on the CPU takes the materialized attention's dropout
def test_dropout_is_seeded_in_training_and_off_in_eval(name, autocast):
    torch.manual_seed(0)
    net = DecoderLM(config(name, **DROPS))
    plain = DecoderLM(config(name)).eval()
    plain.load_state_dict(net.state_dict())
    ids = random_ids(2, 12, seed=1)
    runs = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        net.train()
        for seed in (5, 5, 6):
            torch.manual_seed(seed)
            runs.append(net(ids).logits)
        net.eval()
        evals = [net(ids).logits, plain(ids).logits]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert not torch.allclose(runs[0], evals[0], atol=1e-3)  # training does drop something
    assert torch.equal(evals[0], evals[1])


@torch.no_grad()
def test_attention_dropout_zeroes_weights_at_its_rate_and_rescales_the_rest():
    """The first layer's weights (its input has no dropout before it here) in training against the same in eval."""
    p = 0.3
    torch.manual_seed(0)
    net = DecoderLM(config("llama-gqa", attn_dropout=p, n_layer=1))
    ids = random_ids(8, 40, seed=2)
    want = net.eval()(ids, output_attentions=True).attentions[0]
    torch.manual_seed(1)
    got = net.train()(ids, output_attentions=True).attentions[0]
    seen = want > 0  # the causal entries
    kept = got[seen] != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.02  # ~26,000 entries
    torch.testing.assert_close(got[seen][kept], want[seen][kept] / (1 - p), atol=1e-6, rtol=1e-5)
    assert (got[~seen] == 0).all()
