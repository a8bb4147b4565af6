"""generate / generate_ids: the cached loop equals full forwards, batching changes nothing, seeds, stops, logprobs,
context length, sampling restricted by top-k/top-p/min-p, search dispatch, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nl_gen_helpers import UNICODE_TEXT, greedy_no_cache, memorized_lm, tiny_lm, unicode_tokenizer

from neurallayers.generation import Generation, GenerationConfig, generate, generate_ids, stream
from neurallayers.generation.processors import MinPWarper, TopKWarper, TopPWarper

PROMPTS = [[5, 9, 2], [7, 1, 3, 3, 8, 12, 4], [30], [11, 22, 33, 44, 55]]


@pytest.fixture(scope="module")
def model():
    return tiny_lm(seed=0)


def test_greedy_cache_equals_full_forwards(model) -> None:
    for prompt in PROMPTS:
        (g,) = generate(model, None, [prompt], temperature=0, max_new_tokens=12)
        assert g.token_ids == greedy_no_cache(model, prompt, 12)
        assert g.finish_reason == "length" and g.prompt_tokens == len(prompt) and g.text == ""


@pytest.mark.parametrize("settings", [
    dict(temperature=0),
    dict(temperature=0, repetition_penalty=1.5, no_repeat_ngram_size=2, frequency_penalty=0.5, min_new_tokens=3),
    dict(temperature=1.0, seed=7),
    dict(temperature=0.8, top_k=10, top_p=0.9, seed=3, num_return_sequences=3, presence_penalty=1.0),
])
def test_batched_equals_one_at_a_time(model, settings: dict) -> None:
    cfg = GenerationConfig(max_new_tokens=10, stop_token_ids=[3], **settings)
    batched = generate(model, None, PROMPTS, cfg)
    alone = [g for p in PROMPTS for g in generate(model, None, [p], cfg)]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    assert [g.finish_reason for g in batched] == [g.finish_reason for g in alone]
    assert len(batched) == len(PROMPTS) * cfg.num_return_sequences


def test_batched_equals_alone_with_dynamic_ntk_rope() -> None:
    """Dynamic NTK scales RoPE by the sequence length: by each row's own, so a padded batch changes no row (it
    did when the batch's longest row set everyone's scale)."""
    from neurallayers.config import ModelConfig
    from neurallayers.models.decoder import DecoderLM

    torch.manual_seed(1)
    lm = DecoderLM(ModelConfig(vocab_size=64, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                               init_std=0.3, position="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                               rope_scaling={"type": "dynamic", "factor": 2.0,
                                             "original_max_position_embeddings": 16})).eval()
    prompts = [list(range(1, 21)), [4, 8], [11, 12, 13, 14]]  # 20 tokens: past 16 from the prompt on
    for settings in (dict(temperature=0), dict(temperature=0.9, seed=3), dict(temperature=0, num_beams=2),
                     dict(temperature=0, penalty_alpha=0.6, top_k=4)):
        cfg = GenerationConfig(max_new_tokens=24, ignore_eos=True, **settings)
        alone = [generate(lm, None, [p], cfg)[0].token_ids for p in prompts]
        assert [g.token_ids for g in generate(lm, None, prompts, cfg)] == alone, settings


def test_every_method_decodes_in_inference_mode() -> None:
    """No autograd graph is built while decoding, whatever the method (a misplaced decorator once let speculative
    decoding record one)."""
    lm, helper = tiny_lm(seed=0), tiny_lm(seed=1)
    modes = []
    handles = [m.register_forward_hook(lambda *_: modes.append(torch.is_inference_mode_enabled()))
               for m in (lm, helper)]
    for method in (dict(temperature=0.8, seed=1), dict(num_beams=2), dict(penalty_alpha=0.5, top_k=3),
                   dict(amateur_model=helper), dict(draft_model=helper)):
        generate(lm, None, [[1, 2, 3]], max_new_tokens=4, **method)
    for h in handles:
        h.remove()
    assert len(modes) > 10 and all(modes)


@pytest.mark.parametrize("method", ["penalty_alpha", "amateur", "draft"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_method_returns_num_return_sequences(method: str, temperature: float) -> None:
    """Each prompt gets n sequences, prompt-major: n draws when sampled, n copies of the one deterministic answer
    (contrastive search and the greedy searches returned one sequence, silently, before)."""
    lm, helper = tiny_lm(seed=1, init_std=0.02), tiny_lm(seed=2, init_std=0.02)
    kwargs = {"penalty_alpha": dict(penalty_alpha=0.5, top_k=3), "amateur": dict(amateur_model=helper),
              "draft": dict(draft_model=helper)}[method]
    prompts = [[1, 2, 3], [4, 5]][:1 if method == "draft" else 2]  # speculative decoding takes one prompt
    gens = generate(lm, None, prompts, max_new_tokens=8, temperature=temperature, seed=3, num_return_sequences=3,
                    **kwargs)
    assert len(gens) == 3 * len(prompts)
    one = generate(lm, None, prompts, max_new_tokens=8, temperature=temperature, seed=3, **kwargs)
    per_prompt = [{tuple(g.token_ids) for g in gens[i * 3:(i + 1) * 3]} for i in range(len(prompts))]
    if temperature == 0 or method == "penalty_alpha":  # deterministic: three copies of the single answer
        assert per_prompt == [{tuple(g.token_ids)} for g in one]
    else:
        assert [len(s) for s in per_prompt] == [3] * len(prompts)
        if method == "draft":  # speculative sequence k samples with seed (seed, k): sequence 0 is the seeded one
            assert gens[0].token_ids == one[0].token_ids


def test_seeds(model) -> None:
    flat = tiny_lm(seed=1, init_std=0.02)  # near-uniform next-token distributions: samples differ by seed
    cfg = GenerationConfig(temperature=1.0, max_new_tokens=16)
    runs = {s: generate(flat, None, [[1, 2]], cfg, seed=s)[0].token_ids for s in (1, 1, 2)}
    assert generate(flat, None, [[1, 2]], cfg, seed=1)[0].token_ids == runs[1]
    assert runs[1] != runs[2]
    two = generate(flat, None, [[1, 2]], cfg, seed=1, num_return_sequences=2)
    assert two[0].token_ids == runs[1] and two[1].token_ids != runs[1]  # sequence k draws from seed (1, k)
    assert generate(model, None, [[1, 2]], cfg, seed=None)  # unseeded sampling runs
    for seed in (2**64 - 1, -2**63):  # the ends of what torch's generators take
        assert generate(model, None, [[1, 2]], cfg, seed=seed, num_return_sequences=2)
    # a batch of one prompt repeated: seeded, each row is that prompt alone; unseeded, each row draws its own seed
    assert {tuple(g.token_ids) for g in generate(flat, None, [[1, 2]] * 3, cfg, seed=1)} == {tuple(runs[1])}
    assert len({tuple(g.token_ids) for g in generate(flat, None, [[1, 2]] * 3, cfg, seed=None)}) == 3


def test_stop_token_and_length(model) -> None:
    free = greedy_no_cache(model, PROMPTS[1], 8)
    stop = free[4]
    k = free.index(stop)
    (g,) = generate(model, None, [PROMPTS[1]], temperature=0, max_new_tokens=8, stop_token_ids=[stop])
    assert g.token_ids == free[:k] and g.finish_reason == "stop"
    (g,) = generate_ids(model, [PROMPTS[1]], GenerationConfig(temperature=0, max_new_tokens=8), eos_ids=[stop])
    assert g.token_ids == free[:k] and g.finish_reason == "stop"
    (g,) = generate_ids(model, [PROMPTS[1]], GenerationConfig(temperature=0, max_new_tokens=8, ignore_eos=True),
                        eos_ids=[stop])
    assert g.token_ids == free and g.finish_reason == "length"
    (g,) = generate(model, None, [PROMPTS[1]], temperature=0, max_new_tokens=5)
    assert g.token_ids == free[:5] and g.finish_reason == "length"
    # min_new_tokens holds the stop token back
    (g,) = generate(model, None, [PROMPTS[1]], temperature=0, max_new_tokens=8, stop_token_ids=[stop],
                    min_new_tokens=k + 1)
    assert len(g.token_ids) >= k + 1 and stop not in g.token_ids[:k + 1]


def test_eos_from_tokenizer_and_stop_strings() -> None:
    tok, lm = unicode_tokenizer(), memorized_lm()
    prompt = "héllo"
    (full,) = generate(lm, tok, prompt, temperature=0, max_new_tokens=40)
    assert full.text.startswith(" wörld 🙂 naïve")  # the memorized continuation
    for stop in ("café", "🎉", "ö", " wö"):
        (g,) = generate(lm, tok, prompt, temperature=0, max_new_tokens=40, stop=[stop, "never"])
        assert g.text == full.text[:full.text.index(stop)] and g.finish_reason == "stop"
        assert tok.decode(g.token_ids) == g.text or g.text.startswith(tok.decode(g.token_ids))
    # eos: make the tokenizer's eos the token that greedy decoding would produce 5th
    eos_tok = full.token_ids[4]
    (g,) = generate_ids(lm, [tok.encode(prompt)], GenerationConfig(temperature=0, max_new_tokens=40),
                        eos_ids=[eos_tok])
    assert g.finish_reason == "stop" and g.token_ids == full.token_ids[:full.token_ids.index(eos_tok)]


def test_stop_strings_batched_equals_alone() -> None:
    tok, lm = unicode_tokenizer(), memorized_lm()
    prompts = ["héllo", "héllo wörld 🙂 naïve", "héllo wörld"]  # prefixes of the memorized text
    cfg = GenerationConfig(temperature=0, max_new_tokens=30, stop=["ok", "🚀"])
    batched = generate(lm, tok, prompts, cfg)
    alone = [generate(lm, tok, p, cfg)[0] for p in prompts]
    assert [(g.text, g.token_ids, g.finish_reason) for g in batched] == [
        (g.text, g.token_ids, g.finish_reason) for g in alone]
    assert all(g.finish_reason == "stop" and "ok" not in g.text for g in batched)


def test_stop_strings_keep_the_last_token_of_a_prompt_whose_context_fills() -> None:
    """Batched with a short prompt, a prompt near the end of the context stops early (its context is full); with stop
    strings its text kept all but its last token (the row was done at that step, so its text skipped the token)."""
    tok, lm = unicode_tokenizer(), memorized_lm()
    ids = tok.encode(UNICODE_TEXT * 4)
    prompts = [ids[:lm.config.block_size - 4], ids[:5]]
    cfg = GenerationConfig(temperature=0, max_new_tokens=10, stop=["never there"])
    batched = generate(lm, tok, prompts, cfg)
    alone = [generate(lm, tok, [p], cfg)[0] for p in prompts]
    assert [(g.text, g.token_ids) for g in batched] == [(g.text, g.token_ids) for g in alone]
    assert len(batched[0].token_ids) == 5 and batched[0].text == tok.decode(batched[0].token_ids)


def test_logprobs_match_full_forward(model) -> None:
    prompt = PROMPTS[1]
    for cfg in (GenerationConfig(temperature=0, max_new_tokens=6, logprobs=3),
                GenerationConfig(temperature=1.0, seed=0, max_new_tokens=6, logprobs=2, top_k=5)):
        (g,) = generate(model, None, [prompt], cfg)
        assert len(g.logprobs) == len(g.token_ids) == 6
        with torch.inference_mode():
            logp = F.log_softmax(model(torch.tensor([prompt + g.token_ids])).logits[0].float(), dim=-1)
        for i, lp in enumerate(g.logprobs):
            row = logp[len(prompt) - 1 + i]
            assert lp.token_id == g.token_ids[i]
            assert lp.logprob == pytest.approx(float(row[lp.token_id]), abs=1e-4)
            top = torch.topk(row, cfg.logprobs)
            assert [t for t, _ in lp.top] == top.indices.tolist()
            assert [v for _, v in lp.top] == pytest.approx(top.values.tolist(), abs=1e-4)
    (g,) = generate(model, None, [prompt], temperature=0, max_new_tokens=3, logprobs=0)
    assert all(lp.top == [] for lp in g.logprobs)
    assert generate(model, None, [prompt], temperature=0, max_new_tokens=3)[0].logprobs is None


def test_context_length(model) -> None:
    block = model.config.block_size
    with pytest.raises(ValueError, match=f"{block + 1} tokens.*block_size.*{block}"):
        generate(model, None, [[1] * (block + 1)], max_new_tokens=1)
    (g,) = generate(model, None, [[1] * (block - 2)], temperature=0, max_new_tokens=10)
    assert len(g.token_ids) == 3 and g.finish_reason == "length"  # 2 fed back + 1 from the full context
    # the search methods stop where the context is full too: the last token needs no position, except in contrastive
    # search, which feeds every candidate to score its hidden state
    short = tiny_lm(seed=4, block_size=12)
    methods = [dict(num_beams=2), dict(penalty_alpha=0.6, top_k=4), dict(amateur_model=tiny_lm(seed=5)),
               dict(draft_model=tiny_lm(seed=5, block_size=10))]
    for method in methods:
        fed = "penalty_alpha" in method
        for prompt in ([1] * 5, [2, 3]):
            (g,) = generate(model if "draft_model" not in method else short, None, [prompt], temperature=0,
                            max_new_tokens=100, min_new_tokens=100, ignore_eos=True, **method)
            room = (12 if "draft_model" in method else block) - len(prompt) + 1 - fed  # the target's: a draft's
            # shorter context (10) only ends its proposals
            assert len(g.token_ids) == room and g.finish_reason == "length", method
        full = [3] * (12 if "draft_model" in method else block)  # a prompt that fills the context
        if fed:
            with pytest.raises(ValueError, match="block_size"):
                generate(model, None, [full], temperature=0, max_new_tokens=5, **method)
        else:
            (g,) = generate(model if "draft_model" not in method else short, None, [full], temperature=0,
                            max_new_tokens=5, ignore_eos=True, **method)
            assert len(g.token_ids) == 1 and g.finish_reason == "length", method
    # speculative greedy equals plain greedy up to the context's last token
    (spec,) = generate(short, None, [[2, 3]], temperature=0, max_new_tokens=100, ignore_eos=True,
                       draft_model=tiny_lm(seed=5, block_size=12))
    (plain,) = generate(short, None, [[2, 3]], temperature=0, max_new_tokens=100, ignore_eos=True)
    assert spec.token_ids == plain.token_ids and len(plain.token_ids) == 11


@pytest.mark.parametrize("method", [dict(), dict(temperature=0.9, seed=3, top_k=20), dict(num_beams=2),
                                    dict(penalty_alpha=0.6, top_k=4), dict(amateur="yes"),
                                    dict(amateur="yes", temperature=0.9, seed=3), dict(draft="yes"),
                                    dict(draft="yes", temperature=0.9, seed=3)])
def test_a_long_prompt_does_not_shorten_the_others(model, method: dict) -> None:
    """Batched with a prompt near the end of the context, each prompt still gets what it gets alone: its own room,
    not the longest prompt's (before, every row stopped where the longest one had to)."""
    block = model.config.block_size
    method = dict(method)
    if method.pop("amateur", None):
        method["amateur_model"] = tiny_lm(seed=5)
    if method.pop("draft", None):
        method["draft_model"] = tiny_lm(seed=5)
    method.setdefault("temperature", 0)
    prompts = [[5, 6, 7], [4] * (block - 6), [8, 9]]
    cfg = dict(max_new_tokens=20, ignore_eos=True, num_return_sequences=2 if method["temperature"] else 1, **method)
    together = generate(model, None, prompts, **cfg)
    alone = [g for p in prompts for g in generate(model, None, [p], **cfg)]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    assert [len(g.token_ids) for g in together[::cfg["num_return_sequences"]]] == \
        [20, 7 - ("penalty_alpha" in method), 20]


