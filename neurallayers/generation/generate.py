"""generate() and stream(): prefill, then one token per step over the static KV cache.

The plain path (greedy and sampling) is one generator, `_decode_steps`, shared by `generate_ids` (and so
`generate`) and `stream`: prompts are left-padded into one batch, every row sees only its own tokens (attention
mask) at its own positions (position ids start at 0 on the first real token), the prompt is prefilled once
computing logits for its last position only, and each step feeds one token per row at cache column `input_pos`.
Rows that finish keep stepping (fed padding, their output ignored) so the batch keeps one static shape, which a
compiled one-token step needs, and the cache rows never have to be moved; the batch ends when every row is done.

Beam search, contrastive search/decoding and speculative decoding live in search.py; generate() dispatches to them
and decodes their tokens (stop strings are applied to their text afterwards; beam search also finishes a hypothesis
at one, as transformers does, so that it competes with its own score).
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from neurallayers.checks import is_int
from neurallayers.data.tokenizers import continuation_text
from neurallayers.generation.config import Generation, GenerationConfig, StreamEvent, TokenLogprob, valid_seed
from neurallayers.generation.fast import decode_step_for
from neurallayers.generation.processors import apply_processors, build_processors, check_some_token_left
from neurallayers.generation.search import stop_ids
from neurallayers.nn.modes import eval_mode

SYNC_EVERY = 8  # without stop strings, look at the host-side "all rows done?" flag only every few steps
STOP_MARGIN = 8  # characters that decoding a text's last tokens alone may get wrong at its start (split UTF-8, spaces)


# ----- checks -----
def _config(config: GenerationConfig | None, overrides: dict) -> GenerationConfig:
    if config is not None and not isinstance(config, GenerationConfig):
        raise ValueError(f"config must be a GenerationConfig or None, got {type(config).__name__}")
    config = config or GenerationConfig()
    return config.replace(**overrides) if overrides else config


def _check_decoder(model: nn.Module, role: str = "model") -> None:
    """Generation needs a causal LM with a KV cache; an encoder gets a one-line error, not an AttributeError. `role`
    names the argument: a draft or amateur model that is no decoder (an encoder, a run's path) failed deep inside
    the search with an AttributeError."""
    config = getattr(model, "config", None)
    which = "" if role == "model" else f"{role}: "
    if getattr(config, "causal", None) is False:
        raise ValueError(f"{which}{type(model).__name__} is an encoder (config.causal=False): it embeds "
                         "(neurallayers.embed) or fills masks (pipeline('fill-mask')), and does not generate text")
    if config is None or not hasattr(model, "new_cache"):
        path = " (a path: load the model first, with neurallayers.load)" if isinstance(model, str | os.PathLike) else ""
        raise ValueError(f"{which}generation needs a causal decoder (DecoderLM), got {type(model).__name__}{path}")


def _check_ids(model: nn.Module, input_ids: list[list[int]], eos_ids: list[int]) -> None:
    vocab, block = model.config.vocab_size, model.config.block_size
    if not isinstance(input_ids, list) or not input_ids:
        raise ValueError("input_ids must be a non-empty list of prompts (lists of token ids)")
    for i, ids in enumerate(input_ids):
        if not isinstance(ids, list) or not ids:
            raise ValueError(f"prompt {i} is empty: a prompt needs at least one token")
        bad = [t for t in ids if not is_int(t) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt {i} holds token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        _check_length(i, ids, block)
    if not isinstance(eos_ids, list) or not all(isinstance(t, int) and 0 <= t < vocab for t in eos_ids):
        raise ValueError(f"eos_ids must be a list of token ids in [0, {vocab}), got {eos_ids!r}")


def _check_length(i: int, ids: list[int], block: int, whose: str = "the model's") -> None:
    if len(ids) > block:
        raise ValueError(f"prompt {i} has {len(ids)} tokens but {whose} context length (block_size) is "
                         f"{block}: shorten the prompt to at most {block} tokens")


def _room(config: GenerationConfig, block: int, prompt_len: int, *, fed: int = 0) -> int:
    """How many tokens a prompt gets: max_new_tokens, or fewer where its context fills (the last token needs no
    position, unless a method feeds it: `fed`)."""
    return min(config.max_new_tokens, block - prompt_len + 1 - fed)


def _row_seed(seed: int, k: int) -> int:
    """The seed of the k-th sequence sampled for a prompt. It depends on (seed, k) only, never on the row's place
    in the batch, so a prompt samples the same tokens alone or batched with others."""
    return seed if k == 0 else hash((seed, k)) % 2**63


# ----- the decode loop -----
@dataclass
class _Run:
    """The state of one batch while it decodes; `_decode_steps` yields it after every step.

    tokens: (R, P + budget) left-padded prompts, then the tokens generated so far (pad after a row is done).
    done: (R,) bool; stopped: (R,) bool, done by a stop token; lengths: (R,) generated tokens before the stop.
    chosen: (R, budget) log-probability of each chosen token; top_lp, top_ids: (R, budget, n) alternatives.
    """

    tokens: torch.Tensor
    width: int  # P: the padded prompt width
    prompt_lens: list[int]
    n: int  # tokens generated so far
    done: torch.Tensor
    stopped: torch.Tensor
    lengths: torch.Tensor
    chosen: torch.Tensor | None = None
    top_lp: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None

    def end_rows(self, rows: list[int]) -> None:
        """Mark rows done from outside the loop (a stop string showed up in their text)."""
        with torch.inference_mode():  # the run's tensors are inference tensors
            self.done[rows] = True

    def generations(self) -> list[Generation]:
        """One Generation per row, token ids without padding and without the stop token."""
        tokens = self.tokens[:, self.width:self.width + self.n].tolist()
        lengths, stopped = self.lengths.tolist(), self.stopped.tolist()
        lps = _logprob_lists(self, lengths)
        return [Generation(token_ids=tokens[r][:lengths[r]], finish_reason="stop" if stopped[r] else "length",
                           prompt_tokens=self.prompt_lens[r], logprobs=None if lps is None else lps[r],
                           generated_tokens=lengths[r] + stopped[r])
                for r in range(len(tokens))]


def _logprob_lists(run: _Run, lengths: list[int]) -> list[list[TokenLogprob]] | None:
    if run.chosen is None:
        return None
    tokens = run.tokens[:, run.width:run.width + run.n].tolist()
    chosen = run.chosen[:, :run.n].tolist()
    top_lp, top_ids = run.top_lp[:, :run.n].tolist(), run.top_ids[:, :run.n].tolist()
    return [[TokenLogprob(token_id=tokens[r][i], logprob=chosen[r][i],
                          top=list(zip(top_ids[r][i], top_lp[r][i], strict=True)))
             for i in range(lengths[r])] for r in range(len(tokens))]


def forward_step(model: nn.Module, tok: torch.Tensor, *, cache, input_pos: int, position_ids: torch.Tensor | None,
                 attention_mask: torch.Tensor | None) -> torch.Tensor:
    """One decode step: tok (R, 1) written at cache column input_pos -> next-token logits (R, V) in float32.

    generation.fast.prepare_for_decode registers a compiled one-token step that replaces it.
    """
    out = model(tok, cache=cache, input_pos=input_pos, position_ids=position_ids, attention_mask=attention_mask)
    return out.logits[:, -1].float()


def _choose(scores: torch.Tensor, gens: list[torch.Generator] | None) -> torch.Tensor:
    """scores (R, V) -> (R,) chosen ids: argmax when greedy (gens None), else a sample of softmax(scores).

    Sampling uses the exponential race (argmax of p / q, q ~ Exp(1)), which draws exactly from p without a host
    sync; each row draws its noise from its own generator, so rows do not depend on each other.
    """
    # max(...).indices, not argmax: the same first index of the largest value (NaN counting as largest), and 2-3x
    # faster on CPU (74 vs 28 us over GPT-2's 50,257 scores; argmax took 1.5% of a bf16 decode step)
    if gens is None:
        return scores.max(dim=-1).indices
    probs = scores.softmax(dim=-1)
    noise = torch.empty_like(probs)
    for r, g in enumerate(gens):
        noise[r].exponential_(generator=g)
    return (probs / noise).max(dim=-1).indices


@torch.inference_mode()
def _decode_steps(model: nn.Module, input_ids: list[list[int]], config: GenerationConfig, *,
                  eos_ids: list[int], sync_every: int = 1, seeds: list[int] | None = None) -> Iterator[_Run]:
    """Greedy or sampled decoding of a batch of prompts; yields the run state after every generated token.

    Rows are prompt-major: prompt i's config.num_return_sequences sequences are rows i*n .. i*n+n-1. The caller
    may end rows (run.end_rows) or stop iterating at any step. Without such a caller, the loop checks every
    `sync_every` steps whether every row is done (a host sync). seeds: one per prompt, in place of config.seed.
    """
    _check_ids(model, input_ids, eos_ids)
    config.check_vocab(model.config.vocab_size)
    model.eval()
    device = next(model.parameters()).device
    n_ret, b = config.num_return_sequences, len(input_ids)
    lens = [len(ids) for ids in input_ids]
    width = max(lens)
    # Each row stops where its own context is full (the last token needs no position), as it would alone; the
    # cache may then hold more columns than block_size, as padding columns take no position.
    limits = [_room(config, model.config.block_size, n) for n in lens for _ in range(n_ret)]
    budget = max(limits)
    rows = b * n_ret

    tokens = torch.zeros(rows, width + budget, dtype=torch.long, device=device)
    pads = [width - n for n in lens for _ in range(n_ret)]
    for r, p in enumerate(pads):
        tokens[r, p:width] = torch.tensor(input_ids[r // n_ret], dtype=torch.long)
    padded = any(pads)
    mask = None  # (R, P + budget) over every cache column; None when no row is padded (the fast, mask-free path)
    base_pos = None  # (R, 1) position id of column 0 of the generated tokens
    if padded:
        pads_t = torch.tensor(pads, device=device)
        mask = (torch.arange(width + budget, device=device)[None, :] >= pads_t[:, None]).long()
        base_pos = (width - pads_t)[:, None]
    run = _Run(tokens=tokens, width=width, prompt_lens=[n for n in lens for _ in range(n_ret)], n=0,
               done=torch.zeros(rows, dtype=torch.bool, device=device),
               stopped=torch.zeros(rows, dtype=torch.bool, device=device),
               lengths=torch.zeros(rows, dtype=torch.long, device=device))
    if config.logprobs is not None:
        run.chosen = torch.zeros(rows, budget, device=device)
        run.top_lp = torch.zeros(rows, budget, config.logprobs, device=device)
        run.top_ids = torch.zeros(rows, budget, config.logprobs, dtype=torch.long, device=device)

    # rows whose context fills before the longest budget ends: done after their own last token
    limit_t = torch.tensor(limits, device=device) if min(limits) < budget else None
    procs = build_processors(config, eos_ids=eos_ids, prompt_lens=width, pad_lens=pads if padded else None)
    stops = torch.tensor(stop_ids(config, eos_ids), dtype=torch.long, device=device)
    gens = None
    if not config.greedy:
        # Unseeded, every prompt draws its own seed: one shared seed would give a batch of equal prompts equal
        # samples (and unequal prompts correlated ones).
        if seeds is None:
            seeds = [config.seed] * b if config.seed is not None else torch.randint(0, 2**62, (b,)).tolist()
        gens = [torch.Generator(device=device).manual_seed(_row_seed(seeds[r // n_ret], r % n_ret))
                for r in range(rows)]

    # prepare_for_decode() registers a fast (static-shape, compiled) step and its static caches.
    fast = decode_step_for(model)
    step = fast if fast is not None else functools.partial(forward_step, model)
    # Prefill each prompt once; its sampled sequences then copy its cache rows.
    cache = (fast or model).new_cache(rows, width + budget - 1)
    prompt_ids, prompt_mask = tokens[::n_ret, :width], None if mask is None else mask[::n_ret, :width]
    positions = None if mask is None else (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(prompt_ids, cache=cache.rows(0, b), attention_mask=prompt_mask, position_ids=positions,
                logits_to_keep=1)
    logits = out.logits[:, -1].float()
    if n_ret > 1:
        cache.reorder(torch.arange(b, device=device).repeat_interleave(n_ret))
        logits = logits.repeat_interleave(n_ret, dim=0)

    for i in range(budget):
        col = width + i
        scores = apply_processors(procs, tokens[:, :col], logits)
        check_some_token_left(config, scores, i, live=~run.done, rows_per_prompt=n_ret)
        tok = torch.where(run.done, 0, _choose(scores, gens))  # done rows are fed padding
        if run.chosen is not None:
            logp = F.log_softmax(logits, dim=-1)  # the model's own distribution, before the processors
            run.chosen[:, i] = logp.gather(1, tok[:, None])[:, 0]
            if config.logprobs:
                run.top_lp[:, i], run.top_ids[:, i] = torch.topk(logp, config.logprobs, dim=-1)
        hit = torch.isin(tok, stops) & ~run.done
        run.lengths += ~(run.done | hit)
        run.stopped |= hit
        run.done |= hit
        if limit_t is not None:
            run.done |= limit_t <= i + 1
        tokens[:, col] = tok
        run.n = i + 1
        yield run
        if i + 1 == budget or ((i + 1) % sync_every == 0 and bool(run.done.all())):
            return
        pos_ids = None if base_pos is None else base_pos + i
        if limit_t is not None:  # rows done at a full context keep stepping: their positions must still exist
            pos_ids = pos_ids.clamp(max=model.config.block_size - 1)
        logits = step(tok[:, None], cache=cache, input_pos=col, position_ids=pos_ids, attention_mask=mask)


def generate_ids(model: nn.Module, input_ids: list[list[int]], config: GenerationConfig, *,
                 eos_ids: list[int], seeds: list[int] | None = None) -> list[Generation]:
    """Greedy or sampled generation from token ids, without a tokenizer (no stop strings, text left empty).

    Args:
        model: a DecoderLM.
        input_ids: prompts as lists of token ids, any lengths.
        config: the generation settings (greedy when temperature is 0); beam/contrastive/speculative settings are
            not handled here (use generate()).
        eos_ids: ids that end a sequence (ignored when config.ignore_eos); config.stop_token_ids also end it.
        seeds: one seed per prompt in place of config.seed (see generate).

    Returns:
        len(input_ids) * num_return_sequences Generations, prompt-major; token_ids exclude the prompt and the
        stop token; finish_reason "stop" (a stop token) or "length" (max_new_tokens or the context length).
    """
    _check_decoder(model)
    if not isinstance(config, GenerationConfig):
        raise ValueError(f"config must be a GenerationConfig, got {type(config).__name__}")
    if config.num_beams > 1 or config.penalty_alpha > 0:
        raise ValueError("generate_ids does greedy and sampled decoding only; num_beams > 1 and penalty_alpha > 0 "
                         "go through generate() (or neurallayers.generation.search)")
    with eval_mode(model):
        (run,) = deque(_decode_steps(model, input_ids, config, eos_ids=eos_ids, sync_every=SYNC_EVERY, seeds=seeds),
                       maxlen=1)
    return run.generations()


# ----- text: stop strings and streaming -----
class _RowText:
    """The text of one sequence as its tokens arrive: never half a UTF-8 character (StreamDecoder), cut before
    the first stop string, and holding back a tail that could still become a stop string."""

    def __init__(self, tokenizer, stops: list[str], context: list[int], *, search_after: int = 0) -> None:
        from neurallayers.data.tokenizers import StreamDecoder

        self.context = context  # the prompt's ids: the text is what the tokens add after it (continuation_text)
        self.decoder = StreamDecoder(tokenizer, context=context)
        self.stops = stops
        # a stop string counts only where it ends in the text of a token after the first `search_after` (vLLM's
        # min_tokens: its stop checker skips them); one wholly in their text stays in the output
        self.search_after = search_after
        self.longest = max((len(s) for s in stops), default=0)
        self.text = ""
        self.sent = 0  # characters already handed out by push()
        self.ids: list[int] = []
        self.ends: list[float] = []  # len(text) after each token (before any cut; inf once stopped)
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; returns the text that is now final (may be "")."""
        piece = self.decoder.push(token_id)
        self.ids.append(token_id)
        self.ends.append(len(self.text) + len(piece) if not self.stopped else math.inf)
        self._add(piece)
        return self._release(final=False)

    def finish(self) -> str:
        """End of sequence: the rest of the text (a stop string in the flushed tail still cuts it)."""
        if not self.stopped:
            self._add(self.decoder.flush())
        return self._release(final=True)

    def kept_tokens(self) -> int:
        """How many tokens lie entirely before the stop string (all of them when none was found)."""
        if not self.stopped:
            return len(self.ends)
        k = sum(1 for e in self.ends if e <= len(self.text))
        # a token just before the cut may also hold the first bytes of a character after it: drop such tokens
        while k > 0 and not self.text.startswith(continuation_text(self.decoder.tokenizer, self.context,
                                                                   self.ids[:k])):
            k -= 1
        return k

    def _add(self, piece: str) -> None:
        if self.stopped or not piece:
            return
        before = len(self.text)
        self.text += piece
        if len(self.ids) <= self.search_after:
            return
        # each stop string where it ends in the new piece (it may start before it)
        found = [i for i in (self.text.find(s, max(0, before - len(s) + 1)) for s in self.stops) if i >= 0]
        if found:
            self.text, self.stopped = self.text[:min(found)], True

    def _release(self, *, final: bool) -> str:
        safe = len(self.text)
        if not final and not self.stopped:
            # hold back the longest tail that is the start of some stop string
            for k in range(min(self.longest - 1, len(self.text)), 0, -1):
                if any(s.startswith(self.text[-k:]) for s in self.stops):
                    safe -= k
                    break
        out, self.sent = self.text[self.sent:safe], max(self.sent, safe)
        return out


class _HeldEvents:
    """A sequence's token events, held back while their row holds back text that could still become a stop string:
    the tokens of a stop string then never reach a stream, so a stream's token events (and log-probabilities) are
    generate()'s token_ids; their text only waits, as it would anyway."""

    def __init__(self, row: _RowText) -> None:
        self.row, self.held, self.sent = row, [], 0

    def push(self, event: StreamEvent) -> list[StreamEvent]:
        """The events to send now (maybe none, maybe several) after `event`, a token the row has taken."""
        self.held.append(event)
        # a tail held back as the start of a stop string, or the first bytes of a character that may start one
        if self.row.stops and (len(self.row.text) > self.row.sent or self._may_stop()):
            return []
        return self.flush()

    def _may_stop(self) -> bool:
        """Whether text the decoder still holds may hold or start a stop string: an incomplete character, or text
        waiting for its spaces to be cleaned up (a word-piece tokenizer holds its last word so: holding its tokens
        for that alone held every event of the stream until its end). Cleaning up only drops spaces, so the text
        and stop strings are compared without them."""
        decoder = self.row.decoder
        if decoder.incomplete or decoder.uncleaned.endswith(" "):  # a stop string next may take that space: " ,"
            return True
        text = decoder.uncleaned.replace(" ", "")
        stops = [s.replace(" ", "") for s in self.row.stops] if decoder.uncleaned else []
        return any(not s or s in text or any(s.startswith(text[-k:]) for k in range(1, len(text) + 1)) for s in stops)

    def flush(self) -> list[StreamEvent]:
        out, self.held = self.held, []
        self.sent += len(out)
        return out

    def finish(self, reason: str, pending: str = "") -> tuple[list[StreamEvent], str, str]:
        """The sequence ended (`reason`): the events still to send, the last event's text and its finish reason. The
        text the decoder held to the end (a last word waiting for its spaces to be cleaned up) may hold a stop string:
        its tokens are then not sent and the reason is "stop", as generate() cuts it."""
        if not self.row.stopped:
            text = self.row.finish()
            if self.row.stopped:
                events, text = self.stopped(text)
                return events, text, "stop"
            return self.flush(), pending + text, reason
        return self.flush(), pending + self.row.finish(), reason

    def stopped(self, pending: str) -> tuple[list[StreamEvent], str]:
        """The row met a stop string: the held tokens before it (their text moved to the last event) and the text
        of the last event."""
        keep = self.held[:max(0, self.row.kept_tokens() - self.sent)]
        text = "".join(e.text for e in self.held) + pending
        self.held = []
        return [StreamEvent(text="", token_id=e.token_id, logprob=e.logprob) for e in keep], text


def stop_search_after(config: GenerationConfig) -> int:
    """How many generated tokens come before stop strings are looked for: min_new_tokens where they wait for it
    (stop_strings_after_min_new_tokens, vLLM's min_tokens), else none."""
    return config.min_new_tokens if config.stop_strings_after_min_new_tokens else 0


def _apply_stop_strings(gen: Generation, tokenizer, stops: list[str], context: list[int], *,
                        search_after: int = 0) -> Generation:
    """Decode gen's tokens (after its prompt's, `context`) into gen.text, cutting at the first stop string (tokens
    and logprobs trimmed)."""
    if not stops:
        gen.text = continuation_text(tokenizer, context, gen.token_ids)
        return gen
    row = _RowText(tokenizer, stops, context, search_after=search_after)
    for t in gen.token_ids:
        row.push(t)
        if row.stopped:
            break
    _finish(gen, row)
    return gen


def _finish(gen: Generation, row: _RowText) -> None:
    """`gen`'s text from `row`, and where a stop string completed, its tokens cut after the one that completed it."""
    row.finish()
    gen.text = row.text
    if row.stopped:
        k = row.kept_tokens()
        gen.generated_tokens = len(row.ids)  # up to the token that completed the stop string
        gen.token_ids, gen.finish_reason = gen.token_ids[:k], "stop"
        gen.logprobs = None if gen.logprobs is None else gen.logprobs[:k]


def _encode_prompts(tokenizer, prompts) -> list[list[int]]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, list) or not prompts:
        raise ValueError("prompts must be a string, a non-empty list of strings or a non-empty list of token id lists")
    if all(isinstance(p, str) for p in prompts):
        if tokenizer is None:
            raise ValueError("text prompts need a tokenizer; pass one, or give prompts as lists of token ids")
        return [tokenizer.encode(p, add_special_tokens=True) for p in prompts]  # a Llama tokenizer's bos first
    if all(isinstance(p, list) for p in prompts):
        for i, ids in enumerate(prompts):
            odd = [t for t in ids if not is_int(t)]
            if odd:  # else "outside the vocabulary", though a numpy or torch integer may well be inside it
                raise ValueError(f"prompt {i} holds {type(odd[0]).__name__} values, not token ids (Python ints): "
                                 f"{odd[:5]}; convert an array or tensor with .tolist()")
        return prompts
    kinds = {type(p).__name__ for p in prompts}
    if kinds == {"int"}:  # one prompt's ids, as stream() takes them: .tolist() is no help there
        raise ValueError("prompts is a list of ints: generate() takes a list of prompts, so give one prompt of "
                         "token ids as [ids]")
    if len(kinds) == 1:  # a list of tensors or arrays is no mix of strings and lists
        raise ValueError(f"prompts must be strings or lists of token ids, got a list of {kinds.pop()}; convert an "
                         "array or tensor with .tolist()")
    raise ValueError("prompts must be all strings or all lists of token ids, not a mix")


