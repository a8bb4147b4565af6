"""Search methods on batches of prompts of different lengths (left-padded): beam search equals transformers'
left-padded batched beam search, and with presence/frequency penalties and min_new_tokens every method gives each
prompt what it gives that prompt alone. Also early_stopping="never" (transformers' semantics)."""

from __future__ import annotations

import pytest
import torch
from nl_search_helpers import hf_and_ours, plain_greedy, tiny

from neurallayers.generation.config import GenerationConfig
from neurallayers.generation.search import beam_search, contrastive_decoding, contrastive_search

PROMPTS = [[5, 17, 42, 9, 3], [60, 2, 33], [7, 7, 21, 80, 14, 50, 11], [90]]


@pytest.fixture(scope="module")
def models():
    return hf_and_ours(seed=0)


@pytest.fixture(scope="module")
def eos(models):
    """A token the model likes a few steps into a greedy continuation, so hypotheses do end on it."""
    return plain_greedy(models[1], PROMPTS[0], 4)[3]


def hf_batched(hf, prompts: list[list[int]], *, eos: int, **kw) -> tuple[list[list[list[int]]], list[list[float]]]:
    """transformers' beam search on the left-padded batch: per prompt its returned sequences (cut at eos) and
    scores."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[eos] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(ids, attention_mask=mask, do_sample=False, eos_token_id=eos, pad_token_id=eos,
                      return_dict_in_generate=True, output_scores=True, **kw)
    n = kw.get("num_return_sequences", 1)
    seqs = [row[:row.index(eos)] if eos in row else row for row in out.sequences[:, width:].tolist()]
    scores = out.sequences_scores.tolist()
    per_prompt = range(len(prompts))
    return [seqs[i * n:(i + 1) * n] for i in per_prompt], [scores[i * n:(i + 1) * n] for i in per_prompt]


SETTINGS = [
    dict(num_beams=3, num_return_sequences=2, min_new_tokens=5, early_stopping=True),
    dict(num_beams=3, num_return_sequences=1, min_new_tokens=8, early_stopping=False),
    dict(num_beams=4, num_return_sequences=2, length_penalty=0.5),
    dict(num_beams=2, num_return_sequences=2, length_penalty=1.0, early_stopping="never", min_new_tokens=3),
]


@torch.inference_mode()
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(f"{k[:6]}{v}" for k, v in s.items()))
def test_batched_different_lengths_equal_transformers(models, eos, setting):
    hf, ours = models
    want, want_scores = hf_batched(hf, PROMPTS, eos=eos, max_new_tokens=12, **setting)
    got = beam_search(ours, PROMPTS, GenerationConfig(max_new_tokens=12, **setting), eos_ids=[eos])
    assert [[g.token_ids for g in per] for per in got] == want
    for per, scores in zip(got, want_scores, strict=True):
        assert [g.score for g in per] == pytest.approx(scores, abs=1e-4)
    n_min = setting.get("min_new_tokens", 0)
    assert all(len(g.token_ids) + (g.finish_reason == "stop") >= n_min for per in got for g in per)
    if setting.get("length_penalty", 1.0) <= 1:
        assert any(g.finish_reason == "stop" for per in got for g in per), "no hypothesis stopped: weak test"


@torch.inference_mode()
def test_early_stopping_never_equals_transformers_and_searches_on(models):
    """With an eos the model likes early, early_stopping=False stops once no running beam beats the finished ones
    at the current length; "never" judges them at max_new_tokens and so finds other (longer) hypotheses."""
    hf, ours = models
    eos = plain_greedy(ours, PROMPTS[0], 3)[2]
    setting = dict(num_beams=2, num_return_sequences=2, length_penalty=1.0)
    want, scores = hf_batched(hf, PROMPTS, eos=eos, max_new_tokens=12, early_stopping="never", **setting)
    cfg = GenerationConfig(max_new_tokens=12, early_stopping="never", **setting)
    got = beam_search(ours, PROMPTS, cfg, eos_ids=[eos])
    assert [[g.token_ids for g in per] for per in got] == want
    assert [[g.score for g in per] for per in got] == [pytest.approx(s, abs=1e-4) for s in scores]
    heuristic = beam_search(ours, PROMPTS, cfg.replace(early_stopping=False), eos_ids=[eos])
    assert [[g.token_ids for g in per] for per in heuristic] != want, "the two stopping rules must differ here"


PENALTIES = [dict(presence_penalty=1.5), dict(frequency_penalty=1.0, min_new_tokens=6),
             dict(presence_penalty=-0.5, frequency_penalty=0.8, repetition_penalty=1.2, min_new_tokens=3)]


@pytest.mark.parametrize("extra", PENALTIES, ids=lambda s: "-".join(s))
def test_beam_penalties_batched_equal_alone(models, eos, extra):
    _, ours = models
    cfg = GenerationConfig(max_new_tokens=10, num_beams=3, num_return_sequences=2, **extra)
    batched = beam_search(ours, PROMPTS, cfg, eos_ids=[eos])
    plain = beam_search(ours, PROMPTS, cfg.replace(presence_penalty=0.0, frequency_penalty=0.0), eos_ids=[eos])
    assert batched != plain or extra.get("presence_penalty", 0) == 0, "the penalty must change something"
    for prompt, got in zip(PROMPTS, batched, strict=True):
        (alone,) = beam_search(ours, [prompt], cfg, eos_ids=[eos])
        assert [g.token_ids for g in got] == [g.token_ids for g in alone]
        assert [g.score for g in got] == pytest.approx([g.score for g in alone], abs=1e-4)


@pytest.mark.parametrize("extra", PENALTIES, ids=lambda s: "-".join(s))
def test_contrastive_penalties_batched_equal_alone(extra):
    expert = tiny(seed=1, n_layer=2, n_embd=32, init_std=0.15)
    amateur = tiny(seed=3, n_layer=1, n_embd=16, n_head=2, init_std=0.15)
    eos = [plain_greedy(expert, PROMPTS[1], 3)[2]]
    prompts = [[t % 64 for t in p] for p in PROMPTS]
    search = GenerationConfig(max_new_tokens=8, penalty_alpha=0.6, top_k=4, **extra)
    decoding = GenerationConfig(max_new_tokens=8, temperature=0, contrastive_alpha=0.05, **extra)
    runs = [(lambda ps: contrastive_search(expert, ps, search, eos_ids=eos)),
            (lambda ps: contrastive_decoding(expert, amateur, ps, decoding, eos_ids=eos))]
    for run in runs:
        batched = run(prompts)
        for prompt, (got,) in zip(prompts, batched, strict=True):
            ((alone,),) = run([prompt])
            assert got.token_ids == alone.token_ids and got.finish_reason == alone.finish_reason


def test_early_stopping_values():
    assert GenerationConfig(early_stopping="never").early_stopping == "never"
    for bad in ("always", 1, None):
        with pytest.raises(ValueError, match=r"GenerationConfig.early_stopping=.*must be True, False or 'never'"):
            GenerationConfig(early_stopping=bad)
