"""config.logprobs on the search paths: every method reports each generated token's log-probability under the
model's own distribution (the target's for speculative decoding, the expert's for contrastive decoding), before
processors, as generate() does; checked against full forwards of prompt + generated tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nl_search_helpers import plain_greedy, tiny

from neurallayers.generation.config import GenerationConfig, TokenLogprob
from neurallayers.generation.generate import generate
from neurallayers.generation.search import beam_search, contrastive_decoding, contrastive_search
from neurallayers.generation.speculative import speculative_decode

PROMPTS = [[5, 17, 42, 9, 3], [60, 2, 33], [7, 7, 21, 40, 14, 50, 11], [9]]


@pytest.fixture(scope="module")
def model():
    return tiny(seed=1, n_layer=2, n_embd=32, init_std=0.15)


@pytest.fixture(scope="module")
def small():
    return tiny(seed=2, n_layer=1, n_embd=16, n_head=2, init_std=0.15)


@torch.inference_mode()
def assert_model_logprobs(net, prompt: list[int], gen, n: int) -> None:
    """gen.logprobs equal the log-softmax of a full forward over prompt + tokens, and the top n of it."""
    toks = gen.token_ids
    assert gen.logprobs is not None and len(gen.logprobs) == len(toks)
    if not toks:
        return
    logits = net(torch.tensor([prompt + toks])).logits[0, len(prompt) - 1:len(prompt) - 1 + len(toks)]
    logp = F.log_softmax(logits.float(), dim=-1)
    want = logp.gather(1, torch.tensor(toks)[:, None])[:, 0]
    top_lp, top_ids = logp.topk(n, dim=-1)
    for i, rec in enumerate(gen.logprobs):
        assert isinstance(rec, TokenLogprob) and rec.token_id == toks[i]
        assert rec.logprob == pytest.approx(float(want[i]), abs=1e-4)
        assert [t for t, _ in rec.top] == top_ids[i].tolist()
        assert [v for _, v in rec.top] == pytest.approx(top_lp[i].tolist(), abs=1e-4)


@pytest.mark.parametrize("n", [0, 3])
@pytest.mark.parametrize("extra", [{}, {"repetition_penalty": 1.4, "min_new_tokens": 3}])
def test_beam_search_logprobs_are_the_models(model, n, extra):
    eos = plain_greedy(model, PROMPTS[0], 3)[2]
    cfg = GenerationConfig(max_new_tokens=9, num_beams=3, num_return_sequences=3, logprobs=n, **extra)
    results = beam_search(model, PROMPTS, cfg, eos_ids=[eos])
    assert any(g.finish_reason == "stop" for per in results for g in per) or extra, "cover the stop token's trim"
    for prompt, per in zip(PROMPTS, results, strict=True):
        for g in per:
            assert_model_logprobs(model, prompt, g, n)


@pytest.mark.parametrize("length_penalty", [0.5, 1.0, 2.0])
def test_beam_logprobs_add_up_to_the_beam_score(model, length_penalty):
    """Without processors a hypothesis' score is its summed token log-probabilities over length ** penalty."""
    cfg = GenerationConfig(max_new_tokens=7, num_beams=3, num_return_sequences=3, logprobs=0, ignore_eos=True,
                           length_penalty=length_penalty)
    for per in beam_search(model, PROMPTS, cfg, eos_ids=[]):
        for g in per:
            assert len(g.token_ids) == 7
            assert sum(r.logprob for r in g.logprobs) / 7**length_penalty == pytest.approx(g.score, abs=1e-4)


@pytest.mark.parametrize("n", [0, 2])
def test_contrastive_logprobs_are_the_models(model, small, n):
    eos = [plain_greedy(model, PROMPTS[1], 4)[3]]
    cfg = GenerationConfig(max_new_tokens=8, penalty_alpha=0.6, top_k=4, logprobs=n, presence_penalty=0.5)
    for prompt, (g,) in zip(PROMPTS, contrastive_search(model, PROMPTS, cfg, eos_ids=eos), strict=True):
        assert_model_logprobs(model, prompt, g, n)
    cfg = GenerationConfig(max_new_tokens=8, temperature=0.8, seed=3, contrastive_alpha=0.05, logprobs=n)
    for prompt, (g,) in zip(PROMPTS, contrastive_decoding(model, small, PROMPTS, cfg, eos_ids=eos), strict=True):
        assert_model_logprobs(model, prompt, g, n)  # the expert's distribution


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_speculative_logprobs_are_the_targets(model, small, temperature):
    prompt = PROMPTS[0]
    eos = plain_greedy(model, prompt, 12)[11]
    cfg = GenerationConfig(max_new_tokens=14, temperature=temperature, seed=5, num_speculative_tokens=3, logprobs=2)
    stats: dict = {}
    ((g,),) = speculative_decode(model, small, [prompt], cfg, eos_ids=[eos], stats=stats)
    assert stats["accepted"] < stats["drafted"], "some drafts must be rejected, or the residual path is untested"
    assert_model_logprobs(model, prompt, g, 2)
    if temperature == 0:
        assert g.finish_reason == "stop" and len(g.token_ids) == 11


def test_logprobs_off_gives_none_and_generate_passes_them_through(model, small):
    cfg = GenerationConfig(max_new_tokens=4, num_beams=2)
    assert beam_search(model, PROMPTS, cfg, eos_ids=[])[0][0].logprobs is None
    off = GenerationConfig(max_new_tokens=4, penalty_alpha=0.5, top_k=3)
    assert contrastive_search(model, PROMPTS, off, eos_ids=[])[0][0].logprobs is None
    assert speculative_decode(model, small, [PROMPTS[0]], GenerationConfig(max_new_tokens=4, temperature=0),
                              eos_ids=[])[0][0].logprobs is None
    for kw in (dict(num_beams=3, num_return_sequences=2), dict(penalty_alpha=0.5, top_k=3)):
        gens = generate(model, None, PROMPTS, max_new_tokens=5, logprobs=1, **kw)
        assert len(gens) == len(PROMPTS) * kw.get("num_return_sequences", 1)
        for i, g in enumerate(gens):
            assert_model_logprobs(model, PROMPTS[i // kw.get("num_return_sequences", 1)], g, 1)
    (g,) = generate(model, None, [PROMPTS[2]], max_new_tokens=5, logprobs=1, temperature=0, draft_model=small)
    assert_model_logprobs(model, PROMPTS[2], g, 1)


@pytest.mark.parametrize("method", [dict(temperature=0), dict(temperature=0.8, seed=1), dict(num_beams=2),
                                    dict(penalty_alpha=0.5, top_k=3), dict(amateur="yes"), dict(draft="yes")])
def test_more_alternatives_than_the_vocabulary_has_are_refused_by_every_method(method):
    """A character vocabulary can be smaller than logprobs' 20: torch.topk failed ("selected index k out of range")
    in every method, naming no field. As many alternatives as tokens is fine."""
    net, other = tiny(seed=3, vocab=8, n_embd=16, n_head=2), tiny(seed=4, vocab=8, n_embd=16, n_head=2)
    method = dict(method)
    if method.pop("amateur", None):
        method["amateur_model"] = other
    if method.pop("draft", None):
        method["draft_model"] = other
    with pytest.raises(ValueError, match=r"GenerationConfig.logprobs=12: .* 8 tokens, so at most 8 alternatives"):
        generate(net, None, [[1, 2]], max_new_tokens=3, logprobs=12, **method)
    (g, *_) = generate(net, None, [[1, 2]], max_new_tokens=3, logprobs=8, **method)
    assert all(len(lp.top) == 8 for lp in g.logprobs)
