"""Two decoding methods named "contrastive":

- contrastive search (Su et al. 2022, "A Contrastive Framework for Neural Text Generation"): among the model's
  top-k candidates pick the one that is likely yet whose hidden state is least similar to the context's;
- contrastive decoding (Li et al. 2022, "Contrastive Decoding: Open-ended Text Generation as Optimization"):
  among the expert's plausible tokens pick the one the expert prefers most over a weaker amateur model.

Both run left-padded batches over static KV caches; rows are independent, so a batch gives the same tokens as
one prompt at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from neurallayers.generation.config import Generation, GenerationConfig
from neurallayers.generation.generate import _choose, _row_seed
from neurallayers.generation.inputs import _check_decoder
from neurallayers.generation.processors import apply_processors, check_some_token_left, divide_by_temperature
from neurallayers.generation.search import (
    LogprobTrail,
    build_processors,
    check_method,
    check_request,
    copies,
    full_mask,
    generations,
    keeps_modes,
    left_pad,
    positions,
    stop_ids,
)


def _finish(tokens: torch.Tensor, stops: list[int], lens: list[int], trail: LogprobTrail,
            cut_at: list[int | None]) -> list[list[Generation]]:
    """tokens (B, N) generated per row -> one Generation per prompt, cut after the first stop token or where the
    row's text met a stop string (cut_at: the tokens it had then)."""
    out = []
    for r, (row, n) in enumerate(zip(tokens.tolist(), lens, strict=True)):
        cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        cut = cut if cut_at[r] is None else min(cut, cut_at[r])
        lps = None if trail.rows is None else [trail.row(r)]
        out.append(generations([row[:cut]], stops=stops, prompt_lens=[n], logprobs=lps))
    return out


def _live(tokens: list[torch.Tensor], stop_t: torch.Tensor, cut_at: list[int | None]) -> torch.Tensor:
    """(B,) rows that have neither produced a stop token nor met a stop string yet (the others keep stepping until
    every row is done)."""
    live = torch.tensor([c is None for c in cut_at], dtype=torch.bool, device=stop_t.device)
    if tokens and len(stop_t):
        live &= ~torch.isin(torch.stack(tokens, 1), stop_t).any(1)
    return live


def _watch(watches: list[Callable[[int], bool]] | None, tokens: list[torch.Tensor], stop_t: torch.Tensor,
           cut_at: list[int | None]) -> bool:
    """Give each live row's newest token to its stop-string watch (None: no stop strings), marking the rows whose
    text has met one in cut_at; whether every row is now done."""
    live = _live(tokens, stop_t, cut_at)
    if watches is not None:
        newest = tokens[-1].tolist()
        for r in live.nonzero()[:, 0].tolist():
            if watches[r](newest[r]):
                cut_at[r], live[r] = len(tokens), False
    return not bool(live.any())


