"""transformers as the oracle, on many random cases: each logits rule equals its LogitsProcessor / LogitsWarper
(ties at the top-k / top-p boundary, -inf scores, min_tokens_to_keep, rows with different histories), presence and
frequency penalties follow OpenAI's formula (transformers has none), the sampler draws exactly the tokens the
warpers keep, and greedy and beam search equal `generate` on left-padded batches with several eos ids.

Padding is never history: a left-padded row is penalised and n-gram-banned as it is alone. transformers 5 agrees for
the repetition penalty (generate passes the padding lengths it reads from the attention mask), but its n-gram ban
counts the pad token, so a padded batch there bans what the prompt alone does not."""

from __future__ import annotations

import os
import random
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from nl_search_helpers import hf_and_ours, plain_greedy
from torch import nn

from neurallayers.generation import GenerationConfig, generate
from neurallayers.generation.processors import (
    FrequencyPenalty,
    MinPWarper,
    NoRepeatNGram,
    PresencePenalty,
    RepetitionPenalty,
    TemperatureWarper,
    TopKWarper,
    TopPWarper,
)
from neurallayers.generation.search import beam_search

os.environ.setdefault("HF_HUB_OFFLINE", "1")
lp = pytest.importorskip("transformers.generation.logits_process")


def random_scores(rng: random.Random, g: torch.Generator, b: int, v: int) -> torch.Tensor:
    """(b, v) scores of one kind: spread out, integer-valued (many ties), some -inf, or a row entirely -inf."""
    kind = rng.choice(["randn", "ties", "neg_inf", "all_neg_inf", "flat"])
    if kind == "ties":
        return torch.randint(-3, 3, (b, v), generator=g).float()
    if kind == "flat":
        return torch.zeros(b, v)
    scores = torch.randn(b, v, generator=g) * 3
    if kind == "neg_inf":
        scores[torch.rand(b, v, generator=g) < 0.4] = float("-inf")
    elif kind == "all_neg_inf":
        scores[0] = float("-inf")
    return scores


def random_pair(rng: random.Random) -> tuple[object, object]:
    """One of our rules and the transformers rule of the same name, with the same random arguments."""
    keep = rng.randint(1, 5)
    name = rng.choice(["temperature", "top_k", "top_p", "min_p", "repetition", "ngram"])
    if name == "temperature":
        t = rng.choice([0.3, 0.7, 1.5, rng.uniform(0.01, 3)])
        return TemperatureWarper(t), lp.TemperatureLogitsWarper(t)
    if name == "top_k":
        k = rng.randint(1, 45)
        return TopKWarper(k, min_tokens_to_keep=keep), lp.TopKLogitsWarper(k, min_tokens_to_keep=keep)
    if name == "top_p":
        p = rng.choice([0.01, 0.3, 0.5, 0.9, 0.999, 1.0, rng.uniform(0.01, 1)])
        return TopPWarper(p, min_tokens_to_keep=keep), lp.TopPLogitsWarper(p, min_tokens_to_keep=keep)
    if name == "min_p":
        p = rng.choice([0.0, 0.05, 0.5, 1.0, rng.random()])
        return MinPWarper(p, min_tokens_to_keep=keep), lp.MinPLogitsWarper(p, min_tokens_to_keep=keep)
    if name == "repetition":
        p = rng.choice([0.5, 0.8, 1.3, 2.0])
        return RepetitionPenalty(p), lp.RepetitionPenaltyLogitsProcessor(p)
    n = rng.randint(1, 4)
    return NoRepeatNGram(n), lp.NoRepeatNGramLogitsProcessor(n)


@pytest.mark.parametrize("seed", range(4))
def test_each_rule_equals_transformers_on_random_cases(seed: int) -> None:
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    for _ in range(150):
        b, v, t = rng.randint(1, 5), rng.randint(1, 40), rng.randint(1, 15)
        ids = torch.randint(0, min(v, 6), (b, t), generator=g)  # few ids: tokens and n-grams repeat, rows differ
        scores = random_scores(rng, g, b, v)
        ours, theirs = random_pair(rng)
        got, want = ours(ids, scores), theirs(ids, scores.clone())
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m, rule=ours: f"{type(rule).__name__} {vars(rule)}: {m}")


