"""Every logits processor equals its transformers counterpart on random scores, handles left padding, and rejects
bad arguments with a clear error."""

from __future__ import annotations

import os

import pytest
import torch

from neurallayers.generation import GenerationConfig
from neurallayers.generation.processors import (
    NEG_INF,
    FrequencyPenalty,
    LogitBias,
    MinNewTokens,
    MinPWarper,
    NoRepeatNGram,
    PresencePenalty,
    RepetitionPenalty,
    TemperatureWarper,
    TopKWarper,
    TopPWarper,
    apply_processors,
    build_processors,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
lp = pytest.importorskip("transformers.generation.logits_process")


def _inputs(seed: int, b: int = 4, t: int = 12, v: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 8, (b, t), generator=g)  # a small id range so tokens and n-grams repeat
    scores = torch.randn(b, v, generator=g) * 3
    return ids, scores


PAIRS = [
    (lambda: TemperatureWarper(0.7), lambda: lp.TemperatureLogitsWarper(0.7)),
    (lambda: TemperatureWarper(1.8), lambda: lp.TemperatureLogitsWarper(1.8)),
    (lambda: TopKWarper(1), lambda: lp.TopKLogitsWarper(1)),
    (lambda: TopKWarper(7), lambda: lp.TopKLogitsWarper(7)),
    (lambda: TopKWarper(500), lambda: lp.TopKLogitsWarper(500)),
    (lambda: TopPWarper(0.05), lambda: lp.TopPLogitsWarper(0.05)),
    (lambda: TopPWarper(0.5), lambda: lp.TopPLogitsWarper(0.5)),
    (lambda: TopPWarper(0.95), lambda: lp.TopPLogitsWarper(0.95)),
    (lambda: MinPWarper(0.05), lambda: lp.MinPLogitsWarper(0.05)),
    (lambda: MinPWarper(0.3), lambda: lp.MinPLogitsWarper(0.3)),
    (lambda: MinPWarper(1.0), lambda: lp.MinPLogitsWarper(1.0)),
    (lambda: RepetitionPenalty(1.3), lambda: lp.RepetitionPenaltyLogitsProcessor(1.3)),
    (lambda: RepetitionPenalty(0.6), lambda: lp.RepetitionPenaltyLogitsProcessor(0.6)),
    (lambda: NoRepeatNGram(1), lambda: lp.NoRepeatNGramLogitsProcessor(1)),
    (lambda: NoRepeatNGram(2), lambda: lp.NoRepeatNGramLogitsProcessor(2)),
    (lambda: NoRepeatNGram(3), lambda: lp.NoRepeatNGramLogitsProcessor(3)),
    (lambda: MinNewTokens(5, stop_ids=[3, 9], prompt_len=8),
     lambda: lp.MinNewTokensLengthLogitsProcessor(8, 5, [3, 9])),
]


@pytest.mark.parametrize("i", range(len(PAIRS)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_transformers(i: int, seed: int) -> None:
    ours, theirs = PAIRS[i][0](), PAIRS[i][1]()
    ids, scores = _inputs(seed)
    before = scores.clone()
    got = ours(ids, scores)
    want = theirs(ids, scores.clone())
    assert torch.equal(scores, before), "processors must not modify their input"
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_min_new_tokens_lifts_after_enough_tokens() -> None:
    ids, scores = _inputs(0, t=13)
    assert torch.equal(MinNewTokens(5, stop_ids=[3], prompt_len=8)(ids, scores), scores)


def test_presence_and_frequency_count_generated_tokens_only() -> None:
    ids = torch.tensor([[5, 5, 5, 1, 2, 2], [0, 0, 4, 4, 4, 4]])
    scores = torch.zeros(2, 8)
    pres = PresencePenalty(0.5, prompt_len=3)(ids, scores)
    freq = FrequencyPenalty(0.25, prompt_len=[3, 2])(ids, scores)
    want_pres = torch.zeros(2, 8)
    want_pres[0, [1, 2]] = -0.5
    want_pres[1, 4] = -0.5
    torch.testing.assert_close(pres, want_pres)
    want_freq = torch.zeros(2, 8)
    want_freq[0, 1], want_freq[0, 2], want_freq[1, 4] = -0.25, -0.5, -1.0
    torch.testing.assert_close(freq, want_freq)
    with pytest.raises(ValueError, match="rows"):
        FrequencyPenalty(0.25, prompt_len=[3, 2, 1])(ids, scores)


@pytest.mark.parametrize("pad_id", [7, 0])
@pytest.mark.parametrize("proc", ["rep", "ngram"])
def test_left_padding_is_ignored(proc: str, pad_id: int) -> None:
    """A left-padded row gives the scores it gives unpadded: pad id 7 (in no row) would otherwise count as a token,
    and pad id 0 (generate's) before rows that end in 0 as a bigram (0, 0) banning 0."""
    g = torch.Generator().manual_seed(3)
    rows = [torch.cat([torch.randint(1, 6, (n - 1,), generator=g), torch.zeros(1, dtype=torch.long)])
            for n in (9, 5, 7)]
    scores = torch.randn(3, 10, generator=g)
    width = 9
    padded = torch.full((3, width), pad_id)
    for r, row in enumerate(rows):
        padded[r, width - len(row):] = row
    pads = [width - len(r) for r in rows]
    make = {"rep": lambda p: RepetitionPenalty(1.5, pad_lens=p), "ngram": lambda p: NoRepeatNGram(2, pad_lens=p)}[proc]
    got = make(pads)(padded, scores)
    for r, row in enumerate(rows):
        torch.testing.assert_close(got[r:r + 1], make(None)(row[None], scores[r:r + 1]))


def test_logit_bias() -> None:
    scores = torch.zeros(2, 6)
    out = LogitBias({1: 2.0, 4: -100})(torch.zeros(2, 3, dtype=torch.long), scores)
    assert out[:, 1].eq(2).all() and out[:, 4].eq(-100).all() and out[:, [0, 2, 3, 5]].eq(0).all()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        LogitBias({9: 1.0})(torch.zeros(1, 1, dtype=torch.long), scores)


def test_build_order_and_greedy() -> None:
    cfg = GenerationConfig(temperature=0.8, top_k=5, top_p=0.9, min_p=0.1, repetition_penalty=1.2,
                           presence_penalty=0.5, frequency_penalty=0.5, no_repeat_ngram_size=2, logit_bias={1: 1.0},
                           min_new_tokens=2)
    procs = build_processors(cfg, eos_ids=[0], prompt_lens=[4, 4])
    assert [type(p).__name__ for p in procs] == [
        "LogitBias", "RepetitionPenalty", "PresencePenalty", "FrequencyPenalty", "NoRepeatNGram", "MinNewTokens",
        "TemperatureWarper", "TopKWarper", "TopPWarper", "MinPWarper"]
    greedy = build_processors(cfg.replace(temperature=0.0), eos_ids=[0], prompt_lens=4)
    assert not any(isinstance(p, (TemperatureWarper, TopKWarper, TopPWarper, MinPWarper)) for p in greedy)
    assert build_processors(GenerationConfig(), eos_ids=[0], prompt_lens=4) == []
    ids, scores = _inputs(0, b=2, t=4, v=10)
    assert apply_processors([], ids, scores) is scores
    with pytest.raises(ValueError, match="min_new_tokens"):
        build_processors(cfg, eos_ids=[0], prompt_lens=[4, 3])


@pytest.mark.parametrize("make, match", [
    (lambda: TemperatureWarper(0.0), "temperature"),
    (lambda: TemperatureWarper(float("nan")), "temperature"),
    (lambda: TopKWarper(0), "top_k"),
    (lambda: TopKWarper(2.5), "top_k"),
    (lambda: TopKWarper(3, min_tokens_to_keep=0), "min_tokens_to_keep"),
    (lambda: TopPWarper(0.0), "top_p"),
    (lambda: TopPWarper(1.5), "top_p"),
    (lambda: MinPWarper(-0.1), "min_p"),
    (lambda: MinPWarper(1.1), "min_p"),
    (lambda: RepetitionPenalty(0.0), "repetition_penalty"),
    (lambda: RepetitionPenalty(1.2, pad_lens=[-1]), "pad_lens"),
    (lambda: PresencePenalty(3.0, prompt_len=1), "presence_penalty"),
    (lambda: FrequencyPenalty(-2.5, prompt_len=1), "frequency_penalty"),
    (lambda: FrequencyPenalty(1.0, prompt_len="x"), "prompt_len"),
    (lambda: NoRepeatNGram(0), "no_repeat_ngram_size"),
    (lambda: LogitBias({}), "logit_bias"),
    (lambda: LogitBias({-1: 1.0}), "logit_bias"),
    (lambda: LogitBias({1: float("inf")}), "logit_bias"),
    (lambda: MinNewTokens(-1, stop_ids=[0], prompt_len=1), "min_new_tokens"),
    (lambda: MinNewTokens(1, stop_ids=[-3], prompt_len=1), "stop_ids"),
    (lambda: build_processors({"temperature": 1.0}, eos_ids=[0], prompt_lens=1), "GenerationConfig"),
    # a string, None or an int past float's range: TypeError / OverflowError from the range check, not this error
    (lambda: TemperatureWarper("0.5"), "temperature"),
    (lambda: TopPWarper(None), "top_p"),
    (lambda: MinPWarper("0"), "min_p"),
    (lambda: RepetitionPenalty(10**400), "repetition_penalty"),
    (lambda: PresencePenalty("1", prompt_len=1), "presence_penalty"),
    (lambda: LogitBias({1: 10**400}), "logit_bias"),
])
def test_rejects_bad_arguments(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_a_tiny_temperature_samples_the_greedy_choice():
    """scores / 1e-40 overflowed to inf: softmax gave NaN, plain sampling drew token 0 every step and speculative
    sampling failed in torch.multinomial. At such a temperature sampling is the greedy choice (as vLLM treats it)."""
    from nl_gen_helpers import tiny_lm

    from neurallayers.generation import generate

    model, draft = tiny_lm(seed=0), tiny_lm(seed=1)
    prompt = [[3, 9, 4]]
    greedy = generate(model, None, prompt, GenerationConfig(max_new_tokens=6, temperature=0))[0].token_ids
    cold = GenerationConfig(max_new_tokens=6, temperature=1e-40, seed=1)
    assert generate(model, None, prompt, cold)[0].token_ids == greedy
    assert generate(model, None, prompt, cold, draft_model=draft)[0].token_ids == greedy
    scores = torch.tensor([[1.0, 3.0, -float("inf"), 2.0]])
    assert TemperatureWarper(1e-40)(None, scores).softmax(-1).tolist() == [[0.0, 1.0, 0.0, 0.0]]
    assert torch.equal(TemperatureWarper(1e-3)(None, scores), scores / 1e-3)  # unchanged where nothing overflows


def test_a_temperature_below_float32s_range_samples_the_greedy_choice():
    """A temperature under float32's smallest number (1e-50) is 0 in the division: the max score gave 0 / 0 = NaN,
    so softmax was NaN and plain sampling drew token 0, as 1e-40 did before."""
    from nl_gen_helpers import tiny_lm

    from neurallayers.generation import generate

    model, amateur = tiny_lm(seed=0), tiny_lm(seed=1)
    prompt = [[3, 9, 4]]
    for extra in ({}, {"amateur_model": amateur}):  # plain sampling, contrastive decoding
        greedy = generate(model, None, prompt, GenerationConfig(max_new_tokens=6, temperature=0), **extra)
        for t in (1e-46, 1e-50, 5e-324):
            cold = GenerationConfig(max_new_tokens=6, temperature=t, seed=1)
            assert generate(model, None, prompt, cold, **extra)[0].token_ids == greedy[0].token_ids
    scores = torch.tensor([[1.0, 3.0, -float("inf"), 2.0], [0.0, 0.0, 0.0, 0.0]])
    assert TemperatureWarper(1e-50)(None, scores).softmax(-1).tolist() == [[0.0, 1.0, 0.0, 0.0], [0.25] * 4]


@pytest.mark.parametrize("seed", [0, 1])
def test_logit_bias_goes_before_the_penalties_as_transformers_sequence_bias_does(seed: int) -> None:
    """transformers applies sequence_bias (logit_bias of single tokens) before the repetition penalty, and vLLM its
    logit_bias before its penalties: a seen token biased by b scores (x + b) / penalty there; ours scored
    x / penalty + b, another distribution."""
    ids, scores = _inputs(seed)
    bias = {1: 2.5, 3: -1.5, 6: 4.0}
    cfg = GenerationConfig(repetition_penalty=1.5, no_repeat_ngram_size=2, logit_bias=bias, temperature=0.7,
                           top_p=0.9)
    got = apply_processors(build_processors(cfg, eos_ids=[], prompt_lens=ids.shape[1]), ids, scores)
    want = scores.clone()
    for proc in (lp.SequenceBiasLogitsProcessor({(t,): b for t, b in bias.items()}),
                 lp.RepetitionPenaltyLogitsProcessor(1.5), lp.NoRepeatNGramLogitsProcessor(2),
                 lp.TemperatureLogitsWarper(0.7), lp.TopPLogitsWarper(0.9)):
        want = proc(ids, want)
    torch.testing.assert_close(got, want)


def _float64_softmax(procs, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The oracle: transformers' processors on float64 scores, where 1e300 and 1e-300 are ordinary numbers."""
    want = scores.double()
    for proc in procs:
        want = proc(ids, want)
    return want.softmax(-1)


@pytest.mark.parametrize("penalty", [1e-300, 1e-40, 1e300, 1e40])
def test_a_repetition_penalty_past_float32s_range_keeps_the_float64_distribution(penalty: float) -> None:
    """1e-300 is 0 in float32: a seen score of 0 became 0 / 0 = NaN and a positive one inf, so softmax was NaN and
    sampling drew token 0, which no rule favoured. The distribution is now float64's (transformers' processor on
    float64 scores); inside float32's range the result is unchanged."""
    ids, scores = _inputs(0)
    scores[:, 2] = 0.0  # a seen token scoring exactly 0
    got = RepetitionPenalty(penalty)(ids, scores)
    assert not got.isnan().any()
    want = _float64_softmax([lp.RepetitionPenaltyLogitsProcessor(penalty)], ids, scores)
    torch.testing.assert_close(got.double().softmax(-1), want, atol=1e-6, rtol=0)
    within = lp.RepetitionPenaltyLogitsProcessor(1e-3)(ids, scores)
    torch.testing.assert_close(RepetitionPenalty(1e-3)(ids, scores), within)


@pytest.mark.parametrize("bias", [{5: 1e300}, {5: 1e39, 7: 1e39}, {5: 3e38, 6: -1e300}, {5: -1e300}])
def test_a_logit_bias_past_float32s_range_keeps_the_float64_distribution(bias: dict[int, float]) -> None:
    """A bias of 1e300 (a finite number, so GenerationConfig takes it) is inf in float32: softmax NaN, and sampling
    drew token 0 every step instead of the token the bias forces. The distribution is now float64's (the bias added
    in float64, written out: transformers' sequence_bias holds its biases in float32): forced tokens share the mass."""
    ids, scores = _inputs(1)
    got = LogitBias(bias)(ids, scores)
    assert not got.isnan().any()
    want = scores.double()
    for t, b in bias.items():
        want[:, t] += b
    want = want.softmax(-1)
    torch.testing.assert_close(got.double().softmax(-1), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("penalty", [1e-300, 1e300])
def test_a_banned_token_stays_banned_under_an_extreme_repetition_penalty(penalty: float) -> None:
    """A seen token banned by logit_bias (-1e300 is -inf) scored -inf * 0 = NaN under repetition_penalty=1e-300
    (0 in float32), and +inf / inf = NaN under 1e300: NaN outranks every score, so greedy chose the banned token."""
    ids, scores = _inputs(3)
    seen = int(ids[0, -1])
    cfg = GenerationConfig(logit_bias={seen: -1e300}, repetition_penalty=penalty, temperature=0)
    got = apply_processors(build_processors(cfg, eos_ids=[], prompt_lens=ids.shape[1]), ids, scores)
    assert not got.isnan().any() and got[:, seen].eq(NEG_INF).all()
    inf_scores = scores.clone()
    inf_scores[:, seen] = float("inf")  # a model's own +inf score keeps all the mass
    assert RepetitionPenalty(penalty)(ids, inf_scores).softmax(-1)[:, seen].eq(1.0).all()


def test_sampling_under_an_overflowing_bias_or_penalty_draws_what_greedy_does():
    """The model-level symptom: sampling with logit_bias={5: 1e300} gave [0, 0, 0, ...] (NaN probabilities, the
    first index won the race), and repetition_penalty=1e-300 picked token 0 too; greedy chose 5 and 3. With a
    forced token, sampling, top_p and beam search all choose it."""
    from nl_gen_helpers import tiny_lm

    from neurallayers.generation import generate

    model, prompt = tiny_lm(seed=0), [[1, 2, 3]]
    for settings in ({"logit_bias": {5: 1e300}}, {"repetition_penalty": 1e-300}):
        greedy = generate(model, None, prompt, max_new_tokens=5, temperature=0, **settings)[0].token_ids
        for extra in ({}, {"top_p": 0.5}, {"top_k": 3, "temperature": 0.7}):
            sampled = generate(model, None, prompt, max_new_tokens=5, seed=3, **settings, **extra)[0].token_ids
            assert sampled == greedy, (settings, extra)
    forced = generate(model, None, prompt, max_new_tokens=5, logit_bias={5: 1e300}, num_beams=2)[0].token_ids
    assert forced == [5] * 5


@pytest.mark.parametrize("temperature", [1e40, 1e300])
@pytest.mark.parametrize("rule", [{"top_k": 3}, {"top_p": 0.33}, {"min_p": 0.5}])  # 0.3: a tie of the uniform sums
def test_a_temperature_past_float32s_range_keeps_the_top_tokens(temperature: float, rule: dict) -> None:
    """scores / 1e300 (inf in float32) made every score 0: top-k then kept the whole vocabulary and top-p the tokens
    of highest index. The oracle: transformers' warpers on float64 scores, where 1e300 is an ordinary number: the
    same tokens kept, each as likely (uniform), as in the limit of a growing temperature."""
    ids, scores = _inputs(2)
    cfg = GenerationConfig(temperature=temperature, **rule)
    got = apply_processors(build_processors(cfg, eos_ids=[], prompt_lens=ids.shape[1]), ids, scores)
    warper = {"top_k": lp.TopKLogitsWarper, "top_p": lp.TopPLogitsWarper, "min_p": lp.MinPLogitsWarper}
    name, value = next(iter(rule.items()))
    want = _float64_softmax([lp.TemperatureLogitsWarper(temperature), warper[name](value)], ids, scores)
    assert torch.equal(got.isfinite(), want > 0)
    torch.testing.assert_close(got.double().softmax(-1), want, atol=1e-6, rtol=0)
