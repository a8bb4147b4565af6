"""GenerationConfig and the result types shared by generate(), stream(), the search methods and the server."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from neurallayers.checks import is_finite, is_int, plain_fields


@dataclass
class GenerationConfig:
    """Every decoding knob. Greedy is temperature 0. Validation errors name the field and the allowed range."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off (CTRL / HF semantics: divide positive logits, multiply negative)
    presence_penalty: float = 0.0  # OpenAI semantics, in [-2, 2]
    frequency_penalty: float = 0.0  # OpenAI semantics, in [-2, 2]
    no_repeat_ngram_size: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)  # stop strings: generation ends before them, not included
    # False: min_new_tokens holds back eos and stop_token_ids only (transformers'); True: stop strings too, as vLLM's
    # min_tokens: one counts only where it ends in the text of a token after the first min_new_tokens
    stop_strings_after_min_new_tokens: bool = False
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None  # each prompt samples from it (alone or batched); None: a fresh seed per prompt
    # beam search
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False  # True, False or "never" (Hugging Face semantics, see search.beam_search)
    num_return_sequences: int = 1
    # contrastive search (penalty_alpha > 0 with top_k > 1) and contrastive decoding (an amateur model is given)
    penalty_alpha: float = 0.0
    contrastive_alpha: float = 0.1  # plausibility cut-off for expert/amateur contrastive decoding
    # speculative decoding (a draft model is given)
    num_speculative_tokens: int = 4
    # per-token log-probabilities: None = off, 0 = chosen token only, n = also the top-n alternatives
    logprobs: int | None = None

    def __post_init__(self) -> None:
        def need(name: str, ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"GenerationConfig.{name}={getattr(self, name)!r}: {what}")

        plain_fields(self)
        for name in ("max_new_tokens", "min_new_tokens", "top_k", "no_repeat_ngram_size", "num_beams",
                     "num_return_sequences", "num_speculative_tokens"):
            need(name, is_int(getattr(self, name)), "must be an integer")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                     "frequency_penalty", "length_penalty", "penalty_alpha", "contrastive_alpha"):
            need(name, is_finite(getattr(self, name)), "must be a finite number")
        need("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1")
        need("min_new_tokens", 0 <= self.min_new_tokens <= self.max_new_tokens,
             f"must be in [0, max_new_tokens={self.max_new_tokens}]")
        need("temperature", self.temperature >= 0, "must be >= 0 (0 means greedy)")
        need("top_k", self.top_k >= 0, "must be >= 0 (0 disables it)")
        need("top_p", 0 < self.top_p <= 1, "must be in (0, 1]")
        need("min_p", 0 <= self.min_p <= 1, "must be in [0, 1] (1 keeps the most likely tokens only)")
        need("repetition_penalty", self.repetition_penalty > 0, "must be > 0 (1 disables it)")
        need("presence_penalty", -2 <= self.presence_penalty <= 2, "must be in [-2, 2]")
        need("frequency_penalty", -2 <= self.frequency_penalty <= 2, "must be in [-2, 2]")
        need("no_repeat_ngram_size", self.no_repeat_ngram_size >= 0, "must be >= 0 (0 disables it)")
        need("num_beams", self.num_beams >= 1, "must be >= 1")
        need("num_return_sequences", self.num_return_sequences >= 1, "must be >= 1")
        need("early_stopping", isinstance(self.early_stopping, bool) or self.early_stopping == "never",
             "must be True, False or 'never'")
        if self.num_beams > 1:
            need("num_return_sequences", self.num_return_sequences <= self.num_beams,
                 f"must be <= num_beams={self.num_beams}")
        need("penalty_alpha", 0 <= self.penalty_alpha <= 1, "must be in [0, 1]")
        need("contrastive_alpha", 0 < self.contrastive_alpha < 1, "must be in (0, 1)")
        need("num_speculative_tokens", self.num_speculative_tokens >= 1, "must be >= 1")
        need("logprobs", self.logprobs is None or (is_int(self.logprobs) and 0 <= self.logprobs <= 20),
             "must be None or an integer in [0, 20] (the top alternatives to list; 0 = the chosen token's only)")
        need("ignore_eos", isinstance(self.ignore_eos, bool), "must be True or False")
        need("stop_strings_after_min_new_tokens", isinstance(self.stop_strings_after_min_new_tokens, bool),
             "must be True or False")
        need("stop", isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop),
             "must be a list of non-empty strings")
        need("stop_token_ids", isinstance(self.stop_token_ids, list)
             and all(is_int(t) and t >= 0 for t in self.stop_token_ids), "must be a list of token ids")
        need("logit_bias", isinstance(self.logit_bias, dict)
             and all(is_int(k) and k >= 0 and is_finite(v) for k, v in self.logit_bias.items()),
             "must map token ids (integers >= 0) to finite numbers")
        need("seed", self.seed is None or valid_seed(self.seed), "must be None or an integer in [-2**63, 2**64)")

    def check_vocab(self, vocab_size: int) -> None:
        """Refuse token ids (stop_token_ids, logit_bias keys) that the model's vocabulary does not have, and more
        top alternatives (logprobs) than it has tokens (a small character vocabulary)."""
        for name, ids in (("stop_token_ids", self.stop_token_ids), ("logit_bias", list(self.logit_bias))):
            bad = [t for t in ids if t >= vocab_size]
            if bad:
                raise ValueError(f"GenerationConfig.{name} holds token ids outside the model's vocabulary "
                                 f"[0, {vocab_size}): {bad[:5]}")
        if self.logprobs is not None and self.logprobs > vocab_size:
            raise ValueError(f"GenerationConfig.logprobs={self.logprobs}: the model's vocabulary has {vocab_size} "
                             f"tokens, so at most {vocab_size} alternatives can be listed")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes: Any) -> GenerationConfig:
        return GenerationConfig.from_dict({**dataclasses.asdict(self), **changes})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict):  # was a TypeError from iterating it
            raise ValueError(f"GenerationConfig.from_dict takes a mapping of fields, got {type(data).__name__}")
        for key in data:
            if key not in known:
                hint = difflib.get_close_matches(str(key), sorted(known), n=1)  # a Python or YAML key may be an int
                did = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ValueError(f"GenerationConfig has no field {key!r}{did}")
        return cls(**data)