def openai_penalised(scores: torch.Tensor, generated: list[int], presence: float, frequency: float) -> torch.Tensor:
    """OpenAI's formula, literally: mu[j] - c[j] * alpha_frequency - float(c[j] > 0) * alpha_presence, where c[j]
    counts the times token j was sampled before this position."""
    out = scores.clone()
    for j, c in Counter(generated).items():
        out[j] = out[j] - c * frequency - float(c > 0) * presence
    return out


@pytest.mark.parametrize("seed", range(3))
def test_presence_and_frequency_follow_openais_formula(seed: int) -> None:
    """Rows of a left-padded batch with prompts of different lengths: padding and prompt are not sampled tokens."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    for _ in range(40):
        b, v, width, new = rng.randint(1, 4), rng.randint(2, 12), rng.randint(1, 8), rng.randint(0, 8)
        ids = torch.randint(0, v, (b, width + new), generator=g)
        scores = random_scores(rng, g, b, v)
        presence, frequency = rng.uniform(-2, 2), rng.uniform(-2, 2)
        got_p = PresencePenalty(presence, prompt_len=width)(ids, scores)
        got_f = FrequencyPenalty(frequency, prompt_len=width)(ids, scores)
        for r in range(b):
            generated = ids[r, width:].tolist()
            torch.testing.assert_close(got_p[r], openai_penalised(scores[r], generated, presence, 0.0), equal_nan=True)
            torch.testing.assert_close(got_f[r], openai_penalised(scores[r], generated, 0.0, frequency), equal_nan=True)


class FixedLogits(nn.Module):
    """A stub decoder whose next-token logits are one fixed row whatever the context: the sampler's support is then
    the set the warpers keep from that row, exactly."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.wte = nn.Embedding(len(logits), 1)
        self.config = SimpleNamespace(vocab_size=len(logits), block_size=16, causal=True)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> SimpleNamespace:
        return SimpleNamespace(rows=lambda start, stop: None, reorder=lambda index: None)

    def forward(self, ids: torch.Tensor, **_) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits.expand(ids.shape[0], 1, -1))


def kept_by_transformers(logits: torch.Tensor, s: dict) -> torch.Tensor:
    """The probabilities after transformers' warpers in generate()'s order (0 where a token is dropped)."""
    warpers = [lp.TemperatureLogitsWarper(s["temperature"])]
    warpers += [lp.TopKLogitsWarper(s["top_k"])] if s["top_k"] else []
    warpers += [lp.TopPLogitsWarper(s["top_p"])] if s["top_p"] < 1 else []
    warpers += [lp.MinPLogitsWarper(s["min_p"])] if s["min_p"] else []
    scores = logits[None].clone()
    for w in warpers:
        scores = w(torch.zeros(1, 1, dtype=torch.long), scores)
    return scores[0].softmax(-1)


@pytest.mark.parametrize("seed", range(3))
def test_the_sampler_draws_exactly_the_tokens_the_warpers_keep(seed: int) -> None:
    """Integer logits put ties at the top-k and top-p boundaries; never a token outside the kept set, and every kept
    token is drawn where it is likely enough to be seen in n draws (a miss then has probability < 1e-6)."""
    rng, n, covered = random.Random(seed), 400, 0
    for case in range(12):
        v = rng.randint(3, 12)
        logits = torch.randint(-2, 3, (v,), generator=torch.Generator().manual_seed(case + 100 * seed)).float()
        if rng.random() < 0.3:
            logits[rng.randrange(v)] = float("-inf")
        s = dict(temperature=rng.choice([0.5, 1.0, 1.7]), top_k=rng.choice([0, 1, 2, 3, 5]),
                 top_p=rng.choice([1.0, 0.3, 0.6, 0.9]), min_p=rng.choice([0.0, 0.1, 0.5]))
        probs = kept_by_transformers(logits, s)
        kept = set(probs.nonzero().flatten().tolist())
        cfg = GenerationConfig(max_new_tokens=1, seed=case, num_return_sequences=n, **s)
        drawn = {g.token_ids[0] for g in generate(FixedLogits(logits), None, [[0]], cfg)}
        assert drawn <= kept, (logits.tolist(), s)
        if float(probs[probs > 0].min()) * n > 14:  # (1 - p) ** n < 1e-6
            assert drawn == kept, (logits.tolist(), s)
            covered += len(kept) > 1
    assert covered >= 3, "too few cases where every kept token must show up: the test would be weak"