@pytest.mark.parametrize("warper, settings", [
    (TopKWarper(4), dict(top_k=4)),
    (TopPWarper(0.6), dict(top_p=0.6)),
    (MinPWarper(0.2), dict(min_p=0.2)),
])
def test_sampling_stays_in_the_allowed_set(warper, settings: dict) -> None:
    lm = tiny_lm(seed=2, init_std=0.2)
    prompt = [3, 4, 5]
    with torch.inference_mode():
        logits = lm(torch.tensor([prompt])).logits[:, -1].float()
    allowed = set(torch.nonzero(warper(torch.tensor([prompt]), logits)[0].isfinite()).flatten().tolist())
    assert 1 < len(allowed) < 30
    cfg = GenerationConfig(temperature=1.0, seed=0, max_new_tokens=1, num_return_sequences=200)
    firsts = [g.token_ids[0] for g in generate(lm, None, [prompt], cfg, **settings)]
    assert set(firsts) <= allowed and len(set(firsts)) > 1
    free = {g.token_ids[0] for g in generate(lm, None, [prompt], cfg)}
    assert free - allowed  # without the rule, sampling leaves the set: the check above can fail


def test_beam_dispatch_decodes_text() -> None:
    from neurallayers.generation import search

    tok, lm = unicode_tokenizer(), memorized_lm()
    cfg = GenerationConfig(num_beams=2, num_return_sequences=2, max_new_tokens=12)
    gens = generate(lm, tok, ["héllo", "naïve"], cfg)
    raw = search.beam_search(lm, [tok.encode("héllo"), tok.encode("naïve")], cfg, eos_ids=[tok.eos_id])
    assert [g.token_ids for g in gens] == [g.token_ids for per in raw for g in per]
    assert all(g.text == tok.decode(g.token_ids) for g in gens)
    (g, _) = generate(lm, tok, "héllo", cfg, stop=["🙂"])
    assert g.text == " wörld " and g.finish_reason == "stop"


