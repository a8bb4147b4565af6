"""What the decoding methods sample and choose on a tiny vocabulary: plain and speculative sampling follow the target's
processed distribution (chi-square), bans hold in every method, a step with every token banned is a clear error,
and beam search finishes hypotheses at stop strings as transformers does."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from nl_gen_helpers import MarkovLM
from nl_search_helpers import chi2, chi2_threshold, hf_and_ours, tiny
from torch import nn

from neurallayers.generation import GenerationConfig
from neurallayers.generation.generate import generate, stream
from neurallayers.generation.processors import apply_processors, build_processors
from neurallayers.generation.speculative import speculative_decode

V = 8
PROMPT = [1, 5, 2]


@torch.inference_mode()
def exact_pairs(model: nn.Module, cfg: GenerationConfig) -> dict[tuple[int, int], float]:
    """P(first two generated tokens) under the model's logits through cfg's processors, in float64."""
    procs = build_processors(cfg, eos_ids=[], prompt_lens=len(PROMPT))

    def dist(ids: list[int]) -> torch.Tensor:
        logits = model(torch.tensor([ids])).logits[0, -1:].double()
        return apply_processors(procs, torch.tensor([ids]), logits)[0].softmax(-1)

    first = dist(PROMPT)
    return {(a, b): float(first[a] * dist([*PROMPT, a])[b]) for a in range(V) for b in range(V)}


def chi2_passes(counts: Counter, probs: dict, n: int) -> bool:
    """The Pearson test (nl_search_helpers.chi2) under its p = 5e-4 quantile; a token of probability 0 fails
    outright."""
    if any(probs.get(cell, 0.0) == 0.0 for cell in counts) or sum(counts.values()) != n:
        return False
    stat, df = chi2(counts, probs, n)
    return stat < chi2_threshold(df)


SAMPLING = [
    dict(temperature=0.7),
    dict(temperature=1.3, top_k=3, top_p=0.8, min_p=0.1),
    dict(repetition_penalty=1.5, presence_penalty=1.5),
    dict(frequency_penalty=-2.0, top_p=0.9, logit_bias={3: 1.0}),
]


@pytest.mark.parametrize("settings", SAMPLING, ids=str)
def test_plain_sampling_follows_the_processed_distribution(settings: dict) -> None:
    model, n = tiny(seed=3, vocab=V, n_layer=1, n_embd=16, n_head=2, init_std=0.5), 2000
    cfg = GenerationConfig(max_new_tokens=2, ignore_eos=True, **settings)
    gens = generate(model, None, [PROMPT] * n, cfg, seeds=list(range(n)))
    assert chi2_passes(Counter(tuple(g.token_ids) for g in gens), exact_pairs(model, cfg), n)


@pytest.mark.parametrize(
    "settings",
    [
        dict(top_p=0.9, min_p=0.05, presence_penalty=1.5, repetition_penalty=1.3),
        dict(temperature=0.8, top_k=4, frequency_penalty=-1.5),
    ],
    ids=str,
)
def test_speculative_sampling_keeps_the_targets_distribution_with_penalties(settings: dict) -> None:
    target, draft, n = MarkovLM(0, 1.0, V), MarkovLM(1, 3.0, V), 1500  # a peaked draft far from the target
    cfg = GenerationConfig(max_new_tokens=3, num_speculative_tokens=2, ignore_eos=True, **settings)
    counts = Counter()
    for seed in range(n):
        ((g,),) = speculative_decode(target, draft, [PROMPT], cfg.replace(seed=seed), eos_ids=[])
        counts[tuple(g.token_ids[:2])] += 1
    probs = exact_pairs(target, cfg)
    assert chi2_passes(counts, probs, n)
    assert not chi2_passes(counts, exact_pairs(draft, cfg), n)  # the test tells the two models apart


METHODS = [
    dict(),
    dict(temperature=0),
    dict(draft_model="draft"),
    dict(draft_model="draft", temperature=0),
    dict(penalty_alpha=0.5, top_k=3),
    dict(amateur_model="draft"),
    dict(amateur_model="draft", temperature=0),
]


@pytest.mark.parametrize("method", METHODS, ids=str)
def test_a_step_with_every_token_banned_is_a_clear_error(method: dict) -> None:
    """no_repeat_ngram_size=1 on 8 tokens leaves the 5 that the 3-token prompt lacks: the 6th token has none left.
    Sampling failed inside torch.multinomial or took a banned token (its NaN probability won the argmax)."""
    model, draft = tiny(seed=3, vocab=V, n_layer=1, n_embd=16, n_head=2), tiny(seed=4, vocab=V, n_layer=1, n_embd=16)
    method = {k: draft if v == "draft" else v for k, v in method.items()}
    cfg = GenerationConfig(max_new_tokens=12, no_repeat_ngram_size=1, seed=0, ignore_eos=True)
    with pytest.raises(ValueError, match=r"no_repeat_ngram_size=1 bans every token .* after 5 generated tokens"):
        generate(model, None, [PROMPT], cfg, **method)
    (g,) = generate(model, None, [PROMPT], cfg.replace(max_new_tokens=5), **method)  # up to there it decodes
    assert sorted(g.token_ids) == [0, 3, 4, 6, 7]


@pytest.mark.parametrize("beams", [dict(num_beams=2), dict(num_beams=3, num_return_sequences=2)], ids=str)
def test_beam_search_out_of_tokens_is_the_same_clear_error(beams: dict) -> None:
    """When no beam of a prompt has a token left and too few hypotheses have finished, beam search returned
    hypotheses that no search step scored: the "impossible" score -1e9, a beam cut short with finish_reason "length"
    (transformers returns such rows too, padded with -1). It now refuses as every other method does; where enough
    hypotheses did finish before, they are the result."""
    model = tiny(seed=3, vocab=V, n_layer=1, n_embd=16, n_head=2)
    cfg = GenerationConfig(max_new_tokens=12, no_repeat_ngram_size=1, temperature=0, ignore_eos=True, **beams)
    with pytest.raises(ValueError, match=r"no_repeat_ngram_size=1 bans every token .* after 5 generated tokens"):
        generate(model, None, [PROMPT], cfg)
    gens = generate(model, None, [PROMPT], cfg.replace(max_new_tokens=5))  # up to there it decodes
    assert all(sorted(g.token_ids) == [0, 3, 4, 6, 7] and g.score > -1e6 for g in gens)
    # a stop token every hypothesis reaches before the ban: the search ends on its finished hypotheses
    stop = gens[0].token_ids[2]
    for g in generate(model, None, [PROMPT], cfg.replace(ignore_eos=False, stop_token_ids=[stop])):
        assert g.finish_reason == "stop" and stop not in g.token_ids and g.score > -1e6


def test_running_out_of_tokens_names_only_the_fixes_that_help() -> None:
    """A prompt holding every token leaves none for the first step, whatever max_new_tokens is; min_new_tokens holds
    the stop tokens back only until that many are generated. The error advised "fewer max_new_tokens" in the first
    case and blamed min_new_tokens in the second."""
    model = tiny(seed=3, vocab=V, n_layer=1, n_embd=16, n_head=2)
    with pytest.raises(
        ValueError,
        match=r"after 0 generated tokens, and min_new_tokens=2 holds back the stop tokens: "
        r"no token is left to choose; use a smaller no_repeat_ngram_size \(0 turns it off\) or a "
        r"smaller min_new_tokens$",
    ):
        generate(
            model,
            None,
            [list(range(V))],
            max_new_tokens=3,
            no_repeat_ngram_size=1,
            min_new_tokens=2,
            stop_token_ids=[0],
            temperature=0,
        )
    cfg = GenerationConfig(max_new_tokens=12, no_repeat_ngram_size=1, min_new_tokens=2, seed=0, ignore_eos=True)
    with pytest.raises(
        ValueError,
        match=r"after 5 generated tokens: no token is left to choose; use a smaller "
        r"no_repeat_ngram_size \(0 turns it off\) or max_new_tokens <= 5$",
    ):
        generate(model, None, [PROMPT], cfg)


@pytest.mark.parametrize("method", [dict(), dict(penalty_alpha=0.5, top_k=3), dict(amateur_model="draft")], ids=str)
def test_a_row_that_has_stopped_may_run_out_of_tokens(method: dict) -> None:
    """Rows that are done keep stepping while another row decodes: only live rows are checked. The first prompt
    holds every token but 0, so its one token is 0, which stops it; stepping on, it has none left."""
    model, draft = tiny(seed=3, vocab=V, n_layer=1, n_embd=16, n_head=2), tiny(seed=4, vocab=V, n_layer=1, n_embd=16)
    method = {k: draft if v == "draft" else v for k, v in method.items()}
    cfg = GenerationConfig(max_new_tokens=3, no_repeat_ngram_size=1, temperature=0, stop_token_ids=[0])
    prompts = [[1, 2, 3, 4, 5, 6, 7], [2]]
    first, second = generate(model, None, prompts, cfg, **method)
    assert first.finish_reason == "stop" and first.token_ids == []
    assert second == generate(model, None, prompts[1:], cfg, **method)[0]


def test_stream_refuses_like_generate() -> None:
    model = tiny(seed=3, vocab=V, n_layer=1, n_embd=16, n_head=2)
    from neurallayers.data.tokenizers import Tokenizer

    tokenizer = Tokenizer.train_char(["abcdefg"])  # ids 0-6 letters, 7 its eos (ignored here)
    with pytest.raises(ValueError, match="no_repeat_ngram_size=1 bans every token"):
        list(stream(model, tokenizer, PROMPT, max_new_tokens=12, no_repeat_ngram_size=1, seed=0, ignore_eos=True))


@pytest.mark.parametrize("alpha", [0.6, 0.9])
def test_contrastive_search_never_chooses_a_banned_candidate(alpha: float) -> None:
    """With top_k above the number of allowed tokens, banned candidates (p = 0) entered the top k and, being unlike
    the context, could win on the degeneration penalty: no_repeat_ngram_size=1 repeated tokens."""
    for seed in range(8):
        model = tiny(seed=seed, vocab=V, n_layer=1, n_embd=16, n_head=2, init_std=0.5)
        (g,) = generate(
            model,
            None,
            [PROMPT],
            max_new_tokens=5,
            temperature=0,
            penalty_alpha=alpha,
            top_k=V,
            no_repeat_ngram_size=1,
            ignore_eos=True,
        )
        ids = PROMPT + g.token_ids
        assert len(set(ids)) == len(ids), (seed, g.token_ids)


# (seed, prompt, stop strings): stop strings that no special token's text holds (transformers also matches them in
# "<|endoftext|>"); the first four gave other text before, the first of them an empty one
BEAM_STOPS = [(5, "ab", ["c"]), (1, "m", ["g", "i"]), (4, "m", ["c"]), (1, "m", [" "]), (0, "ab", ["fg"])]


@pytest.mark.parametrize(("seed", "prompt", "stop"), BEAM_STOPS, ids=str)
def test_beam_search_finishes_hypotheses_at_stop_strings_as_transformers_does(
    seed: int, prompt: str, stop: list[str]
) -> None:
    """A hypothesis that reaches a stop string is finished and competes with its own score (transformers'
    stop_strings), as one that reaches eos does. Cutting the best full-length beam's text afterwards gave other
    text, even an empty one where a finished hypothesis had some."""
    transformers = pytest.importorskip("transformers")
    from neurallayers.data.tokenizers import Tokenizer

    tok = Tokenizer.train_char(["abcdefgh ijklmnop"])
    hf, ours = hf_and_ours(seed=seed, vocab=tok.vocab_size)
    hf.generation_config.eos_token_id = None
    ids = tok.encode(prompt)
    settings = dict(num_beams=3, max_new_tokens=10, no_repeat_ngram_size=2, repetition_penalty=1.3)
    out = hf.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        stop_strings=stop,
        tokenizer=transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf),
        pad_token_id=0,
        **settings,
    )
    full = tok.decode(out[0, len(ids) :].tolist())
    cut = min([full.find(s) for s in stop if s in full], default=len(full))
    (got,) = generate(ours, tok, prompt, temperature=0, stop=stop, ignore_eos=True, **settings)
    assert got.text == full[:cut]
    assert got.finish_reason == ("stop" if cut < len(full) else "length")


def test_running_out_of_tokens_in_a_batch_names_the_prompt() -> None:
    """The error ends the whole batched call: it names the prompt that ran out, which the others decode without."""
    model = tiny(seed=3, vocab=V, n_layer=1, n_embd=16, n_head=2)
    cfg = GenerationConfig(max_new_tokens=3, no_repeat_ngram_size=1, seed=0, ignore_eos=True, num_return_sequences=2)
    prompts = [[2], [1, 5], list(range(V))]
    with pytest.raises(ValueError, match=r"8-token vocabulary for prompt 2 after 0 generated tokens"):
        generate(model, None, prompts, cfg)
    assert len(generate(model, None, prompts[:2], cfg)) == 4
    with pytest.raises(ValueError, match=r"8-token vocabulary after 0 generated tokens"):  # alone: no prompt named
        generate(model, None, prompts[2:], cfg)