def hf_generate(hf, prompts: list[list[int]], *, eos: list[int], pad: int | None = None,
                **kw) -> tuple[list[list[int]], list[float] | None]:
    """transformers' generate on the batch left-padded with `pad` (default: the first eos id): each returned sequence
    cut before its first eos, and the beam scores (None without beams)."""
    pad = eos[0] if pad is None else pad
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=mask, do_sample=False, eos_token_id=eos, pad_token_id=pad,
                          return_dict_in_generate=True, output_scores=True, **kw)
    rows = out.sequences[:, width:].tolist()
    seqs = [row[:next((i for i, t in enumerate(row) if t in eos), len(row))] for row in rows]
    scores = out.sequences_scores.tolist() if kw.get("num_beams", 1) > 1 else None
    return seqs, scores


@pytest.fixture(scope="module")
def models():
    return hf_and_ours(seed=0, vocab=48)


@pytest.mark.parametrize("seed", range(3))
def test_greedy_and_beam_search_equal_transformers_on_random_batches(models, seed: int) -> None:
    """Prompts of different lengths, left-padded; one to three eos ids the model does produce; random num_beams,
    num_return_sequences, length_penalty, early_stopping, max_new_tokens and processors (logit_bias too). The n-gram
    ban runs one prompt at a time: transformers counts the padding as history there."""
    hf, ours = models
    rng = random.Random(seed)
    stopped = 0
    for _ in range(5):
        prompts = [[rng.randrange(48) for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 3))]
        # a token each prompt's greedy continuation reaches soon: rows end on different ids of the list
        eos = list(dict.fromkeys(plain_greedy(ours, p, rng.randint(1, 4))[-1] for p in prompts))
        rng.shuffle(eos)
        nb = rng.choice([1, 2, 3, 5])
        kw = dict(max_new_tokens=rng.randint(1, 12), num_beams=nb, num_return_sequences=rng.randint(1, nb))
        if nb > 1:
            kw["length_penalty"] = rng.choice([-0.5, 0.0, 0.7, 1.0, 2.0])
            kw["early_stopping"] = rng.choice([True, False, "never"])
        kw |= rng.choice([{}, {"min_new_tokens": min(kw["max_new_tokens"], 3)}, {"repetition_penalty": 1.3},
                          {"no_repeat_ngram_size": 2}, {"logit_bias": {rng.randrange(48): 2.0}}])
        groups = [[p] for p in prompts] if "no_repeat_ngram_size" in kw else [prompts]
        cfg = GenerationConfig(**kw)
        hf_kw = dict(kw)  # logit_bias of single tokens is transformers' sequence_bias
        if "logit_bias" in hf_kw:
            hf_kw["sequence_bias"] = {(t,): b for t, b in hf_kw.pop("logit_bias").items()}
        for group in groups:
            want, want_scores = hf_generate(hf, group, eos=eos, **hf_kw)
            if nb > 1:
                got = [g for per in beam_search(ours, group, cfg, eos_ids=eos) for g in per]
                assert [g.score for g in got] == pytest.approx(want_scores, abs=1e-4)
            else:
                got = generate(ours, None, group, cfg, temperature=0, stop_token_ids=eos)
            assert [g.token_ids for g in got] == want, (group, kw, eos)
            stopped += sum(g.finish_reason == "stop" for g in got)
    assert stopped, "no sequence ended on an eos id: the test would not cover stopping"


@pytest.mark.parametrize("settings", [dict(repetition_penalty=1.5), dict(no_repeat_ngram_size=1)], ids=str)
def test_padding_is_not_history(models, settings: dict) -> None:
    """Our padded batch gives each prompt what transformers gives it alone. The batch is padded with token 0 and a
    bias makes token 0 the model's favourite, so counting the padding as a seen token (ours pads with 0 too) changes
    what a padded row chooses: transformers' n-gram ban does (transformers before 5 counted it for the repetition
    penalty too)."""
    hf, ours = models
    prompts = [[5, 17, 42, 9, 3, 21, 30], [40, 2], [7]]
    settings = dict(max_new_tokens=6, **settings)
    hf_kw = dict(eos=[1], pad=0, sequence_bias={(0,): 4.0}, **settings)
    alone = [hf_generate(hf, [p], **hf_kw)[0][0] for p in prompts]
    if "no_repeat_ngram_size" in settings:
        assert hf_generate(hf, prompts, **hf_kw)[0] != alone, "counting the padding must matter here"
    got = generate(ours, None, prompts, temperature=0, stop_token_ids=[1], logit_bias={0: 4.0}, **settings)
    assert [g.token_ids for g in got] == alone