def test_beam_stop_strings_decode_only_the_text_near_the_end(monkeypatch) -> None:
    """Beam search asks every candidate at every step whether its text holds a stop string: decoding its whole text
    each time made the search quadratic in its length; now each check decodes a few of its last tokens, and the
    hypotheses are those the whole-text check gives."""
    from neurallayers.generation import stop_strings

    tok = unicode_tokenizer()
    lm = tiny_lm(seed=3, vocab=tok.vocab_size, init_std=0.05, block_size=160)
    cfg = GenerationConfig(temperature=0, num_beams=2, num_return_sequences=2, max_new_tokens=80, ignore_eos=True)
    longest = []
    decode = type(tok).decode

    def counting(self, ids, *args, **kwargs):
        ids = list(ids)
        longest.append(len(ids))
        return decode(self, ids, *args, **kwargs)

    monkeypatch.setattr(type(tok), "decode", counting)
    gens = generate(lm, tok, "héllo", cfg, stop=["@@never@@"])
    assert [len(g.token_ids) for g in gens] == [80, 80] and max(longest) < 50  # was the whole text: 80+
    text, reasons = gens[0].text, []
    for stops in ([text[40:43]], [text[60:70], text[5:6]]):
        near = generate(lm, tok, "héllo", cfg, stop=stops)
        monkeypatch.setattr(stop_strings, "STOP_MARGIN", 10**9)  # the tail is then always the whole text
        whole = generate(lm, tok, "héllo", cfg, stop=stops)
        monkeypatch.setattr(stop_strings, "STOP_MARGIN", 8)
        assert [(g.token_ids, g.text, g.finish_reason, g.score) for g in near] == \
            [(g.token_ids, g.text, g.finish_reason, g.score) for g in whole]
        reasons += [g.finish_reason for g in near]
    assert "stop" in reasons


