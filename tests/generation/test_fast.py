"""generation.fast: the static-shape (and compiled) one-token step gives the plain path's tokens."""

from __future__ import annotations

import gc

import pytest
import torch
from nl_gen_helpers import tiny_lm, unicode_tokenizer

from neurallayers.generation import GenerationConfig, generate_ids, stream
from neurallayers.generation.fast import decode_step_for, prepare_for_decode, release

PROMPTS = [[5, 9, 2, 7, 1, 3], [4, 8], [11, 12, 13, 14]]  # different lengths: a left-padded batch


def _ids(model, prompts, **settings) -> list[list[int]]:
    cfg = GenerationConfig(max_new_tokens=12, ignore_eos=True, **settings)
    return [g.token_ids for g in generate_ids(model, prompts, cfg, eos_ids=[])]


def _pair(**kwargs):
    """Two models with the same weights: one plain, one prepared for fast decoding with `kwargs`."""
    plain, fast = tiny_lm(seed=1), tiny_lm(seed=1)
    return plain, prepare_for_decode(fast, **kwargs)


@pytest.mark.parametrize("settings", [
    {"temperature": 0.0},
    {"temperature": 0.9, "top_k": 8, "seed": 3, "num_return_sequences": 2},
    {"temperature": 0.0, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
])
def test_static_step_equals_plain(settings):
    plain, fast = _pair(compile=False, bucket=16)
    assert _ids(fast, PROMPTS, **settings) == _ids(plain, PROMPTS, **settings)
    assert _ids(fast, PROMPTS[:1], **settings) == _ids(plain, PROMPTS[:1], **settings)


def test_static_step_logprobs_and_stream():
    tok = unicode_tokenizer()
    plain, fast = tiny_lm(seed=2, vocab=tok.vocab_size), tiny_lm(seed=2, vocab=tok.vocab_size)
    prepare_for_decode(fast, compile=False)
    cfg = GenerationConfig(max_new_tokens=10, temperature=0.0, logprobs=3)
    (a,), (b,) = (generate_ids(m, [[3, 4, 5]], cfg, eos_ids=[]) for m in (fast, plain))
    assert a.token_ids == b.token_ids
    for x, y in zip(a.logprobs, b.logprobs, strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-5)
        assert [t for t, _ in x.top] == [t for t, _ in y.top]
    texts = ["".join(e.text for e in stream(m, tok, [3, 4, 5], max_new_tokens=10, temperature=0.0))
             for m in (fast, plain)]
    assert texts[0] == texts[1]


def test_bf16_static_step_equals_plain_bf16():
    plain, fast = _pair(compile=False, dtype=torch.bfloat16)
    plain.to(torch.bfloat16)
    assert fast.wte.weight.dtype == torch.bfloat16
    assert decode_step_for(fast).new_cache(2, 10).k.dtype == torch.bfloat16
    assert _ids(fast, PROMPTS, temperature=0.0) == _ids(plain, PROMPTS, temperature=0.0)


@pytest.mark.slow
def test_compiled_step_equals_plain():
    """torch.compile with inductor freezing: one graph (batch 3, one cache bucket), the plain path's tokens."""
    plain, fast = _pair(compile=True, bucket=32)
    assert _ids(fast, PROMPTS, temperature=0.0) == _ids(plain, PROMPTS, temperature=0.0)
    # same batch and bucket: reuses the graph; a sampled run gives the plain path's tokens too
    sampled = {"temperature": 0.8, "seed": 5, "top_p": 0.9}
    assert _ids(fast, PROMPTS, **sampled) == _ids(plain, PROMPTS, **sampled)


def test_cache_length_is_bucketed_within_context():
    _, fast = _pair(compile=False, bucket=16)  # tiny_lm has block_size 64
    step = decode_step_for(fast)
    assert step.new_cache(2, 17).max_len == 32
    assert step.new_cache(2, 32).max_len == 32
    assert step.new_cache(1, 60).max_len == 64
    assert step.new_cache(1, 5).static


def test_release_and_weak_registry():
    _, fast = _pair(compile=False)
    assert decode_step_for(fast) is not None
    release(fast)
    assert decode_step_for(fast) is None
    prepare_for_decode(fast, compile=False)
    step = decode_step_for(fast)
    del fast
    gc.collect()
    with pytest.raises(RuntimeError, match="no longer exists"):
        step.new_cache(1, 4)


def test_step_refuses_a_plain_cache():
    _, fast = _pair(compile=False)
    with pytest.raises(ValueError, match="static cache"):
        decode_step_for(fast)(torch.zeros(1, 1, dtype=torch.long), cache=fast.new_cache(1, 8), input_pos=0,
                              position_ids=None, attention_mask=None)


@pytest.mark.parametrize("kwargs, match", [
    ({"dtype": torch.int8}, "dtype"),
    ({"dtype": "bf16"}, "dtype"),
    ({"mode": "reduce-overhead"}, "mode='reduce-overhead'"),
    ({"bucket": 0}, "bucket"),
    ({"bucket": True}, "bucket"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prepare_for_decode(tiny_lm(), compile=False, **kwargs)


def test_not_a_decoder():
    with pytest.raises(ValueError, match="DecoderLM"):
        prepare_for_decode(torch.nn.Linear(2, 2))