def _eos_ids(tokenizer, model: nn.Module) -> list[int]:
    """The ids that end a generation: the tokenizer's; without one, those a Hugging Face folder's generation_config
    (or config.json) names, which load() keeps on the model (transformers' generate stops at them too)."""
    if tokenizer is None:
        return list(getattr(model, "generation_eos_ids", []))
    return list(tokenizer.eos_ids)


def _stop_check(tokenizer, stops: list[str], input_ids: list[list[int]], *,
                search_after: int = 0) -> Callable[[int, list[int]], bool] | None:
    """Whether prompt i's generated tokens' text holds a stop string (None without stop strings); the text is
    theirs after the prompt (continuation_text), as the final text is cut, so " br" is found after a SentencePiece
    prompt too.

    Beam search asks this of every candidate at every step, and a candidate's parent holds no stop string (it would
    have finished): so only the text near its end is decoded, the last tokens doubling until the text before the
    newest token's is longer than any stop string (plus STOP_MARGIN characters a token boundary may garble): a stop
    string ends in the newest token's text, and may start before it however long that text is. Decoding all of it
    made a beam search with stop strings quadratic in its length (400 tokens with 2 beams: 670,000 tokens decoded).

    search_after (as _RowText's): none within the first that many tokens, and later only one that ends in the newest
    token's text (a parent may hold one from before)."""
    if not stops:
        return None
    need = max(len(s) for s in stops) + STOP_MARGIN

    def holds_stop(i: int, ids: list[int]) -> bool:
        if len(ids) <= search_after:
            return False
        m, newest = 1, None
        while True:
            m = min(m, len(ids))
            text = continuation_text(tokenizer, input_ids[i] + ids[:len(ids) - m], ids[len(ids) - m:])
            newest = len(text) if newest is None else newest  # m == 1: the newest token's text
            if m == len(ids) or len(text) - newest >= need:
                if search_after:
                    return any(text.find(s, max(0, len(text) - newest - len(s) + 1)) >= 0 for s in stops)
                return any(s in text for s in stops)
            m *= 2

    return holds_stop