def test_beam_stop_check_finds_a_stop_string_that_a_long_token_completes() -> None:
    """The tail a beam candidate's stop check decodes grew only until it was longer than the stop strings: a newest
    token longer than that ("................", 16 characters) was decoded alone, and "D." across " END" and it
    went unseen, so the hypothesis ran on where transformers finishes it."""
    from neurallayers.data.tokenizers import Tokenizer, continuation_text
    from neurallayers.generation.stop_strings import _stop_check

    tok = Tokenizer.load("gpt2")
    prompt = tok.encode("The last words:")
    ids = tok.encode(" and so on END................ and on")
    assert tok.decode(ids[4:5]) == "................"
    for stops in (["D."], ["END...", "zz"], [" on E"]):
        holds = _stop_check(tok, stops, [prompt])
        for n in range(1, len(ids) + 1):
            if any(s in continuation_text(tok, prompt, ids[:n - 1]) for s in stops):
                break  # a running beam holds no stop string: it would have finished
            assert holds(0, ids[:n]) == any(s in continuation_text(tok, prompt, ids[:n]) for s in stops), (stops, n)
    assert _stop_check(tok, ["D."], [prompt])(0, ids[:5])


def test_an_encoder_is_refused_in_one_line() -> None:
    from neurallayers.generation import stream
    from neurallayers.models import ModelConfig, build_model

    encoder = build_model(ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16, causal=False))
    for call in (lambda: generate(encoder, None, [[1, 2]]), lambda: next(stream(encoder, None, [1, 2])),
                 lambda: generate_ids(encoder, [[1]], GenerationConfig(), eos_ids=[])):
        with pytest.raises(ValueError, match=r"is an encoder \(config.causal=False\).*does not generate text"):
            call()


