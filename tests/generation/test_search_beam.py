"""Beam search equals transformers' beam search token for token on the same random GPT-2 weights."""

from __future__ import annotations

import pytest
import torch
from nl_search_helpers import hf_and_ours, plain_greedy

from neurallayers.generation.config import GenerationConfig
from neurallayers.generation.search import beam_search

PROMPTS = [[5, 17, 42, 9, 3], [60, 2, 33], [7, 7, 21, 80, 14, 50, 11], [90]]


@pytest.fixture(scope="module")
def models():
    return hf_and_ours(seed=0)


def liked_token(model, prompt: list[int]) -> int:
    """A token the model produces a few steps into its greedy continuation: a realistic eos to test stopping."""
    return plain_greedy(model, prompt, 4)[3]


def hf_beams(hf, prompt: list[int], *, eos: int, **kw) -> tuple[list[list[int]], list[float]]:
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      do_sample=False, eos_token_id=eos, pad_token_id=eos, return_dict_in_generate=True,
                      output_scores=True, **kw)
    seqs = []
    for row in out.sequences[:, len(prompt):].tolist():
        seqs.append(row[:row.index(eos)] if eos in row else row)
    scores = out.sequences_scores.tolist() if out.sequences_scores is not None else []
    return seqs, scores


SETTINGS = [
    dict(num_beams=2, length_penalty=1.0, early_stopping=False, num_return_sequences=1),
    dict(num_beams=4, length_penalty=1.0, early_stopping=False, num_return_sequences=2),
    dict(num_beams=4, length_penalty=0.5, early_stopping=True, num_return_sequences=2),
    dict(num_beams=4, length_penalty=2.0, early_stopping=False, num_return_sequences=2),
    dict(num_beams=4, length_penalty=1.0, early_stopping=True, num_return_sequences=1, no_repeat_ngram_size=2),
    dict(num_beams=3, length_penalty=0.5, early_stopping=False, num_return_sequences=3, no_repeat_ngram_size=2),
    dict(num_beams=4, length_penalty=1.0, early_stopping=False, num_return_sequences=2, repetition_penalty=1.5),
    dict(num_beams=3, length_penalty=1.0, early_stopping=True, num_return_sequences=2, min_new_tokens=5),
]


@torch.inference_mode()
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(f"{k[:6]}{v}" for k, v in s.items()))
def test_beam_search_equals_transformers(models, setting):
    hf, ours = models
    stopped = 0
    for prompt in PROMPTS:
        eos = liked_token(ours, prompt)
        want, want_scores = hf_beams(hf, prompt, eos=eos, max_new_tokens=12, **setting)
        cfg = GenerationConfig(max_new_tokens=12, **setting)
        (got,) = beam_search(ours, [prompt], cfg, eos_ids=[eos])
        assert [g.token_ids for g in got] == want, prompt
        assert [g.score for g in got] == pytest.approx(want_scores, abs=1e-4)
        assert all(g.prompt_tokens == len(prompt) and g.text == "" for g in got)
        stopped += sum(g.finish_reason == "stop" for g in got)
        assert all(eos not in g.token_ids for g in got)
    if setting["length_penalty"] <= 1:  # a length penalty of 2 rightly prefers the long unfinished beams here
        assert stopped > 0, "no hypothesis ended on eos: the test would not cover stopping"


@torch.inference_mode()
def test_one_beam_is_transformers_greedy(models):
    hf, ours = models
    for prompt in PROMPTS:
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          do_sample=False, num_beams=1, max_new_tokens=10, eos_token_id=1, pad_token_id=1)
        want = out[0, len(prompt):].tolist()
        want = want[:want.index(1)] if 1 in want else want
        (got,) = beam_search(ours, [prompt], GenerationConfig(max_new_tokens=10, num_beams=1), eos_ids=[1])
        assert got[0].token_ids == want == plain_greedy(ours, prompt, 10, eos=[1])


@pytest.mark.parametrize("extra", [{}, {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2}])
def test_batched_equals_one_prompt_at_a_time(models, extra):
    _, ours = models
    cfg = GenerationConfig(max_new_tokens=10, num_beams=3, num_return_sequences=2, early_stopping=False, **extra)
    eos = [liked_token(ours, PROMPTS[0])]
    batched = beam_search(ours, PROMPTS, cfg, eos_ids=eos)
    for prompt, got in zip(PROMPTS, batched, strict=True):
        (alone,) = beam_search(ours, [prompt], cfg, eos_ids=eos)
        assert [g.token_ids for g in got] == [g.token_ids for g in alone]
        assert [g.score for g in got] == pytest.approx([g.score for g in alone], abs=1e-4)
        assert [g.finish_reason for g in got] == [g.finish_reason for g in alone]