def _search(model: nn.Module, input_ids: list[list[int]], config: GenerationConfig, *, eos_ids: list[int],
            draft_model: nn.Module | None, amateur_model: nn.Module | None,
            holds_stop: Callable[[int, list[int]], bool] | None = None) -> list[list[Generation]] | None:
    """Dispatch to the search methods (None = the plain greedy/sampling path). holds_stop (stop strings) goes to
    beam search, where a hypothesis that reaches a stop string must compete as a finished one; the other methods
    follow one sequence each, so cutting its text afterwards gives what stopping there would."""
    chosen = [name for name, on in (("num_beams > 1", config.num_beams > 1), ("penalty_alpha > 0",
              config.penalty_alpha > 0), ("amateur_model", amateur_model is not None),
              ("draft_model", draft_model is not None)) if on]
    if len(chosen) > 1:
        raise ValueError(f"choose one decoding method; got {' and '.join(chosen)}")
    if not chosen:
        return None
    from neurallayers.generation import search

    name = {"num_beams > 1": "beam_search", "penalty_alpha > 0": "contrastive_search",
            "amateur_model": "contrastive_decoding", "draft_model": "speculative_decode"}[chosen[0]]
    fn = getattr(search, name)
    extra = (draft_model,) if draft_model is not None else (amateur_model,) if amateur_model is not None else ()
    # here, where each prompt has its place in the call: a search sees a group of prompts (one, for speculative
    # decoding), and named a bad one by its place in that group
    _check_ids(model, input_ids, eos_ids)
    block = model.config.block_size
    if amateur_model is not None:  # scores every step beside the model; a draft only proposes (while it has room)
        block = min(block, amateur_model.config.block_size)
        for i, ids in enumerate(input_ids):
            _check_length(i, ids, block, "the amateur model's")
    # As the plain path does, each prompt stops where its own context is full rather than being refused: the last
    # token needs no position, except in contrastive search, which feeds every candidate. Prompts whose room
    # differs decode in separate batches (a method's batch shares one length), and speculative decoding takes one
    # prompt at a time; each prompt gets the tokens it gets alone.
    fed = 1 if name == "contrastive_search" else 0
    limits = [_room(config, block, len(ids), fed=fed) if isinstance(ids, list) else config.max_new_tokens
              for ids in input_ids]
    groups: dict[int, list[int]] = {}
    for i, limit in enumerate(limits):
        if limit < 1:  # else check_request blamed max_new_tokens, which no value of fixes
            raise ValueError(f"prompt {i} has {len(input_ids[i])} tokens, the whole context (block_size {block}): "
                             f"contrastive search feeds each candidate token, so its prompts may hold at most "
                             f"{block - 1} tokens")
        groups.setdefault(i if name == "speculative_decode" else limit, []).append(i)
    out: list[list[Generation]] = [[] for _ in input_ids]
    for idx in groups.values():
        limit, cfg = limits[idx[0]], config
        if 0 < limit < config.max_new_tokens:
            cfg = config.replace(max_new_tokens=limit, min_new_tokens=min(config.min_new_tokens, limit))
        kw = {}
        if name == "beam_search" and holds_stop is not None:  # the search's row b is prompt idx[b]
            kw["holds_stop"] = functools.partial(lambda rows, b, ids: holds_stop(rows[b], ids), idx)
        for i, gens in zip(idx, _search_batch(fn, name, model, extra, [input_ids[i] for i in idx], cfg, eos_ids, kw),
                           strict=True):
            out[i] = gens
    return out