@pytest.mark.parametrize("call, match", [
    (lambda m: generate(m, None, [[1, 2]], config={"temperature": 0}), "GenerationConfig"),
    (lambda m: generate(m, None, [[1, 2]], temprature=0.5), "did you mean 'temperature'"),
    (lambda m: generate(m, None, [[1, 2]], top_p=0), "top_p"),
    (lambda m: generate(m, None, []), "non-empty"),
    (lambda m: generate(m, None, [[]]), "prompt 0 is empty"),
    (lambda m: generate(m, None, [[1, 2], "x"]), "not a mix"),
    (lambda m: generate(m, None, "hello"), "need a tokenizer"),
    (lambda m: generate(m, None, [[1, 64]]), r"outside the vocabulary \[0, 64\)"),
    # a tensor row was "not a mix" and a numpy id "outside the vocabulary": say what they are and how to convert
    (lambda m: generate(m, None, [torch.tensor([1, 2])]), r"got a list of Tensor; convert .* with \.tolist\(\)"),
    (lambda m: generate(m, None, [list(np.array([1, 2]))]), r"prompt 0 holds int64 values, not token ids"),
    # transformers' input_ids, a tensor (or array) of prompts, was "must be a string, a non-empty list of strings ...",
    # naming neither what it got nor how to convert it (nor that .tolist() keeps a padded batch's pad ids)
    (lambda m: generate(m, None, torch.tensor([[1, 2], [0, 3]])),
     r"^prompts is an array \(Tensor\): .*ids\.tolist\(\).*padding"),
    (lambda m: generate(m, None, np.array([[1, 2]])), r"^prompts is an array \(ndarray\): .*ids\.tolist\(\)"),
    (lambda m: next(stream(m, unicode_tokenizer(), torch.tensor([1, 2]))),
     r"^prompt is an array \(Tensor\): .*\.tolist\(\)"),
    (lambda m: next(stream(m, unicode_tokenizer(), [1, 2.0])), r"prompt 0 holds float values, not token ids"),
    # one prompt's ids, as stream() takes them: the message said to convert with .tolist(), which they already were
    (lambda m: generate(m, None, [1, 2]), r"a list of ints: generate\(\) takes a list of prompts.* as \[ids\]"),
    (lambda m: generate(m, None, [[1, 2]], stop=["x"]), "stop strings need a tokenizer"),
    (lambda m: generate(m, None, [[1, 2]], num_beams=2, draft_model=m), "choose one decoding method"),
    (lambda m: generate_ids(m, [[1]], GenerationConfig(num_beams=2), eos_ids=[]), "num_beams"),
    (lambda m: generate_ids(m, [[1]], GenerationConfig(), eos_ids=[99]), "eos_ids"),
    (lambda m: generate(m, None, [[1, 2]], logprobs=True), r"GenerationConfig.logprobs=True"),  # OpenAI's flag
    (lambda m: generate(m, None, [[1, 2]], ignore_eos="yes"), "GenerationConfig.ignore_eos"),
    (lambda m: generate(m, None, [[1, 2]], logit_bias={-1: 5.0}), "GenerationConfig.logit_bias"),
    (lambda m: generate(m, None, [[1, 2]], stop_token_ids=[64]), r"stop_token_ids holds .*\[0, 64\): \[64\]"),
    (lambda m: generate(m, None, [[1, 2]], logit_bias={70: 1.0}), r"logit_bias holds .*\[0, 64\): \[70\]"),
    (lambda m: generate(m, None, [[1, 2]], num_beams=2, stop_token_ids=[64]), "stop_token_ids holds"),
    (lambda m: generate(m, None, [[1] * 70], num_beams=2), r"prompt 0 has 70 tokens.*at most 64"),
    # a prompt that fills the context leaves contrastive search no room for its candidates: the error blamed
    # max_new_tokens ("prompt (64 tokens) + max_new_tokens (1) needs 65 positions"), which no value of fixes
    (lambda m: generate(m, None, [[2], [1] * 64], penalty_alpha=0.5, top_k=3, max_new_tokens=1),
     r"prompt 1 has 64 tokens.*block_size 64.*at most 63 tokens"),
    # torch's generators take 64-bit seeds: a larger one failed inside torch, naming no field
    (lambda m: generate(m, None, [[1, 2]], seed=2**64), r"GenerationConfig.seed=.*\[-2\*\*63, 2\*\*64\)"),
    (lambda m: generate(m, None, [[1, 2]], seed=2**64, draft_model=m), "GenerationConfig.seed="),
    # a list of prompts to stream() was read as one prompt of odd ids; a tokenizer in the model's place was an
    # AttributeError from eval_mode
    (lambda m: next(stream(m, unicode_tokenizer(), ["a", "b"])), r"stream\(\) takes one prompt"),
    (lambda m: generate(unicode_tokenizer(), m, "a"), "generation needs a causal decoder .*got Tokenizer"),
])
def test_rejects_bad_input(model, call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(model)


def test_results_are_generations(model) -> None:
    gens = generate(model, None, [[1, 2, 3]], temperature=0, max_new_tokens=2)
    assert isinstance(gens, list) and all(isinstance(g, Generation) for g in gens)


@pytest.mark.parametrize("method", [dict(), dict(amateur="yes")])
def test_per_prompt_seeds_give_what_each_seed_gives_alone(model, method: dict) -> None:
    method = {"amateur_model": tiny_lm(seed=5)} if method else {}
    prompts, seeds = [[1, 2], [3, 4, 5], [1, 2]], [5, 6, 7]
    cfg = dict(temperature=1.0, max_new_tokens=10, ignore_eos=True, **method)
    together = generate(model, None, prompts, seeds=seeds, **cfg)
    alone = [generate(model, None, [p], seed=s, **cfg)[0] for p, s in zip(prompts, seeds, strict=True)]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    assert together[0].token_ids != together[2].token_ids  # the same prompt under two seeds
    with pytest.raises(ValueError, match="one per prompt"):
        generate(model, None, prompts, seeds=[1, 2], **cfg)
    with pytest.raises(ValueError, match=r"seeds must be .*\[-2\*\*63, 2\*\*64\)"):  # torch's generators' range
        generate(model, None, prompts, seeds=[5, 2**64, 7], **cfg)


def test_completion_tokens_count_every_chosen_token() -> None:
    """token_ids hold what is returned; completion_tokens also counts a final stop token and a stop string's tokens,
    as OpenAI and vLLM bill them, by every method alike."""
    model, tok = tiny_lm(seed=2, vocab=unicode_tokenizer().vocab_size), unicode_tokenizer()
    (free,) = generate(model, tok, "ab", temperature=0, max_new_tokens=12, ignore_eos=True)
    assert free.completion_tokens == len(free.token_ids) == 12
    stop_id = free.token_ids[5]
    first = free.token_ids.index(stop_id)
    for method in (dict(), dict(num_beams=1), dict(penalty_alpha=0.5, top_k=3)):
        (g,) = generate(model, tok, "ab", temperature=0, max_new_tokens=12, ignore_eos=True, stop_token_ids=[stop_id],
                        **method)
        if not method or method.get("num_beams") == 1:
            assert g.token_ids == free.token_ids[:first] and g.finish_reason == "stop"
        assert g.completion_tokens == len(g.token_ids) + (g.finish_reason == "stop")
    stop = tok.decode(free.token_ids[1:3])  # a stop string over two tokens
    (g,) = generate(model, tok, "ab", temperature=0, max_new_tokens=12, ignore_eos=True, stop=[stop])
    assert g.finish_reason == "stop" and stop not in g.text
    completed = next(k for k in range(1, 13) if stop in tok.decode(free.token_ids[:k]))  # the token ending it
    assert g.completion_tokens == completed > len(g.token_ids)


def test_generation_runs_without_dropout_and_leaves_the_models_mode_alone() -> None:
    """Sampling from a model mid-training: no dropout while generating (as eval), and the model still training after
    (generate used to switch it to eval for good, silently turning its dropout off for the rest of training)."""
    from neurallayers.models import ModelConfig, build_model

    torch.manual_seed(0)
    lm = build_model(ModelConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.5))
    for call in (lambda: generate(lm, None, [[1, 2, 3]], temperature=0, max_new_tokens=8)[0].token_ids,
                 lambda: [e.token_id for e in stream(lm, unicode_tokenizer(), [1, 2, 3], temperature=0,
                                                     max_new_tokens=8, ignore_eos=True) if e.token_id is not None],
                 lambda: generate(lm, None, [[1, 2, 3]], temperature=0, max_new_tokens=8, num_beams=2)[0].token_ids):
        lm.eval()
        want = call()
        lm.train()
        assert call() == want and lm.training


