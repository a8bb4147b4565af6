"""Speculative decoding: greedy equals the target's greedy decoding; sampled tokens follow the target's
distribution (chi-square on a vocabulary of 8); bad inputs give clear errors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from nl_search_helpers import chi2, chi2_threshold, plain_greedy, tiny

from neurallayers.generation.config import GenerationConfig
from neurallayers.generation.generate import _row_seed
from neurallayers.generation.search import build_processors, contrastive_search
from neurallayers.generation.speculative import speculative_decode

PROMPTS = [[5, 17, 42, 9, 3], [60, 2, 33], [7], [7, 7, 21, 40, 14, 50, 11, 3, 3, 8]]


@pytest.fixture(scope="module")
def pair():
    return tiny(seed=1, n_layer=2, n_embd=32), tiny(seed=2, n_layer=1, n_embd=16, n_head=2)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_equals_target_greedy(pair, k):
    target, draft = pair
    rates = []
    for prompt in PROMPTS:
        stats: dict = {}
        cfg = GenerationConfig(max_new_tokens=20, temperature=0, num_speculative_tokens=k)
        ((got,),) = speculative_decode(target, draft, [prompt], cfg, eos_ids=[], stats=stats)
        assert got.token_ids == plain_greedy(target, prompt, 20)
        assert got.finish_reason == "length" and got.prompt_tokens == len(prompt)
        assert stats["new_tokens"] == 20 and stats["target_forwards"] == stats["rounds"]
        assert stats["target_forwards"] < 20 or stats["acceptance_rate"] == 0
        rates.append(stats["acceptance_rate"])
    assert max(rates) < 0.9, "the draft should disagree with the target often, or the test proves little"


def test_greedy_stops_on_eos_and_applies_processors(pair):
    target, draft = pair
    prompt = PROMPTS[0]
    eos = plain_greedy(target, prompt, 6)[5]
    cfg = GenerationConfig(max_new_tokens=20, temperature=0, num_speculative_tokens=3)
    ((got,),) = speculative_decode(target, draft, [prompt], cfg, eos_ids=[eos])
    assert got.token_ids == plain_greedy(target, prompt, 20, eos=[eos]) and got.finish_reason == "stop"
    # with penalties the target's greedy path is the processed one
    cfg = cfg.replace(repetition_penalty=1.4, no_repeat_ngram_size=2)
    procs = build_processors(cfg, [], prompt_width=len(prompt), sampling=False)
    ((got,),) = speculative_decode(target, draft, [prompt], cfg, eos_ids=[])
    assert got.token_ids == plain_greedy(target, prompt, 20, procs=procs) != plain_greedy(target, prompt, 20)


def test_same_model_as_draft_accepts_everything(pair):
    target, _ = pair
    stats: dict = {}
    cfg = GenerationConfig(max_new_tokens=13, temperature=0, num_speculative_tokens=4)
    ((got,),) = speculative_decode(target, target, [PROMPTS[1]], cfg, eos_ids=[], stats=stats)
    assert got.token_ids == plain_greedy(target, PROMPTS[1], 13)
    assert stats["acceptance_rate"] == 1.0 and stats["rounds"] == 3  # 5 + 5 + 3 tokens


@torch.inference_mode()
def exact(model, prompt: list[int], temperature: float, top_k: int) -> tuple[dict, dict]:
    """The model's own processed distributions: first token, and (first, second) jointly."""
    def dist(ids: list[int]) -> torch.Tensor:
        logits = model(torch.tensor([ids])).logits[0, -1].double() / temperature
        if top_k:
            logits = logits.masked_fill(logits < logits.topk(top_k).values[-1], float("-inf"))
        return logits.softmax(-1)
    p1 = dist(prompt)
    first = {a: float(p1[a]) for a in range(len(p1))}
    joint = {(a, b): float(p1[a] * dist(prompt + [a])[b]) for a in range(len(p1)) for b in range(len(p1))}
    return first, joint


