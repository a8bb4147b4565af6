"""Logits processors: one small callable per decoding rule, applied in order to the next-token scores.

Each has the Hugging Face call signature `proc(input_ids, scores) -> new_scores`:
    input_ids: (B, T) LongTensor, the tokens so far (prompt and generated; rows may be left-padded).
    scores: (B, V) FloatTensor, the next-token scores.
and returns a new (B, V) tensor; the inputs are never modified. Arguments are checked in `__init__`.

Rows may be left-padded: processors that look at the tokens take `pad_lens` (the number of padding columns at
the left of each row) and ignore those columns. Processors that count only generated tokens take `prompt_len`
(the number of leading columns that are the prompt, padding included). Padding is never history, so a padded row
scores as it does alone: transformers' generate skips padding for its repetition penalty too, but its n-gram ban
counts the pad token as a token of the row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from neurallayers.checks import is_finite, is_int
from neurallayers.generation.config import GenerationConfig

NEG_INF = float("-inf")
# Inside [1 / SAFE_SCALE, SAFE_SCALE] a repetition penalty, and below SAFE_BIAS a logit bias, cannot push a float32
# score (never beyond 1e18) past float32's range (3.4e38), so only values outside them pay for the overflow check.
SAFE_SCALE = 1e20
SAFE_BIAS = 1e37
# Scores (|s| in [1e-8, 1e20]) divided by it are distinct float32 numbers whose exp is 1.0: softmax is uniform, as at
# any larger temperature, and the order that top-k, top-p and min-p read is kept.
MAX_TEMPERATURE = 1e30


def _check_min_keep(value: object) -> None:
    if not is_int(value) or value < 1:
        raise ValueError(f"min_tokens_to_keep={value!r}: must be an integer >= 1")


def _check_number(name: str, value: object, ok: Callable[[float], bool], what: str) -> None:
    # `ok` is called only on a finite number: TemperatureWarper("0.5") raised TypeError from `"0.5" > 0`
    if not is_finite(value) or not ok(value):
        raise ValueError(f"{name}={value!r}: {what}")


def _per_row(name: str, value: int | Sequence[int] | None) -> int | list[int]:
    """Validate an int-or-per-row-ints argument; a list whose values are all equal collapses to one int."""
    if value is None:
        return 0
    if is_int(value):
        if value < 0:
            raise ValueError(f"{name}={value}: must be >= 0")
        return value
    values = list(value)
    if not values or not all(is_int(v) and v >= 0 for v in values):
        raise ValueError(f"{name} must be an int >= 0 or a non-empty list of them (one per row), got {value!r}")
    return values[0] if len(set(values)) == 1 else values


def _row_column(name: str, value: int | list[int], input_ids: torch.Tensor) -> torch.Tensor | int:
    """An int, or a (B, 1) tensor of per-row columns matching input_ids' batch."""
    if isinstance(value, int):
        return value
    if len(value) != input_ids.shape[0]:
        raise ValueError(f"{name} has {len(value)} rows but input_ids has {input_ids.shape[0]}; build the processor "
                         "for this batch (one value per row) or give one int for all rows")
    return torch.tensor(value, device=input_ids.device)[:, None]


def _token_counts(input_ids: torch.Tensor, vocab: int, start: int | torch.Tensor) -> torch.Tensor:
    """(B, V) how often each token occurs in input_ids at columns >= start (an int or (B, 1) per row)."""
    cols = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
    keep = (cols >= start).to(torch.int32)  # (B|1, T)
    ids = input_ids.clamp(max=vocab)  # ids outside the scores' vocabulary go to a spare column
    counts = torch.zeros(input_ids.shape[0], vocab + 1, dtype=torch.int32, device=input_ids.device)
    counts.scatter_add_(1, ids, keep.expand_as(ids).contiguous())
    return counts[:, :vocab]