def test_generation_gives_each_submodule_its_own_mode_back() -> None:
    """A frozen part kept in eval by its user (here the embeddings and one block) stays in eval after generate and
    stream: only the top module's mode came back, set on every submodule, so their dropout came back on."""
    from neurallayers.models import ModelConfig, build_model

    lm = build_model(ModelConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=16, dropout=0.1))
    lm.train()
    lm.wte.eval()
    lm.blocks[0].eval()
    want = {name: m.training for name, m in lm.named_modules()}
    generate(lm, None, [[1, 2, 3]], max_new_tokens=2, temperature=0)
    list(stream(lm, unicode_tokenizer(), [1, 2, 3], temperature=0, max_new_tokens=2, ignore_eos=True))
    assert {name: m.training for name, m in lm.named_modules()} == want


def test_min_new_tokens_holds_eos_back_with_ignore_eos_too(model) -> None:
    """ignore_eos makes eos an ordinary token, but min_new_tokens still holds it back, as vLLM's min_tokens and
    transformers' MinNewTokensLengthLogitsProcessor do (it chose eos at once, a bias on it winning)."""
    eos = 5
    cfg = GenerationConfig(temperature=0, max_new_tokens=5, min_new_tokens=3, ignore_eos=True, logit_bias={eos: 100})
    (g,) = generate_ids(model, [PROMPTS[1]], cfg, eos_ids=[eos])
    assert eos not in g.token_ids[:3] and g.token_ids[3:] == [eos, eos] and g.finish_reason == "length"