@pytest.mark.parametrize(("k", "temperature", "top_k"), [(2, 1.0, 0), (1, 0.7, 5)])
def test_sampled_tokens_follow_the_target_distribution(k, temperature, top_k):
    target = tiny(seed=3, vocab=8, n_layer=1, n_embd=16, n_head=2, init_std=0.5)
    draft = tiny(seed=4, vocab=8, n_layer=1, n_embd=16, n_head=2, init_std=0.5)
    prompt, n = [1, 5, 2], 1500
    cfg = GenerationConfig(max_new_tokens=k + 1, temperature=temperature, top_k=top_k, num_speculative_tokens=k,
                           ignore_eos=True)
    firsts, pairs, drafted, accepted = Counter(), Counter(), 0, 0
    for seed in range(n):
        stats: dict = {}
        ((g,),) = speculative_decode(target, draft, [prompt], cfg.replace(seed=seed), eos_ids=[], stats=stats)
        firsts[g.token_ids[0]] += 1
        pairs[tuple(g.token_ids[:2])] += 1
        drafted, accepted = drafted + stats["drafted"], accepted + stats["accepted"]
    assert 0.05 < accepted / drafted < 0.95, "both accept and reject paths must be exercised"
    first, joint = exact(target, prompt, temperature, top_k)
    for counts, probs in ((firsts, first), (pairs, joint)):
        stat, df = chi2(counts, probs, n)
        assert stat < chi2_threshold(df), (stat, df)
    # the test has power: the draft's own distribution is rejected by the same samples
    draft_first, _ = exact(draft, prompt, temperature, top_k)
    mixed = {a: 0.5 * first[a] + 0.5 * draft_first[a] for a in first}
    stat, df = chi2(firsts, mixed, n)
    assert stat > chi2_threshold(df)


def test_rejects_bad_input(pair):
    target, draft = pair
    cfg = GenerationConfig(max_new_tokens=4, temperature=0)
    with pytest.raises(ValueError, match="exactly one prompt"):
        speculative_decode(target, draft, [[1, 2], [3]], cfg, eos_ids=[])
    other = tiny(seed=5, vocab=80, n_layer=1, n_embd=16, n_head=2)
    with pytest.raises(ValueError, match="vocab_size=80"):
        speculative_decode(target, other, [[1, 2]], cfg, eos_ids=[])
    short = tiny(seed=5, n_layer=1, n_embd=16, n_head=2, block_size=8)
    with pytest.raises(ValueError, match="prompt 0 .*block_size is 8"):
        speculative_decode(short, draft, [[1, 2, 3, 4, 5, 6]], cfg, eos_ids=[])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        speculative_decode(target, draft, [[1, 64]], cfg, eos_ids=[])


def test_a_dynamic_ntk_target_is_refused_past_its_trained_length():
    """Its logits depend on how many tokens one forward holds past the trained length: the verifying forward would
    not reproduce plain decoding. Within the trained length it is exact, and runs."""
    from neurallayers.config import ModelConfig
    from neurallayers.models.decoder import DecoderLM

    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=64, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, init_std=0.3,
                      position="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                      rope_scaling={"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 16})
    target = DecoderLM(cfg).eval()
    draft = DecoderLM(cfg.replace(n_layer=1)).eval()
    greedy = GenerationConfig(max_new_tokens=10, temperature=0, ignore_eos=True, num_speculative_tokens=3)
    (g,), = speculative_decode(target, draft, [[1, 2, 3, 4, 5, 6]], greedy, eos_ids=[])  # 16 positions: fits
    assert g.token_ids == plain_greedy(target, [1, 2, 3, 4, 5, 6], 10)
    with pytest.raises(ValueError, match="dynamic NTK.*trained length of 16 positions.*reaches 17"):
        speculative_decode(target, draft, [[1, 2, 3, 4, 5, 6, 7]], greedy, eos_ids=[])


def test_a_draft_with_a_shorter_context_does_not_shorten_the_output(pair):
    """A draft with a context of 8 cut the target's greedy output at 8 positions (finish_reason "length", and the CLI
    named the target's context): the draft only proposes, and past its context the target goes on alone."""
    from neurallayers.generation import generate

    target, _ = pair
    short = tiny(seed=5, n_layer=1, n_embd=16, n_head=2, block_size=8)
    prompt = PROMPTS[0]
    stats: dict = {}
    cfg = GenerationConfig(max_new_tokens=30, temperature=0, num_speculative_tokens=3)
    ((got,),) = speculative_decode(target, short, [prompt], cfg, eos_ids=[], stats=stats)
    assert got.token_ids == plain_greedy(target, prompt, 30) and stats["drafted"] > 0
    (g,) = generate(target, None, [prompt], cfg, draft_model=short)
    assert g.token_ids == got.token_ids and g.finish_reason == "length"
    long_prompt = list(range(10))  # longer than the draft's whole context: the target decodes alone
    (g,) = generate(target, None, [long_prompt], cfg, draft_model=short)
    assert g.token_ids == plain_greedy(target, long_prompt, 30)


@pytest.mark.parametrize(("prompt", "eos", "ngram", "max_new", "k"),
                         [([5, 0, 3], [], 2, 21, 7), ([1, 5, 3, 3], [4], 1, 12, 6), ([0, 2, 5], [3], 1, 20, 7)])