def _search_batch(fn, name: str, model: nn.Module, extra: tuple, input_ids: list[list[int]],
                  config: GenerationConfig, eos_ids: list[int], kw: dict) -> list[list[Generation]]:
    """One search call over prompts (one for speculative decoding): num_return_sequences Generations a prompt."""
    n = config.num_return_sequences
    if name in ("beam_search", "contrastive_decoding") or n == 1:
        return fn(model, *extra, input_ids, config, eos_ids=eos_ids, **kw)
    # The other searches decode one sequence per row: a deterministic method (contrastive search, or greedy) gives
    # n copies of its one, as the plain greedy path does; speculative sampling draws sequence k with seed (seed, k).
    config = config.replace(num_return_sequences=1)
    if name == "contrastive_search" or config.greedy:
        return [[copy.deepcopy(g) for _ in range(n) for g in one]
                for one in fn(model, *extra, input_ids, config, eos_ids=eos_ids)]
    return [[g for k in range(n) for g in fn(model, *extra, input_ids, config.replace(
        seed=None if config.seed is None else _row_seed(config.seed, k)), eos_ids=eos_ids)[0]]]


def generate(model: nn.Module, tokenizer, prompts: str | list[str] | list[list[int]],
             config: GenerationConfig | None = None, *, draft_model: nn.Module | None = None,
             amateur_model: nn.Module | None = None, seeds: list[int] | None = None,
             **overrides) -> list[Generation]:
    """Generate a continuation of each prompt.

    Args:
        model: a DecoderLM.
        tokenizer: a neurallayers Tokenizer; may be None when prompts are token ids (text is then "").
        prompts: a string, a list of strings, or a list of token id lists.
        config: the generation settings (default GenerationConfig()); `overrides` replace fields of it.
        draft_model: a small model for speculative decoding (search.speculative_decode).
        amateur_model: a weaker model for contrastive decoding (search.contrastive_decoding).
        seeds: one seed per prompt, in place of config.seed: prompt i samples as it does alone with seed seeds[i].

    Returns:
        num_return_sequences Generations per prompt, prompt-major. Greedy (temperature 0) or sampling by
        default; num_beams > 1, penalty_alpha > 0, amateur_model or draft_model choose a search method. Text
        ends before the first stop string, which is not included. Every method stops (finish_reason "length")
        when the model's context (block_size) is full, even short of max_new_tokens.
    """
    _check_decoder(model)  # before eval_mode, which would fail on a tokenizer passed as the model
    for role, helper in (("draft_model", draft_model), ("amateur_model", amateur_model)):
        if helper is not None:
            _check_decoder(helper, role)
    with eval_mode(model, draft_model, amateur_model):  # the caller's mode (training, say) comes back after
        return _generate(model, tokenizer, prompts, config, draft_model=draft_model, amateur_model=amateur_model,
                         seeds=seeds, overrides=overrides)