@pytest.mark.parametrize("method", [dict(draft_model="draft"), dict(draft_model="draft", temperature=0.9, seed=2),
                                    dict(penalty_alpha=0.5, top_k=3), dict(amateur_model="draft"),
                                    dict(amateur_model="draft", temperature=0.9, seed=2, num_return_sequences=2)],
                         ids=str)
def test_a_stop_string_ends_the_decoding_of_every_method(method: dict) -> None:
    """Speculative decoding and the contrastive methods cut the text at a stop string only afterwards, and decoded to
    max_new_tokens first: a 3-token answer cost 100 forwards at max_new_tokens=100 (30x the plain loop's work). They
    now end a sequence where the plain loop does (the same token), so the output is what it was, for a few forwards."""
    lm, tok = memorized_lm(), unicode_tokenizer()
    draft = tiny_lm(seed=4, vocab=tok.vocab_size, n_embd=16)
    kw = {k: draft if v == "draft" else v for k, v in method.items()}
    prompts = ["héllo", "naïve"]
    soon = generate(lm, tok, prompts, max_new_tokens=8, temperature=0)
    stops = [g.text[4:7] for g in soon]  # each prompt's recited continuation meets one within a few tokens
    cfg = GenerationConfig(max_new_tokens=64, temperature=0, stop=stops)
    fed = []
    hook = lm.register_forward_hook(lambda mod, args, out: fed.append(out.logits.shape))
    try:
        gens = generate(lm, tok, prompts, cfg, **kw)
    finally:
        hook.remove()
    assert all(g.finish_reason == "stop" and g.stopped_by in stops for g in gens)
    assert max(g.completion_tokens for g in gens) < cfg.max_new_tokens
    # at most a forward per token and sequence (the prefill included), not one per token up to max_new_tokens
    assert len(fed) <= sum(g.completion_tokens + 1 for g in gens), (len(fed), [g.completion_tokens for g in gens])
    # what cutting the text afterwards gave: each sequence decoded to max_new_tokens without stop strings, then cut
    full = generate(lm, tok, prompts, cfg.replace(stop=[]), **kw)
    for g, f in zip(gens, full, strict=True):
        cut = min(i for s in stops if (i := f.text.find(s)) >= 0)
        assert g.text == f.text[:cut] and f.token_ids[:len(g.token_ids)] == g.token_ids