def exact_where_float32_overflows(out: torch.Tensor, scores: torch.Tensor,
                                   exact: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """out: a rule's float32 result on scores (B, V). In a row where a finite score came out inf or NaN (a bias of
    1e300, a repetition penalty of 1e-300, which is 0 in float32: softmax NaN, and sampling then drew token 0), the
    rule again in float64, `exact(scores[rows].double(), rows)`, shifted so the row's largest score is 0: the same
    distribution, now within float32's range. Tokens still +inf in float64 share the row's mass."""
    rows = (~torch.isfinite(out) & torch.isfinite(scores)).any(-1)
    if not rows.any():
        return out
    x = exact(scores[rows].double(), rows)
    top = x.amax(-1, keepdim=True)
    shifted = x - torch.where(torch.isfinite(top), top, 0.0)  # a row that is all -inf stays so (not -inf - -inf)
    x = torch.where(torch.isposinf(top), torch.where(torch.isposinf(x), 0.0, NEG_INF), shifted)
    out[rows] = x.to(out.dtype)
    return out


class TemperatureWarper:
    """scores / temperature. Greedy decoding (temperature 0) does not use a warper at all."""

    def __init__(self, temperature: float) -> None:
        _check_number("temperature", temperature, lambda v: v > 0,
                      "must be a finite number > 0 (for greedy decoding use temperature=0 in GenerationConfig, "
                      "which skips the sampling warpers)")
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return divide_by_temperature(scores, self.temperature)


def divide_by_temperature(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """scores / temperature, as transformers divides them; in a row where a tiny temperature (1e-40) overflows that
    to inf (softmax NaN: the sampler then drew token 0 or failed), (scores - max) / temperature instead: the same
    distribution, which at such a temperature is the greedy choice. A huge temperature (1e300, inf in float32) divides
    by MAX_TEMPERATURE instead: every score went to 0, so top-k kept the whole vocabulary and top-p the tokens of
    highest index; divided by 1e30 the order survives, and softmax is just as uniform."""
    out = scores / min(temperature, MAX_TEMPERATURE)
    if temperature < 1.0:  # only division by a small number overflows
        # NaN too: below float32's range (1e-50) the temperature is 0 there, and 0 / 0 is NaN
        rows = (~torch.isfinite(out) & torch.isfinite(scores)).any(-1)
        if rows.any():
            diff = scores[rows] - scores[rows].amax(-1, keepdim=True)
            out[rows] = torch.where(diff == 0, diff, diff / temperature)  # the max stays 0, not 0 / 0
    return out


class TopKWarper:
    """Keep the top_k highest scores (ties with the k-th included), set the rest to -inf."""

    def __init__(self, top_k: int, *, min_tokens_to_keep: int = 1) -> None:
        if not is_int(top_k) or top_k < 1:
            raise ValueError(f"top_k={top_k!r}: must be an integer >= 1 (GenerationConfig.top_k=0 turns it off)")
        _check_min_keep(min_tokens_to_keep)
        self.top_k = max(top_k, min_tokens_to_keep)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.top_k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[:, -1:]  # (B, 1)
        return scores.masked_fill(scores < kth, NEG_INF)


class TopPWarper:
    """Nucleus sampling: keep the smallest set of highest-probability tokens whose mass exceeds top_p."""

    def __init__(self, top_p: float, *, min_tokens_to_keep: int = 1) -> None:
        _check_number("top_p", top_p, lambda v: 0 < v <= 1, "must be in (0, 1] (1 turns it off)")
        _check_min_keep(min_tokens_to_keep)
        self.top_p = float(top_p)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # Ascending sort: drop the low tail whose cumulative mass is <= 1 - top_p (the Hugging Face formulation,
        # so the kept set is identical on ties of the cumulative sum).
        sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= 1 - self.top_p
        drop[:, -self.min_tokens_to_keep:] = False
        return scores.masked_fill(drop.scatter(1, order, drop), NEG_INF)


class MinPWarper:
    """Keep tokens whose probability is at least min_p times the most likely token's probability."""

    def __init__(self, min_p: float, *, min_tokens_to_keep: int = 1) -> None:
        _check_number("min_p", min_p, lambda v: 0 <= v <= 1, "must be in [0, 1] (0 turns it off)")
        _check_min_keep(min_tokens_to_keep)
        self.min_p = float(min_p)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(dim=-1)
        drop = probs < self.min_p * probs.amax(dim=-1, keepdim=True)
        keep = torch.topk(probs, min(self.min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
        return scores.masked_fill(drop.scatter(1, keep, False), NEG_INF)


class RepetitionPenalty:
    """CTRL / Hugging Face repetition penalty over every token seen (prompt and generated): a seen token's score is
    divided by `penalty` when positive and multiplied by it when negative (once, however often it occurred)."""

    def __init__(self, penalty: float, *, pad_lens: int | Sequence[int] | None = None) -> None:
        _check_number("repetition_penalty", penalty, lambda v: v > 0, "must be a finite number > 0 (1 turns it off)")
        self.penalty = float(penalty)
        self.pad_lens = _per_row("pad_lens", pad_lens)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        seen = _token_counts(input_ids, scores.shape[-1], _row_column("pad_lens", self.pad_lens, input_ids)) > 0
        if 1 / SAFE_SCALE <= self.penalty <= SAFE_SCALE:  # float32 holds it: 0 and +-inf scores stay as they are
            return torch.where(seen, torch.where(scores < 0, scores * self.penalty, scores / self.penalty), scores)
        out = self._penalise_extreme(scores, seen)
        return exact_where_float32_overflows(out, scores, lambda x, rows: self._penalise_extreme(x, seen[rows]))

    def _penalise_extreme(self, scores: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """The penalty past float32's range: 0 and -inf (a ban) stay as they are (0 / penalty and -inf * penalty were
        NaN where the penalty is 0 in float32, 1e-300), +inf too (where it is inf, 1e300). Twice the ordinary rule's
        work (5.6 vs 2.5 ms a step at 8 x 50,257), so only here."""
        finite = torch.isfinite(scores)
        penalised = torch.where((scores > 0) & finite, scores / self.penalty, scores)
        penalised = torch.where((scores < 0) & finite, scores * self.penalty, penalised)
        return torch.where(seen, penalised, scores)


class PresencePenalty:
    """OpenAI presence penalty: subtract `penalty` from every token generated so far (the prompt does not count)."""

    def __init__(self, penalty: float, *, prompt_len: int | Sequence[int]) -> None:
        _check_number("presence_penalty", penalty, lambda v: -2 <= v <= 2, "must be in [-2, 2] (0 turns it off)")
        self.penalty = float(penalty)
        self.prompt_len = _per_row("prompt_len", prompt_len)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        counts = _token_counts(input_ids, scores.shape[-1], _row_column("prompt_len", self.prompt_len, input_ids))
        return scores - self.penalty * (counts > 0).to(scores.dtype)


class FrequencyPenalty:
    """OpenAI frequency penalty: subtract `penalty` times the number of times a token was generated so far."""

    def __init__(self, penalty: float, *, prompt_len: int | Sequence[int]) -> None:
        _check_number("frequency_penalty", penalty, lambda v: -2 <= v <= 2, "must be in [-2, 2] (0 turns it off)")
        self.penalty = float(penalty)
        self.prompt_len = _per_row("prompt_len", prompt_len)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        counts = _token_counts(input_ids, scores.shape[-1], _row_column("prompt_len", self.prompt_len, input_ids))
        return scores - self.penalty * counts.to(scores.dtype)


class NoRepeatNGram:
    """Ban any token that would repeat an n-gram already present in the row (prompt included, padding ignored)."""

    def __init__(self, ngram_size: int, *, pad_lens: int | Sequence[int] | None = None) -> None:
        if not is_int(ngram_size) or ngram_size < 1:
            raise ValueError(f"no_repeat_ngram_size={ngram_size!r}: must be an integer >= 1 (0 in GenerationConfig "
                             "turns it off)")
        self.n = ngram_size
        self.pad_lens = _per_row("pad_lens", pad_lens)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        b, t = input_ids.shape
        n, vocab = self.n, scores.shape[-1]
        if t < n:
            return scores
        windows = input_ids.unfold(1, n, 1)  # (B, t - n + 1, n): every n-gram
        prefix = input_ids[:, t - n + 1:]  # (B, n - 1): the n-gram the next token would complete
        match = (windows[..., :-1] == prefix[:, None, :]).all(dim=-1)  # (B, t - n + 1)
        start = _row_column("pad_lens", self.pad_lens, input_ids)
        match &= torch.arange(t - n + 1, device=input_ids.device)[None, :] >= start  # windows inside real tokens
        # Non-matching windows write to a spare column so they can never clear another window's ban.
        banned = torch.zeros(b, vocab + 1, dtype=torch.bool, device=scores.device)
        banned.scatter_(1, torch.where(match, windows[..., -1].clamp(max=vocab), vocab), True)
        return scores.masked_fill(banned[:, :vocab], NEG_INF)


class LogitBias:
    """Add a fixed bias to chosen token ids (OpenAI `logit_bias`: -100 effectively bans, +100 forces)."""

    def __init__(self, bias: dict[int, float]) -> None:
        if not isinstance(bias, dict) or not bias:
            raise ValueError(f"logit_bias must be a non-empty dict of token id -> number, got {bias!r}")
        for k, v in bias.items():
            if not is_int(k) or k < 0:
                raise ValueError(f"logit_bias key {k!r}: must be a token id (an integer >= 0)")
            _check_number(f"logit_bias[{k}]", v, lambda _: True, "must be a finite number")
        self.ids = list(bias)
        self.values = [float(v) for v in bias.values()]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if max(self.ids) >= scores.shape[-1]:
            vocab = scores.shape[-1]
            raise ValueError(f"logit_bias names token id {max(self.ids)} outside the vocabulary [0, {vocab})")
        ids = torch.tensor(self.ids, device=scores.device)
        out = self._add(scores, ids)
        if max(abs(v) for v in self.values) < SAFE_BIAS:
            return out
        return exact_where_float32_overflows(out, scores, lambda x, rows: self._add(x, ids))

    def _add(self, scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        out = scores.clone()
        out[:, ids] += torch.tensor(self.values, dtype=scores.dtype, device=scores.device)
        return out


class MinNewTokens:
    """Forbid the stop token ids (eos, stop_token_ids) until `min_new_tokens` tokens have been generated."""

    def __init__(self, min_new_tokens: int, *, stop_ids: Sequence[int], prompt_len: int) -> None:
        if not is_int(min_new_tokens) or min_new_tokens < 0:
            raise ValueError(f"min_new_tokens={min_new_tokens!r}: must be an integer >= 0")
        if not is_int(prompt_len) or prompt_len < 0:
            raise ValueError(f"prompt_len={prompt_len!r}: must be the prompt's column count (an integer >= 0); "
                             "rows of different lengths are left-padded to one width")
        ids = list(stop_ids)
        if not all(is_int(t) and t >= 0 for t in ids):
            raise ValueError(f"stop_ids must be token ids (integers >= 0), got {stop_ids!r}")
        self.min_new_tokens = min_new_tokens
        self.stop_ids = ids
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] - self.prompt_len >= self.min_new_tokens or not self.stop_ids:
            return scores
        ids = torch.tensor([t for t in self.stop_ids if t < scores.shape[-1]], dtype=torch.long, device=scores.device)
        return scores.index_fill(1, ids, NEG_INF)


def build_processors(config: GenerationConfig, *, eos_ids: Sequence[int], prompt_lens: int | Sequence[int],
                     pad_lens: int | Sequence[int] | None = None) -> list:
    """The processors `config` asks for, in Hugging Face order: logit bias, penalties and bans, then temperature,
    top-k, top-p, min-p. Greedy configs (temperature 0) get no sampling warpers.

    Args:
        config: the generation settings.
        eos_ids: end-of-sequence ids; with `config.stop_token_ids` they are what min_new_tokens holds back (with
            ignore_eos too, as vLLM's min_tokens and transformers' MinNewTokensLengthLogitsProcessor do).
        prompt_lens: per row (or one int for all), how many leading columns of input_ids are the prompt, padding
            included; left-padded batches pass the padded width. Generated tokens are the columns after it.
        pad_lens: per row (or one int), how many leading columns are padding (ignored by the repetition penalty
            and the n-gram ban); None = no padding.
    """
    if not isinstance(config, GenerationConfig):
        raise ValueError(f"config must be a GenerationConfig, got {type(config).__name__}")
    prompt = _per_row("prompt_lens", prompt_lens)
    # ignore_eos lets eos be generated as any token, but not before min_new_tokens (it chose eos at once before)
    stops = list(eos_ids) + list(config.stop_token_ids)
    procs: list = []
    if config.logit_bias:  # first, as transformers' sequence_bias and vLLM's logit_bias: the penalty sees the bias
        procs.append(LogitBias(config.logit_bias))
    if config.repetition_penalty != 1.0:
        procs.append(RepetitionPenalty(config.repetition_penalty, pad_lens=pad_lens))
    if config.presence_penalty != 0.0:
        procs.append(PresencePenalty(config.presence_penalty, prompt_len=prompt))
    if config.frequency_penalty != 0.0:
        procs.append(FrequencyPenalty(config.frequency_penalty, prompt_len=prompt))
    if config.no_repeat_ngram_size > 0:
        procs.append(NoRepeatNGram(config.no_repeat_ngram_size, pad_lens=pad_lens))
    if config.min_new_tokens > 0 and stops:
        if not isinstance(prompt, int):
            raise ValueError("min_new_tokens needs one prompt width for all rows: left-pad the batch and pass the "
                             "padded width as prompt_lens")
        procs.append(MinNewTokens(config.min_new_tokens, stop_ids=stops, prompt_len=prompt))
    if not config.greedy:
        if config.temperature != 1.0:
            procs.append(TemperatureWarper(config.temperature))
        if config.top_k > 0:
            procs.append(TopKWarper(config.top_k))
        if config.top_p < 1.0:
            procs.append(TopPWarper(config.top_p))
        if config.min_p > 0.0:
            procs.append(MinPWarper(config.min_p))
    return procs


def check_some_token_left(config: GenerationConfig, scores: torch.Tensor, generated: int,
                          live: torch.Tensor | None = None, *, rows_per_prompt: int | None = None) -> None:
    """Refuse a step at which the bans leave a row no token at all (no_repeat_ngram_size on a small vocabulary,
    with min_new_tokens holding back the stop tokens): its softmax is NaN, and decoding then chose a banned token
    or failed inside torch.multinomial. scores: (B, V) processed; live: (B,) rows still decoding (None: all);
    rows_per_prompt: given for prompt-major rows, the error names the prompt (the one a batch must lose)."""
    if config.no_repeat_ngram_size == 0:  # no other rule sets every score to -inf
        return
    empty = torch.isneginf(scores).all(dim=-1)
    if live is not None:
        empty &= live
    if bool(empty.any()):
        holding = generated < config.min_new_tokens  # MinNewTokens bans the stop tokens only this long
        held = f", and min_new_tokens={config.min_new_tokens} holds back the stop tokens" * holding
        # fewer max_new_tokens helps only past the first token: a prompt that bans every token fails at any length
        fixes = ["a smaller no_repeat_ngram_size (0 turns it off)", *["a smaller min_new_tokens"] * holding,
                 *[f"max_new_tokens <= {generated}"] * (generated > 0)]
        use = fixes[0] if len(fixes) == 1 else f"{', '.join(fixes[:-1])} or {fixes[-1]}"
        # in a batch, which prompt: the error ends the whole call, and the others decode without it
        which = ""
        if rows_per_prompt is not None and scores.shape[0] > rows_per_prompt:
            which = f" for prompt {int(empty.nonzero()[0, 0]) // rows_per_prompt}"
        raise ValueError(f"GenerationConfig.no_repeat_ngram_size={config.no_repeat_ngram_size} bans every token of the "
                         f"model's {scores.shape[-1]}-token vocabulary{which} after {generated} generated "
                         f"tokens{held}: no token is left to choose; use {use}")


def apply_processors(procs: Sequence, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Apply `procs` in order: input_ids (B, T), scores (B, V) -> new (B, V) scores."""
    for proc in procs:
        scores = proc(input_ids, scores)
    return scores