def _generate(model: nn.Module, tokenizer, prompts, config: GenerationConfig | None, *,
              draft_model: nn.Module | None, amateur_model: nn.Module | None, seeds: list[int] | None,
              overrides: dict) -> list[Generation]:
    _check_decoder(model)
    config = _config(config, overrides)
    input_ids = _encode_prompts(tokenizer, prompts)
    eos_ids = _eos_ids(tokenizer, model)
    stops = config.stop if tokenizer is not None else []
    if config.stop and tokenizer is None:
        raise ValueError("stop strings need a tokenizer to decode the text; pass one or use stop_token_ids")
    if seeds is not None:
        if not isinstance(seeds, list) or len(seeds) != len(input_ids) or not all(valid_seed(s) for s in seeds):
            raise ValueError(f"seeds must be a list of {len(input_ids)} integers in [-2**63, 2**64), one per prompt, "
                             f"got {seeds!r}")
        if config.greedy or len(set(seeds)) == 1:
            config, seeds = config.replace(seed=seeds[0]), None
        elif draft_model is not None or amateur_model is not None:  # their sampling draws per call: one at a time
            return [g for ids, seed in zip(input_ids, seeds, strict=True)
                    for g in generate(model, tokenizer, [ids], config.replace(seed=seed), draft_model=draft_model,
                                      amateur_model=amateur_model)]
    searched = _search(model, input_ids, config, eos_ids=eos_ids, draft_model=draft_model,
                       amateur_model=amateur_model,
                       holds_stop=_stop_check(tokenizer, stops, input_ids, search_after=stop_search_after(config)))
    if searched is not None:
        return [_apply_stop_strings(g, tokenizer, stops, ids, search_after=stop_search_after(config))
                if tokenizer is not None else g
                for per_prompt, ids in zip(searched, input_ids, strict=True) for g in per_prompt]
    if not stops:
        gens = generate_ids(model, input_ids, config, eos_ids=eos_ids, seeds=seeds)
        if tokenizer is not None:  # prompt-major, num_return_sequences a prompt
            for i, g in enumerate(gens):
                g.text = continuation_text(tokenizer, input_ids[i // config.num_return_sequences], g.token_ids)
        return gens
    # Stop strings: follow each row's text as it grows and end the row at its first stop string.
    texts = [_RowText(tokenizer, stops, input_ids[i // config.num_return_sequences],
                      search_after=stop_search_after(config))
             for i in range(len(input_ids) * config.num_return_sequences)]
    run = None
    for run in _decode_steps(model, input_ids, config, eos_ids=eos_ids, seeds=seeds):
        col = run.width + run.n - 1
        last, taken, done = run.tokens[:, col].tolist(), run.lengths.tolist(), run.done.tolist()
        for r, row in enumerate(texts):
            # a row took this step's token unless it was done or stopped on it; `done` alone would also drop the
            # last token of a row whose context just filled
            if taken[r] == run.n:
                row.push(last[r])
        run.end_rows([r for r, row in enumerate(texts) if row.stopped and not done[r]])
        if all(row.stopped or d for row, d in zip(texts, done, strict=True)):
            break
    gens = run.generations()
    for g, row in zip(gens, texts, strict=True):
        _finish(g, row)
    return gens


def stream(model: nn.Module, tokenizer, prompt: str | list[int], config: GenerationConfig | None = None,
           **overrides) -> Iterator[StreamEvent]:
    """Generate a continuation of one prompt, one event per token (greedy or sampling).

    Event text never holds half a UTF-8 character nor text that could be the start of a stop string; the
    concatenated text equals generate()'s. The last event has token_id None and the finish_reason.
    """
    _check_decoder(model)
    helpers = [name for name in ("draft_model", "amateur_model") if name in overrides]
    if helpers:  # else "GenerationConfig has no field 'draft_model'", as if it were misspelt
        raise ValueError(f"stream() decodes one sequence greedily or by sampling: it takes no {helpers[0]} "
                         "(speculative decoding and contrastive decoding go through generate())")
    config = _config(config, overrides)
    if config.num_beams > 1 or config.penalty_alpha > 0 or config.num_return_sequences > 1:
        raise ValueError("stream() decodes one sequence greedily or by sampling: num_beams, penalty_alpha and "
                         "num_return_sequences must be left at their defaults")
    if tokenizer is None:
        raise ValueError("stream() needs a tokenizer to turn tokens into text")
    if not isinstance(prompt, (str, list)):
        raise ValueError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
    if isinstance(prompt, list) and any(isinstance(p, str | list) for p in prompt):  # else "ids outside the vocab"
        raise ValueError("stream() takes one prompt (a string or a list of token ids); use generate() for several")
    (input_ids,) = _encode_prompts(tokenizer, [prompt])
    with eval_mode(model):  # restored when the stream ends or is closed
        row = _RowText(tokenizer, config.stop, input_ids, search_after=stop_search_after(config))
        held = _HeldEvents(row)
        reason, pending = "length", ""
        for run in _decode_steps(model, [input_ids], config, eos_ids=_eos_ids(tokenizer, model)):
            if bool(run.stopped[0]):
                reason = "stop"
                break
            i = run.n - 1
            tok = int(run.tokens[0, run.width + i])
            text = row.push(tok)
            if row.stopped:  # the stop string's tokens are not output; the text before it goes in the last event
                events, pending = held.stopped(text)
                yield from events
                reason = "stop"
                break
            logprob = None
            if run.chosen is not None:
                top = list(zip(run.top_ids[0, i].tolist(), run.top_lp[0, i].tolist(), strict=True))
                logprob = TokenLogprob(token_id=tok, logprob=float(run.chosen[0, i]), top=top)
            yield from held.push(StreamEvent(text=text, token_id=tok, logprob=logprob))
        events, text, reason = held.finish(reason, pending)
        yield from events
        yield StreamEvent(text=text, finish_reason=reason)
