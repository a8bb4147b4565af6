"""Contrastive search equals a naive reference written from its definition (Su et al. 2022; transformers 5 moved
its own implementation to a hub repository); contrastive decoding picks per Li et al. 2022."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from nl_search_helpers import plain_greedy, tiny

from neurallayers.generation.config import GenerationConfig
from neurallayers.generation.search import contrastive_decoding, contrastive_search

PROMPTS = [[5, 17, 42, 9, 3], [60, 2, 33], [7], [7, 7, 21, 40, 14, 50, 11, 3, 3, 8]]


@pytest.fixture(scope="module")
def model():
    return tiny(seed=1, n_layer=2, n_embd=32, init_std=0.15)


@torch.inference_mode()
def naive_contrastive_search(model, prompt: list[int], n: int, *, k: int, alpha: float) -> list[int]:
    """The definition, with full forwards and no cache: score each top-k candidate by
    (1 - alpha) * p(v) - alpha * max cosine(hidden of v, hidden of each context token)."""
    ids = list(prompt)
    for _ in range(n):
        out = model(torch.tensor([ids]), output_hidden=True)
        probs = out.logits[0, -1].float().softmax(-1)
        context = F.normalize(out.hidden[0].float(), dim=-1)  # (T, D)
        top_p, top_ids = probs.topk(k)
        best, best_score = None, -math.inf
        for p, v in zip(top_p.tolist(), top_ids.tolist(), strict=True):
            h = F.normalize(model(torch.tensor([ids + [v]]), output_hidden=True).hidden[0, -1].float(), dim=-1)
            score = (1 - alpha) * p - alpha * float((context @ h).max())
            if score > best_score:
                best, best_score = v, score
        ids.append(best)
    return ids[len(prompt):]


@pytest.mark.parametrize(("k", "alpha"), [(4, 0.6), (6, 0.3), (3, 0.9)])
def test_contrastive_search_equals_reference(model, k, alpha):
    cfg = GenerationConfig(max_new_tokens=12, top_k=k, penalty_alpha=alpha)
    differs = 0
    for prompt in PROMPTS:
        ((got,),) = contrastive_search(model, [prompt], cfg, eos_ids=[])
        want = naive_contrastive_search(model, prompt, 12, k=k, alpha=alpha)
        assert got.token_ids == want and got.finish_reason == "length"
        differs += want != plain_greedy(model, prompt, 12)
    assert differs, "the degeneration penalty never changed a choice: the test would not see it"


def test_contrastive_search_alpha_zero_is_greedy_and_batches(model):
    cfg = GenerationConfig(max_new_tokens=10, top_k=4, penalty_alpha=0.0)
    got = contrastive_search(model, PROMPTS, cfg, eos_ids=[])
    assert [g.token_ids for (g,) in got] == [plain_greedy(model, p, 10) for p in PROMPTS]
    cfg = cfg.replace(penalty_alpha=0.6)
    eos = naive_contrastive_search(model, PROMPTS[0], 4, k=4, alpha=0.6)[3]
    batched = contrastive_search(model, PROMPTS, cfg, eos_ids=[eos])
    alone = [contrastive_search(model, [p], cfg, eos_ids=[eos])[0] for p in PROMPTS]
    assert [(g.token_ids, g.finish_reason) for (g,) in batched] == [(g.token_ids, g.finish_reason) for (g,) in alone]
    assert batched[0][0].finish_reason == "stop" and len(batched[0][0].token_ids) == 3


@pytest.fixture(scope="module")
def expert_amateur():
    return tiny(seed=1, n_layer=2, n_embd=32, init_std=0.3), tiny(seed=7, n_layer=1, n_embd=16, n_head=2)


@torch.inference_mode()
def test_contrastive_decoding_picks_by_definition(expert_amateur):
    expert, amateur = expert_amateur
    alpha, n = 0.1, 10
    cfg = GenerationConfig(max_new_tokens=n, temperature=0, contrastive_alpha=alpha)
    differs = 0
    for prompt, (got,) in zip(PROMPTS, contrastive_decoding(expert, amateur, PROMPTS, cfg, eos_ids=[]), strict=True):
        ids = list(prompt)
        for tok in got.token_ids:
            x = torch.tensor([ids])
            lp_e, lp_a = (F.log_softmax(m(x).logits[0, -1].double(), -1) for m in (expert, amateur))
            plausible = lp_e.exp() >= alpha * lp_e.exp().max()
            assert plausible[tok]
            diff = lp_e - lp_a
            assert torch.all(diff[plausible] <= diff[tok] + 1e-5), "a plausible token scores higher"
            ids.append(tok)
        differs += got.token_ids != plain_greedy(expert, prompt, n)
    assert differs, "the amateur never changed a choice: the crafted case proves nothing"


def test_contrastive_decoding_extremes_and_sampling(expert_amateur):
    expert, amateur = expert_amateur
    # a cut-off near 1 leaves only the expert's argmax: greedy decoding of the expert
    cfg = GenerationConfig(max_new_tokens=8, temperature=0, contrastive_alpha=0.999)
    got = contrastive_decoding(expert, amateur, PROMPTS, cfg, eos_ids=[])
    assert [g.token_ids for (g,) in got] == [plain_greedy(expert, p, 8) for p in PROMPTS]
    # sampling: seeded, reproducible, and never outside the plausible set
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0, contrastive_alpha=0.3, seed=3)
    a = contrastive_decoding(expert, amateur, PROMPTS[:2], cfg, eos_ids=[])
    assert a == contrastive_decoding(expert, amateur, PROMPTS[:2], cfg, eos_ids=[])
    with torch.inference_mode():
        for prompt, (g,) in zip(PROMPTS[:2], a, strict=True):
            for i, tok in enumerate(g.token_ids):
                p = expert(torch.tensor([prompt + g.token_ids[:i]])).logits[0, -1].softmax(-1)
                assert p[tok] >= 0.3 * p.max() - 1e-6


def test_rejects_bad_input(model, expert_amateur):
    with pytest.raises(ValueError, match="top_k > 1"):
        contrastive_search(model, [[1, 2]], GenerationConfig(penalty_alpha=0.6, top_k=1), eos_ids=[])
    with pytest.raises(ValueError, match="top_k > 1"):
        contrastive_search(model, [[1, 2]], GenerationConfig(penalty_alpha=0.6), eos_ids=[])
    with pytest.raises(ValueError, match="penalty_alpha"):
        GenerationConfig(penalty_alpha=1.5, top_k=4)
    expert, _ = expert_amateur
    other = tiny(seed=5, vocab=80, n_layer=1, n_embd=16, n_head=2)
    with pytest.raises(ValueError, match="amateur vocab_size=80"):
        contrastive_decoding(expert, other, [[1, 2]], GenerationConfig(temperature=0), eos_ids=[])
    with pytest.raises(ValueError, match="block_size"):
        contrastive_search(model, [[1] * 60], GenerationConfig(top_k=3, penalty_alpha=0.5, max_new_tokens=10),
                           eos_ids=[])


def test_contrastive_search_returns_num_return_sequences(model):
    """contrastive_search returned one sequence a prompt whatever num_return_sequences asked for (only generate()
    copied it): a deterministic method gives n copies of its one sequence, as beam_search gives n hypotheses."""
    cfg = GenerationConfig(max_new_tokens=6, top_k=3, penalty_alpha=0.6)
    one = contrastive_search(model, PROMPTS[:2], cfg, eos_ids=[])
    got = contrastive_search(model, PROMPTS[:2], cfg.replace(num_return_sequences=3), eos_ids=[])
    assert [[g.token_ids for g in gens] for gens in got] == [[g.token_ids] * 3 for (g,) in one]
    got[0][0].token_ids.append(0)  # copies, not one object three times
    assert got[0][1].token_ids == one[0][0].token_ids