def test_a_ban_on_a_path_the_target_never_takes_is_no_error(prompt, eos, ngram, max_new, k):
    """The draft's own path (tokens the target then rejects, or past a drafted eos) could leave no_repeat_ngram_size no
    token: speculative decoding raised "bans every token" where the target's greedy decoding, which it must equal, ran
    to its end or stopped at eos."""
    from neurallayers.generation import generate

    target = tiny(seed=3, vocab=6, n_layer=1, n_embd=16, n_head=2, block_size=40)
    draft = tiny(seed=4, vocab=6, n_layer=1, n_embd=16, n_head=2, block_size=40)
    target.generation_eos_ids = eos  # what generate() reads without a tokenizer
    cfg = GenerationConfig(max_new_tokens=max_new, temperature=0, no_repeat_ngram_size=ngram, num_speculative_tokens=k)
    (want,) = generate(target, None, [prompt], cfg)
    (got,) = generate(target, None, [prompt], cfg, draft_model=draft)
    assert (got.token_ids, got.finish_reason) == (want.token_ids, want.finish_reason)
    # a ban on the target's own path is still an error, as in plain decoding
    with pytest.raises(ValueError, match="bans every token"):
        generate(target, None, [prompt], cfg.replace(max_new_tokens=30, no_repeat_ngram_size=1), draft_model=draft,
                 ignore_eos=True)


def test_errors_name_the_prompt_by_its_place_in_the_call(pair):
    """Speculative decoding takes one prompt at a time, and contrastive search prompts grouped by their room: a bad
    second prompt was named "input_ids[0]", its place in that group."""
    from neurallayers.generation import generate

    target, draft = pair
    with pytest.raises(ValueError, match=r"^prompt 1 holds token ids outside the vocabulary \[0, 64\): \[64\]"):
        generate(target, None, [[1, 2], [3, 64]], temperature=0, max_new_tokens=3, draft_model=draft)
    with pytest.raises(ValueError, match=r"^prompt 2 is empty"):
        generate(target, None, [[1] * 63, [1, 2], []], top_k=3, penalty_alpha=0.5, max_new_tokens=3)
    with pytest.raises(ValueError, match=r"^prompt 0 \(8 tokens\) \+ max_new_tokens \(60\) needs 67 positions"):
        speculative_decode(target, draft, [[1] * 8], GenerationConfig(max_new_tokens=60), eos_ids=[])
    cfg = GenerationConfig(max_new_tokens=60, top_k=3, penalty_alpha=0.5)
    with pytest.raises(ValueError, match=r"^prompt 1 \(8 tokens\) \+ max_new_tokens \(60\) needs 68 positions"):
        contrastive_search(target, [[1, 2], [1] * 8], cfg, eos_ids=[])


def test_unseeded_sampling_draws_from_torch_global_rng_as_plain_sampling_does(pair):
    """Without a seed, generate() takes each prompt's seed from torch's global generator, so torch.manual_seed makes
    a run repeatable; speculative sampling seeded itself from the OS instead (draft_model= alone unrepeatable)."""
    target, draft = pair
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.0, num_speculative_tokens=3)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        ((got,),) = speculative_decode(target, draft, [PROMPTS[0]], cfg, eos_ids=[])
        runs.append(got.token_ids)
    assert runs[0] == runs[1]
    draws = {tuple(speculative_decode(target, draft, [PROMPTS[0]], cfg, eos_ids=[])[0][0].token_ids)
             for _ in range(4)}
    assert len(draws) > 1  # still a fresh seed per call


def test_returns_num_return_sequences_as_beam_search_does(pair):
    """speculative_decode returned one sequence whatever num_return_sequences asked for (only generate() looped over
    it): sequence k is now drawn with the seed (seed, k), as generate() seeds a prompt's k-th sample; greedy gives n
    copies; stats count every sequence's rounds and tokens."""
    target, draft = pair
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.5, seed=3, num_speculative_tokens=2, num_return_sequences=3)
    stats: dict = {}
    (got,) = speculative_decode(target, draft, [PROMPTS[1]], cfg, eos_ids=[], stats=stats)
    one = cfg.replace(num_return_sequences=1)
    want = [speculative_decode(target, draft, [PROMPTS[1]], one.replace(seed=_row_seed(3, k)), eos_ids=[])[0][0]
            for k in range(3)]
    assert [g.token_ids for g in got] == [g.token_ids for g in want]
    assert len({tuple(g.token_ids) for g in got}) > 1, "the samples must differ"
    assert stats["new_tokens"] == 24 and stats["target_forwards"] == stats["rounds"] >= 3
    (got,) = speculative_decode(target, draft, [PROMPTS[1]], cfg.replace(temperature=0), eos_ids=[])
    assert [g.token_ids for g in got] == [plain_greedy(target, PROMPTS[1], 8)] * 3
    got[0].token_ids.append(0)  # copies, not one object three times
    assert len(got[1].token_ids) == 8