def valid_seed(v: Any) -> bool:
    """An integer torch.Generator.manual_seed takes (64 bits, signed or not); a larger one failed there, nameless."""
    return is_int(v) and -2**63 <= v < 2**64


@dataclass
class TokenLogprob:
    """The chosen token's log-probability (under the model's distribution before sampling filters) and the
    top alternatives as (token_id, logprob) pairs, best first."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Generation:
    """One generated sequence for one prompt."""

    token_ids: list[int]  # generated tokens only (no prompt), stop string tokens trimmed
    text: str = ""
    finish_reason: str = "length"  # "stop" (eos, stop token or stop string) or "length"
    prompt_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    score: float | None = None  # beam search: the length-penalised sequence score
    # every token the model chose, as OpenAI and vLLM count completion tokens: token_ids plus a final stop token
    # (eos, stop_token_ids) and the tokens of a stop string; None: the same as len(token_ids)
    generated_tokens: int | None = None
    # what ended it: the token id (an eos id or one of stop_token_ids: chosen, but not in token_ids), the stop string
    # (cut from the text), or None where it ran to its length; vLLM's stop_reason, but naming an eos too
    stopped_by: int | str | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids) if self.generated_tokens is None else self.generated_tokens


@dataclass
class StreamEvent:
    """One step of stream(): the newly completed text (may be "" while a UTF-8 character or a possible stop
    string is held back), the token, and finish_reason on the last event."""

    text: str
    token_id: int | None = None
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None
    stopped_by: int | str | None = None  # on the last event: as Generation.stopped_by
