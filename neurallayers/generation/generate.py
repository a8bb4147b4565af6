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

The checks of the inputs and the padded batch live in inputs.py, stop strings in stop_strings.py, and a stream's
held-back events in stream_events.py.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from neurallayers.data.tokenizers import continuation_text
from neurallayers.generation.config import Generation, GenerationConfig, StreamEvent, TokenLogprob, valid_seed
from neurallayers.generation.fast import decode_step_for
from neurallayers.generation.inputs import (
    _check_decoder,
    _check_ids,
    _check_length,
    _config,
    _encode_prompts,
    _eos_ids,
    _room,
    array_prompt_hint,
    full_mask,
    left_pad,
    positions,
)
from neurallayers.generation.processors import apply_processors, build_processors, check_some_token_left
from neurallayers.generation.search import stop_ids
from neurallayers.generation.stop_strings import (
    STOP_MARGIN,
    _apply_stop_strings,
    _finish,
    _RowText,
    _stop_check,
    _stop_watch,
    stop_search_after,
)
from neurallayers.generation.stream_events import _HeldEvents
from neurallayers.nn.modes import eval_mode

# the public names, with two that moved to stop_strings.py and stay importable from here
__all__ = ["STOP_MARGIN", "SYNC_EVERY", "forward_step", "generate", "generate_ids", "stop_search_after", "stream"]

SYNC_EVERY = 8  # without stop strings, look at the host-side "all rows done?" flag only every few steps


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
        """One Generation per row, token ids without padding and without the stop token (its stopped_by)."""
        tokens = self.tokens[:, self.width:self.width + self.n].tolist()
        lengths, stopped = self.lengths.tolist(), self.stopped.tolist()
        lps = _logprob_lists(self, lengths)
        return [Generation(token_ids=tokens[r][:lengths[r]], finish_reason="stop" if stopped[r] else "length",
                           prompt_tokens=self.prompt_lens[r], logprobs=None if lps is None else lps[r],
                           generated_tokens=lengths[r] + stopped[r],
                           stopped_by=tokens[r][lengths[r]] if stopped[r] else None)
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

    # (R, width + budget): the left-padded prompts, then the tokens generated; mask over every cache column and
    # base_pos (R, 1), the position of the first generated token: both None when no row is padded
    batch = left_pad(input_ids, device)
    tokens = torch.zeros(rows, width + budget, dtype=torch.long, device=device)
    tokens[:, :width] = batch.ids.repeat_interleave(n_ret, dim=0)
    mask, base_pos = full_mask(batch, width + budget, n_ret), positions(batch, width, 1, n_ret)
    pads = batch.pads.repeat_interleave(n_ret).tolist()
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
    procs = build_processors(config, eos_ids=eos_ids, prompt_lens=width, pad_lens=pads if mask is not None else None)
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
    out = model(batch.ids, cache=cache.rows(0, b), attention_mask=batch.mask, position_ids=positions(batch, 0, width),
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


def _search(model: nn.Module, input_ids: list[list[int]], config: GenerationConfig, *, eos_ids: list[int],
            draft_model: nn.Module | None, amateur_model: nn.Module | None,
            holds_stop: Callable[[int, list[int]], bool] | None = None,
            stop_watch: Callable[[int], Callable[[int], bool]] | None = None) -> list[list[Generation]] | None:
    """Dispatch to the search methods (None = the plain greedy/sampling path). For stop strings, holds_stop goes to
    beam search, where a hypothesis that reaches a stop string must compete as a finished one; the other methods
    follow one sequence a row and get stop_watch, which ends a row at a stop string (the caller cuts its text)."""
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
        elif stop_watch is not None:
            kw["stop_watch"] = functools.partial(lambda rows, b: stop_watch(rows[b]), idx)
        # every search returns num_return_sequences Generations a prompt
        for i, gens in zip(idx, fn(model, *extra, [input_ids[i] for i in idx], cfg, eos_ids=eos_ids, **kw),
                           strict=True):
            out[i] = gens
    return out


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
    after = stop_search_after(config)
    searched = _search(model, input_ids, config, eos_ids=eos_ids, draft_model=draft_model,
                       amateur_model=amateur_model,
                       holds_stop=_stop_check(tokenizer, stops, input_ids, search_after=after),
                       stop_watch=_stop_watch(tokenizer, stops, input_ids, search_after=after))
    if searched is not None:
        return [_apply_stop_strings(g, tokenizer, stops, ids, search_after=after)
                if tokenizer is not None else g
                for per_prompt, ids in zip(searched, input_ids, strict=True) for g in per_prompt]
    if not stops:
        gens = generate_ids(model, input_ids, config, eos_ids=eos_ids, seeds=seeds)
        if tokenizer is not None:  # prompt-major, num_return_sequences a prompt
            for i, g in enumerate(gens):
                g.text = continuation_text(tokenizer, input_ids[i // config.num_return_sequences], g.token_ids,
                                           skip_padded_ids=True)  # a padded vocabulary's ids: no text
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

    The arguments are checked here, when stream() is called (a bad setting, an empty prompt or one longer than the
    context raises at once, not at the first next()); the model decodes as the events are taken.
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
    if hasattr(prompt, "tolist") and not isinstance(prompt, list):
        raise ValueError(array_prompt_hint(prompt, "prompt"))
    if not isinstance(prompt, (str, list)):
        raise ValueError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
    if isinstance(prompt, list) and any(isinstance(p, str | list) for p in prompt):  # else "ids outside the vocab"
        raise ValueError("stream() takes one prompt (a string or a list of token ids); use generate() for several")
    (input_ids,) = _encode_prompts(tokenizer, [prompt])
    eos_ids = _eos_ids(tokenizer, model)
    _check_ids(model, [input_ids], eos_ids)  # what the decode loop checks again, before its first step
    config.check_vocab(model.config.vocab_size)
    return _stream_events(model, tokenizer, input_ids, config, eos_ids)


def _stream_events(model: nn.Module, tokenizer, input_ids: list[int], config: GenerationConfig,
                   eos_ids: list[int]) -> Iterator[StreamEvent]:
    """stream()'s events, for arguments it has checked."""
    with eval_mode(model):  # restored when the stream ends or is closed
        row = _RowText(tokenizer, config.stop, input_ids, search_after=stop_search_after(config))
        held = _HeldEvents(row)
        reason, pending, stopped_by = "length", "", None
        for run in _decode_steps(model, [input_ids], config, eos_ids=eos_ids):
            if bool(run.stopped[0]):
                reason, stopped_by = "stop", int(run.tokens[0, run.width + run.n - 1])
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
        if row.stopped:  # a stop string, found as the tokens came or in the decoder's flushed tail, as generate() cuts
            stopped_by = row.stops_at_cut[0]
        yield from events
        yield StreamEvent(text=text, finish_reason=reason, stopped_by=stopped_by)