def test_length_limit_and_ignore_eos(models):
    _, ours = models
    eos = liked_token(ours, PROMPTS[0])
    cfg = GenerationConfig(max_new_tokens=6, num_beams=2, ignore_eos=True)
    (got,) = beam_search(ours, [PROMPTS[0]], cfg, eos_ids=[eos])
    assert len(got[0].token_ids) == 6 and got[0].finish_reason == "length"
    cfg = GenerationConfig(max_new_tokens=6, num_beams=2, ignore_eos=True, stop_token_ids=[eos])
    (got,) = beam_search(ours, [PROMPTS[0]], cfg, eos_ids=[])
    assert got[0].finish_reason == "stop" and eos not in got[0].token_ids


def test_rejects_bad_input(models):
    _, ours = models
    cfg = GenerationConfig(max_new_tokens=4, num_beams=2)
    with pytest.raises(ValueError, match="input_ids"):
        beam_search(ours, [], cfg, eos_ids=[1])
    with pytest.raises(ValueError, match=r"input_ids\[1\]"):
        beam_search(ours, [[1, 2], []], cfg, eos_ids=[1])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        beam_search(ours, [[1, 10_000]], cfg, eos_ids=[1])
    with pytest.raises(ValueError, match="eos_ids"):
        beam_search(ours, [[1, 2]], cfg, eos_ids=[-3])
    with pytest.raises(ValueError, match="block_size"):
        beam_search(ours, [[1] * 60], cfg.replace(max_new_tokens=10), eos_ids=[1])
    with pytest.raises(ValueError, match="num_return_sequences"):
        GenerationConfig(num_beams=2, num_return_sequences=3)


@pytest.mark.parametrize(("method", "settings"), [
    ("beam_search", dict(num_beams=2, penalty_alpha=0.6, top_k=4)),
    ("contrastive_search", dict(num_beams=3, penalty_alpha=0.6, top_k=4)),
    ("contrastive_decoding", dict(num_beams=2)),
    ("contrastive_decoding", dict(penalty_alpha=0.6, top_k=4)),
    ("speculative_decode", dict(num_beams=4)),
    ("speculative_decode", dict(penalty_alpha=0.6, top_k=4)),
], ids=str)
def test_a_search_refuses_the_settings_of_another_method(models, method, settings):
    """Called directly, a search ignored a setting that chooses another method (speculative_decode with num_beams=4
    sampled one sequence; beam_search with penalty_alpha ran plain beam search): the error generate() gives when two
    methods are asked for at once."""
    from neurallayers.generation import search

    _, ours = models
    helper = () if method in ("beam_search", "contrastive_search") else (ours,)
    cfg = GenerationConfig(max_new_tokens=3, temperature=0, **settings)
    with pytest.raises(ValueError, match=f"^{method} .*choose one decoding method"):
        getattr(search, method)(ours, *helper, [[1, 2]], cfg, eos_ids=[])


@pytest.mark.parametrize(("method", "settings"), [
    ("beam_search", dict(num_beams=2)),
    ("contrastive_search", dict(penalty_alpha=0.6, top_k=4)),
    ("contrastive_decoding", dict()),
    ("speculative_decode", dict()),
], ids=str)
def test_a_search_gives_each_module_its_own_mode_back(method, settings):
    """Called directly in the middle of training (a sample every N steps), a search put its models in eval mode for
    good: dropout was off for every training step after it. It now runs them in eval mode and gives every module its
    own mode back, as generate() does (a frozen submodule the user keeps in eval stays there), and still decodes
    without dropout."""
    from neurallayers.config import ModelConfig
    from neurallayers.generation import search
    from neurallayers.models.decoder import DecoderLM

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.5)
    model, helper = DecoderLM(cfg).train(), DecoderLM(cfg.replace(n_layer=1)).train()
    model.blocks[0].eval()  # kept in eval by the user: must stay so
    modes = {name: sub.training for m in (model, helper) for name, sub in m.named_modules(prefix=str(id(m)))}
    helpers = () if method in ("beam_search", "contrastive_search") else (helper,)
    gen_cfg = GenerationConfig(max_new_tokens=6, temperature=0, **settings)
    run = getattr(search, method)
    first = run(model, *helpers, [[1, 2, 3]], gen_cfg, eos_ids=[])
    assert {name: sub.training for m in (model, helper) for name, sub in m.named_modules(prefix=str(id(m)))} == modes
    again = run(model, *helpers, [[1, 2, 3]], gen_cfg, eos_ids=[])  # with dropout on inside, the tokens would vary
    assert [g.token_ids for g in first[0]] == [g.token_ids for g in again[0]]