def _watches(stop_watch: Callable[[int], Callable[[int], bool]] | None, rows: int,
             rows_per_prompt: int = 1) -> list[Callable[[int], bool]] | None:
    """One stop-string watch per row (row r follows prompt r // rows_per_prompt); None without stop strings."""
    return None if stop_watch is None else [stop_watch(r // rows_per_prompt) for r in range(rows)]


@keeps_modes
@torch.inference_mode()
def contrastive_search(model: nn.Module, input_ids: list[list[int]], config: GenerationConfig, *,
                       eos_ids: list[int],
                       stop_watch: Callable[[int], Callable[[int], bool]] | None = None) -> list[list[Generation]]:
    """Contrastive search: at each step take the model's top-k candidates v (k = config.top_k) and choose

        argmax_v (1 - alpha) * p(v | context) - alpha * max_j cos(h_v, h_j)

    where alpha = config.penalty_alpha, h_v is the last hidden state (after the final norm) when v is fed and
    h_j are those of every context token (prompt included, padding excluded). p comes from the processed logits
    (penalties, n-gram ban, bias, min tokens; no sampling warpers: the method is deterministic). All k candidates
    run as k cache rows per prompt in one forward; the rows are then reordered to the chosen candidate's.

    Args:
        model: a DecoderLM.
        input_ids: B prompts of token ids.
        config: top_k (> 1), penalty_alpha in [0, 1] (0 is greedy), max_new_tokens, processors, logprobs (the
            model's own log-probabilities of the chosen tokens, before processors, as generate() reports them),
            num_return_sequences.
        eos_ids: token ids that end a sequence (unless config.ignore_eos).
        stop_watch: stop strings (generate() passes them; None: none): stop_watch(i) gives a watch over prompt i's
            sequence, which takes each generated token and says whether its text has met a stop string; the
            sequence ends there (its tokens up to that one kept; the caller cuts the text).

    Returns:
        Per prompt config.num_return_sequences Generations (token_ids without the prompt and a final stop token):
        copies of its one sequence, the method being deterministic, as the plain greedy path gives them.
    """
    if isinstance(config, GenerationConfig) and config.top_k < 2:  # anything else: check_request's one line
        raise ValueError(f"GenerationConfig.top_k={config.top_k}: contrastive search needs top_k > 1 candidates "
                         "per step (penalty_alpha weighs them)")
    check_request(model, input_ids, config, eos_ids, extra_positions=1)  # the last token's candidates are fed
    check_method(config, "contrastive_search", own="penalty_alpha")
    if config.num_return_sequences > 1:
        one = contrastive_search(model, input_ids, config.replace(num_return_sequences=1), eos_ids=eos_ids,
                                 stop_watch=stop_watch)
        return [copies(gens, config.num_return_sequences) for gens in one]
    device = model.wte.weight.device
    k = min(config.top_k, model.config.vocab_size)
    alpha = config.penalty_alpha
    stops = stop_ids(config, eos_ids)
    stop_t = torch.tensor(stops, dtype=torch.long, device=device)
    batch = left_pad(input_ids, device)
    b, plen = batch.ids.shape
    total = plen + config.max_new_tokens
    pads = batch.pads.tolist()
    procs = build_processors(config, eos_ids, prompt_width=plen, pad_lens=pads, sampling=False)

    cache = model.new_cache(b * k, total)
    mask = full_mask(batch, total, k)
    out = model(batch.ids, cache=cache.rows(0, b), attention_mask=batch.mask, position_ids=positions(batch, 0, plen),
                output_hidden=True)
    cache.reorder(torch.arange(b, device=device).repeat_interleave(k))  # k candidate rows per prompt
    hidden = out.hidden.new_zeros(b, total, out.hidden.shape[-1])  # (B, slots, D): every token's last hidden
    hidden[:, :plen] = out.hidden
    real = torch.ones(b, total, dtype=torch.bool, device=device)  # context slots that count (not padding)
    if batch.mask is not None:
        real[:, :plen] = batch.mask.bool()
    logits = out.logits[:, -1].float()  # (B, V)
    ids = batch.ids
    rows = torch.arange(b, device=device)
    new: list[torch.Tensor] = []
    trail = LogprobTrail(b, config.logprobs)
    watches, cut_at = _watches(stop_watch, b), [None] * b
    for cur in range(plen, total):
        scores = apply_processors(procs, ids, logits)
        check_some_token_left(config, scores, cur - plen, live=_live(new, stop_t, cut_at))
        top_p, top_ids = scores.softmax(-1).topk(k, dim=-1)  # (B, k)
        step = model(top_ids.reshape(b * k, 1), cache=cache, input_pos=cur, position_ids=positions(batch, cur, 1, k),
                     attention_mask=None if mask is None else mask[:, :cur + 1], output_hidden=True)
        cand = F.normalize(step.hidden[:, -1].view(b, k, -1).float(), dim=-1)  # (B, k, D)
        context = F.normalize(hidden[:, :cur].float(), dim=-1)  # (B, cur, D)
        cos = (cand @ context.transpose(1, 2)).masked_fill(~real[:, None, :cur], -math.inf)  # (B, k, cur)
        score = (1 - alpha) * top_p - alpha * cos.max(-1).values
        # a banned candidate (fewer allowed tokens than top_k) has p = 0, yet its low similarity could still win
        score = score.masked_fill(torch.isneginf(scores.gather(1, top_ids)), -math.inf)
        best = score.argmax(-1)  # (B,)
        tok = top_ids[rows, best]
        trail.add(logits, tok)
        hidden[:, cur] = step.hidden[:, -1].view(b, k, -1)[rows, best]
        logits = step.logits[:, -1].view(b, k, -1)[rows, best].float()
        ids = torch.cat((ids, tok[:, None]), dim=1)
        new.append(tok)
        if _watch(watches, new, stop_t, cut_at) or cur + 1 == total:
            break
        cache.reorder((rows * k + best).repeat_interleave(k))
    return _finish(torch.stack(new, 1), stops, batch.lens, trail, cut_at)


@keeps_modes
@torch.inference_mode()
def contrastive_decoding(expert: nn.Module, amateur: nn.Module, input_ids: list[list[int]], config: GenerationConfig,
                         *, eos_ids: list[int],
                         stop_watch: Callable[[int], Callable[[int], bool]] | None = None) -> list[list[Generation]]:
    """Contrastive decoding: keep the plausible tokens V = {v : p_e(v) >= contrastive_alpha * max_w p_e(w)} and
    choose among them by the score log p_e(v) - log p_a(v), greedily at temperature 0, otherwise by sampling
    softmax(score / temperature) over V (seeded by config.seed).

    The expert's logits go through the score processors (penalties, n-gram ban, bias, min tokens) before the
    plausibility cut, so a banned token is never plausible; the amateur's are used as they are. top_k, top_p and
    min_p are not used.

    Args:
        expert: the strong DecoderLM.
        amateur: a weaker DecoderLM with the same vocabulary.
        input_ids: B prompts of token ids.
        config: contrastive_alpha, temperature, max_new_tokens, processors, seed, logprobs (the expert's own
            log-probabilities of the chosen tokens, before processors).
        eos_ids: token ids that end a sequence (unless config.ignore_eos).
        stop_watch: stop strings, as contrastive_search takes them.

    Returns:
        Per prompt config.num_return_sequences Generations. Each row samples from its own generator, seeded as the
        plain path seeds it (sequence k of a prompt with (seed, k)), so a prompt gets the same tokens alone or
        batched; greedy gives n copies of its one sequence.
    """
    _check_decoder(expert)  # both before their vocabularies are compared: else an AttributeError on a config
    _check_decoder(amateur, "amateur")
    if amateur.config.vocab_size != expert.config.vocab_size:
        raise ValueError(f"amateur vocab_size={amateur.config.vocab_size} differs from the expert's "
                         f"vocab_size={expert.config.vocab_size}; both must share one tokenizer")
    check_request(expert, input_ids, config, eos_ids)
    check_request(amateur, input_ids, config, eos_ids)
    check_method(config, "contrastive_decoding")
    n_ret = config.num_return_sequences
    if n_ret > 1:
        if config.greedy:
            one = contrastive_decoding(expert, amateur, input_ids, config.replace(num_return_sequences=1),
                                       eos_ids=eos_ids, stop_watch=stop_watch)
            return [copies(gens, n_ret) for gens in one]
        input_ids = [ids for ids in input_ids for _ in range(n_ret)]  # prompt-major rows
    device = expert.wte.weight.device
    gens = None
    if not config.greedy:
        seeds = ([config.seed] * len(input_ids) if config.seed is not None
                 else torch.randint(0, 2**62, (len(input_ids),)).tolist())
        gens = [torch.Generator(device=device).manual_seed(_row_seed(seeds[r - r % n_ret], r % n_ret))
                for r in range(len(input_ids))]
    stops = stop_ids(config, eos_ids)
    stop_t = torch.tensor(stops, dtype=torch.long, device=device)
    batch = left_pad(input_ids, device)
    b, plen = batch.ids.shape
    total = plen + config.max_new_tokens
    pads = batch.pads.tolist()
    procs = build_processors(config, eos_ids, prompt_width=plen, pad_lens=pads, sampling=False)
    log_cut = math.log(config.contrastive_alpha)
    models = (expert, amateur)
    caches = [m.new_cache(b, total) for m in models]
    mask = full_mask(batch, total)
    logits = [m(batch.ids, cache=c, attention_mask=batch.mask, position_ids=positions(batch, 0, plen),
                logits_to_keep=1).logits[:, -1].float() for m, c in zip(models, caches, strict=True)]
    ids = batch.ids
    new: list[torch.Tensor] = []
    trail = LogprobTrail(b, config.logprobs)
    watches, cut_at = _watches(stop_watch, b, n_ret), [None] * b  # rows are prompt-major, n_ret a prompt
    for cur in range(plen, total):
        scores = apply_processors(procs, ids, logits[0])
        check_some_token_left(config, scores, cur - plen, live=_live(new, stop_t, cut_at))
        lp_e = F.log_softmax(scores, dim=-1)
        lp_a = F.log_softmax(logits[1], dim=-1)
        plausible = lp_e >= lp_e.max(-1, keepdim=True).values + log_cut
        score = (lp_e - lp_a).masked_fill(~plausible, -math.inf)  # (B, V)
        tok = _choose(score if gens is None else divide_by_temperature(score, config.temperature), gens)
        trail.add(logits[0], tok)
        ids = torch.cat((ids, tok[:, None]), dim=1)
        new.append(tok)
        if _watch(watches, new, stop_t, cut_at) or cur + 1 == total:
            break
        step_mask = None if mask is None else mask[:, :cur + 1]
        logits = [m(tok[:, None], cache=c, input_pos=cur, position_ids=positions(batch, cur, 1),
                    attention_mask=step_mask).logits[:, -1].float() for m, c in zip(models, caches, strict=True)]
    rows = _finish(torch.stack(new, 1), stops, batch.lens, trail, cut_at)
    return [[g for one in rows[i:i + n_ret] for g in one] for i in range(0, len(rows), n_ret)]
