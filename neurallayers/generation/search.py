"""Search-based decoding: beam search (Hugging Face semantics, token for token), plus the shared plumbing of the
other search methods, which live in their own files and are re-exported here so generate() finds every method in
one module: contrastive search and contrastive decoding (contrastive.py), speculative decoding (speculative.py).

Prompts of different lengths are left-padded into one batch over a static KV cache, as the plain loop pads them
(inputs.left_pad); every row sees only its own tokens (attention mask) at its own positions (position ids start at 0
on the first real token). Every search runs its models in eval mode and gives each module its own mode back after
(keeps_modes), as generate() does.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from neurallayers.generation import processors
from neurallayers.generation.config import Generation, GenerationConfig, TokenLogprob
from neurallayers.generation.inputs import Batch, _check_decoder, _check_ids, full_mask, left_pad, positions
from neurallayers.generation.processors import apply_processors, check_some_token_left
from neurallayers.nn.modes import eval_mode

NEG = -1.0e9  # Hugging Face's "impossible" score; kept identical so ties break the same way


# ----- shared plumbing -----
def check_request(model: nn.Module, input_ids: list[list[int]], config: GenerationConfig, eos_ids: list[int], *,
                  extra_positions: int = 0) -> None:
    """Reject malformed prompts, eos ids or a request longer than the model's context, naming what is wrong. The
    prompts and eos ids go through generate's own check (inputs._check_ids), so both say the same of a fault.

    A request needs prompt + max_new_tokens - 1 positions (the last token is never fed back), plus
    `extra_positions` for a method that does feed it (contrastive search scores each candidate's hidden state)."""
    _check_decoder(model)  # a path or a tokenizer passed as the model: else an AttributeError on its config
    if not isinstance(config, GenerationConfig):
        raise ValueError(f"config must be a GenerationConfig, got {type(config).__name__}")
    _check_ids(model, input_ids, eos_ids, name="input_ids[{}]", each_fits=False)
    config.check_vocab(model.config.vocab_size)
    lens = [len(ids) for ids in input_ids]
    i = lens.index(max(lens))  # the prompt to shorten
    longest = lens[i] + config.max_new_tokens - 1 + extra_positions
    if longest > model.config.block_size:
        raise ValueError(f"prompt {i} ({lens[i]} tokens) + max_new_tokens ({config.max_new_tokens}) needs "
                         f"{longest} positions; the model's context block_size is {model.config.block_size}")


# the settings that choose a search method: generate() refuses two at once, and each search refuses the others'
_CHOOSERS = {"num_beams": ("beam search", lambda c: c.num_beams > 1, 1),
             "penalty_alpha": ("contrastive search", lambda c: c.penalty_alpha > 0, 0)}


def check_method(config: GenerationConfig, method: str, *, own: str | None = None) -> None:
    """Refuse a setting that chooses another decoding method than `method` (whose own choosing setting is `own`):
    called directly, a search ignored it (speculative_decode with num_beams=4 sampled one sequence)."""
    for name, (what, chosen, off) in _CHOOSERS.items():
        if name != own and chosen(config):
            raise ValueError(f"{method} got GenerationConfig.{name}={getattr(config, name)!r}, which chooses {what}: "
                             f"choose one decoding method (leave {name} at {off})")


def keeps_modes(search: Callable) -> Callable:
    """A search that runs its models (its nn.Module arguments) in eval mode and gives every module its own mode back
    after (nn.modes.eval_mode), as generate() does: called directly in the middle of training, a search put them in
    eval mode for good, and dropout was off for every training step after it."""

    @functools.wraps(search)
    def run(*args, **kwargs):
        with eval_mode(*(a for a in (*args, *kwargs.values()) if isinstance(a, nn.Module))):
            return search(*args, **kwargs)

    return run


def copies(gens: list[Generation], n: int) -> list[Generation]:
    """n independent copies of a prompt's one sequence (a deterministic method's num_return_sequences)."""
    return [copy.deepcopy(g) for _ in range(n) for g in gens]


def stop_ids(config: GenerationConfig, eos_ids: list[int]) -> list[int]:
    """Token ids that end a sequence: eos (unless ignore_eos) and config.stop_token_ids."""
    ids = ([] if config.ignore_eos else list(eos_ids)) + list(config.stop_token_ids)
    return list(dict.fromkeys(ids))


def build_processors(config: GenerationConfig, eos_ids: list[int], *, prompt_width: int,
                     pad_lens: list[int] | None = None, sampling: bool) -> list:
    """The logits processors for `config` over rows whose first `prompt_width` columns are the (left-padded)
    prompt, pad_lens[r] of them padding. Deterministic searches (beam, contrastive search) get only the rules
    that change scores (penalties, n-gram ban, bias, min tokens), not the sampling warpers (temperature, top-k,
    top-p, min-p), as Hugging Face does with do_sample=False."""
    if not sampling:
        config = config.replace(temperature=0.0)  # greedy configs get no warpers
    pads = pad_lens if pad_lens and any(pad_lens) else None
    return processors.build_processors(config, eos_ids=eos_ids, prompt_lens=prompt_width, pad_lens=pads)


def generations(tokens: list[list[int]], *, stops: list[int], prompt_lens: list[int],
                scores: list[float | None] | None = None,
                logprobs: list[list[TokenLogprob]] | None = None) -> list[Generation]:
    """Generation records for one prompt's sequences: a trailing stop token is removed (finish_reason "stop",
    stopped_by that token); logprobs (one list per sequence, at least as long as its tokens) are cut to the kept
    tokens."""
    out = []
    for i, toks in enumerate(tokens):
        reason, generated, by = "length", len(toks), None
        if toks and toks[-1] in stops:
            toks, reason, by = toks[:-1], "stop", toks[-1]
        out.append(Generation(token_ids=toks, finish_reason=reason, prompt_tokens=prompt_lens[i],
                              score=None if scores is None else scores[i],
                              logprobs=None if logprobs is None else logprobs[i][:len(toks)],
                              generated_tokens=generated, stopped_by=by))
    return out


class LogprobTrail:
    """Per-row TokenLogprob lists, one step at a time, under the model's own distribution (log-softmax of its
    logits, before any processor), as generate() reports them; does nothing when `top_n` is None (logprobs off).

    Args:
        rows: number of sequences.
        top_n: config.logprobs: None = off, 0 = the chosen token only, n = also the n most likely tokens.
    """

    def __init__(self, rows: int, top_n: int | None) -> None:
        self.top_n = top_n
        self.rows: list[list[TokenLogprob]] | None = None if top_n is None else [[] for _ in range(rows)]

    def add(self, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """One step of every row: logits (R, V) chose tokens (R,); appends one TokenLogprob to each row."""
        if self.rows is not None:
            for r, rec in enumerate(self._records(logits, tokens)):
                self.rows[r].append(rec)

    def extend(self, row: int, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """Several steps of one row: logits (N, V) chose tokens (N,), in order."""
        if self.rows is not None:
            self.rows[row].extend(self._records(logits, tokens))

    def _records(self, logits: torch.Tensor, tokens: torch.Tensor) -> list[TokenLogprob]:
        logp = F.log_softmax(logits.float(), dim=-1)
        chosen = logp.gather(1, tokens[:, None])[:, 0].tolist()
        top_lp, top_ids = torch.topk(logp, self.top_n, dim=-1)
        return [TokenLogprob(token_id=tok, logprob=lp, top=list(zip(ids, lps, strict=True)))
                for tok, lp, ids, lps in zip(tokens.tolist(), chosen, top_ids.tolist(), top_lp.tolist(), strict=True)]

    def row(self, r: int) -> list[TokenLogprob] | None:
        return None if self.rows is None else self.rows[r]


def _beam_gather(tensors: tuple[torch.Tensor, ...], index: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rows `index` (B, K) along dim 1 of each (B, N, ...) tensor."""
    return tuple(torch.take_along_dim(t, index.view(*index.shape, *([1] * (t.ndim - 2))), dim=1) for t in tensors)


# ----- beam search -----
@keeps_modes
@torch.inference_mode()
def beam_search(model: nn.Module, input_ids: list[list[int]], config: GenerationConfig, *,
                eos_ids: list[int],
                holds_stop: Callable[[int, list[int]], bool] | None = None) -> list[list[Generation]]:
    """Beam search with Hugging Face semantics (`generate(num_beams=n, do_sample=False)`), same token ids.

    Each step keeps, per prompt, the `keep = max(2, 1 + n_stop) * num_beams` best continuations of all beams by
    summed log-probability (after the score processors: penalties, n-gram ban, bias, min tokens); the best of
    them that end in a stop token become finished hypotheses scored `sum logprobs / generated_len **
    length_penalty` (generated_len counts the stop token), the best `num_beams` others keep running. Stops when
    no running beam can beat the worst finished one, as soon as `num_beams` hypotheses are finished
    (early_stopping=True), or at max_new_tokens. A running beam's best possible score is judged at the current
    length (early_stopping=False) or, with early_stopping="never" and length_penalty > 0, at max_new_tokens
    (Hugging Face's canonical, slower, search). Sampling knobs (temperature, top_k, top_p, min_p) are not used
    here. Stop strings finish a hypothesis as a stop token does (Hugging Face's `stop_strings`), through
    `holds_stop`; the caller cuts the text before them.

    With config.logprobs set, each hypothesis carries its tokens' log-probabilities under the model's own
    distribution (before the processors, as generate() reports them) and the top alternatives there. Without
    processors, a hypothesis that ran to max_new_tokens has score == sum(logprobs) / generated_len **
    length_penalty (a stopped one's score also counts its stop token, which is not returned).

    Args:
        model: a DecoderLM.
        input_ids: B prompts of token ids, any lengths (left-padded internally).
        config: num_beams, length_penalty, early_stopping, num_return_sequences, max_new_tokens, penalties,
            logprobs.
        eos_ids: token ids that finish a hypothesis (ignored when config.ignore_eos).
        holds_stop: given a prompt's index and a candidate's generated tokens, whether their text holds a stop
            string (None: no stop strings); such a candidate finishes, its tokens up to the stop string's last one
            kept.

    Returns:
        Per prompt, config.num_return_sequences Generations, best first, with `score` the length-penalised beam
        score; token_ids exclude the prompt and a final stop token; text is left empty.

    Raises:
        ValueError: bad prompts or settings, or an n-gram ban that leaves no beam of a prompt a token while it has
            fewer than num_return_sequences finished hypotheses (as the other methods refuse a step with no token).
    """
    check_request(model, input_ids, config, eos_ids)
    check_method(config, "beam_search", own="num_beams")
    device = model.wte.weight.device
    nb, n_ret, lp_pen = config.num_beams, config.num_return_sequences, config.length_penalty
    stops = stop_ids(config, eos_ids)
    batch = left_pad(input_ids, device)
    b, plen = batch.ids.shape
    vocab = model.config.vocab_size
    max_len = plen + config.max_new_tokens
    keep = min(max(2, 1 + len(stops)) * nb, nb * vocab)
    top_mask = torch.arange(keep, device=device) < nb
    stop_t = torch.tensor(stops, dtype=torch.long, device=device)
    row_pads = batch.pads.repeat_interleave(nb).tolist()
    procs = build_processors(config, eos_ids, prompt_width=plen, pad_lens=row_pads, sampling=False)
    # "never" with a positive length penalty: a running beam may still grow to max_new_tokens, so judge it there
    optimistic = config.early_stopping == "never" and lp_pen > 0

    cache = model.new_cache(b * nb, max_len)
    mask = full_mask(batch, max_len, nb)
    out = model(batch.ids, cache=cache.rows(0, b), attention_mask=batch.mask, position_ids=positions(batch, 0, plen),
                logits_to_keep=1)
    cache.reorder(torch.arange(b, device=device).repeat_interleave(nb))  # every beam starts from its prompt
    logits = out.logits[:, -1].float().repeat_interleave(nb, dim=0)  # (B*nb, V)

    running = batch.ids.new_zeros(b, nb, max_len)
    running[:, :, :plen] = batch.ids[:, None]
    finished = running.clone()
    run_scores = torch.zeros(b, nb, device=device)
    run_scores[:, 1:] = NEG  # only beam 0 expands at the first step, so beams do not start as copies
    fin_scores = torch.full((b, nb), NEG, device=device)
    fin_lens = torch.zeros(b, nb, dtype=torch.long, device=device)
    is_fin = torch.zeros(b, nb, dtype=torch.bool, device=device)
    improvable = torch.ones(b, 1, dtype=torch.bool, device=device)
    batch_offset = torch.arange(b, device=device)[:, None] * nb
    # per hypothesis and generated token: its log-probability (B, nb, N), the top-n values and ids (B, nb, N, n)
    hist = fin_hist = None
    if config.logprobs is not None:
        n_new, n_top = config.max_new_tokens, config.logprobs
        hist = (torch.zeros(b, nb, n_new, device=device), torch.zeros(b, nb, n_new, n_top, device=device),
                torch.zeros(b, nb, n_new, n_top, dtype=torch.long, device=device))
        fin_hist = tuple(t.clone() for t in hist)
    cur = plen
    while True:
        model_lp = F.log_softmax(logits, dim=-1)
        logprobs = apply_processors(procs, running.view(b * nb, max_len)[:, :cur], model_lp)
        acc = (logprobs.view(b, nb, vocab) + run_scores[:, :, None]).view(b, nb * vocab)
        # A prompt still searching whose beams have no token left (an n-gram ban on a small vocabulary), short of
        # num_return_sequences finished hypotheses, would return slots no step scored (score NEG, a beam cut
        # short): the error the other methods give instead.
        stuck = torch.isneginf(acc).all(-1) & improvable[:, 0] & (is_fin.sum(-1) < n_ret)
        if bool(stuck.any()):
            check_some_token_left(config, logprobs, cur - plen, live=stuck.repeat_interleave(nb))
        top_scores, top_idx = torch.topk(acc, keep)  # (B, keep)
        src_beam, tok = top_idx // vocab, top_idx % vocab
        top_seqs = torch.take_along_dim(running, src_beam[:, :, None], dim=1)
        top_seqs[:, :, cur] = tok
        hits = torch.isin(tok, stop_t) | (cur + 1 >= max_len)  # (B, keep)
        if holds_stop is not None:  # running beams hold no stop string: only the new token can complete one
            hits |= torch.tensor([[holds_stop(b, ids) for ids in row]
                                  for b, row in enumerate(top_seqs[:, :, plen:cur + 1].tolist())],
                                 device=device)
        top_hist = None
        if hist is not None:
            top_hist = _beam_gather(hist, src_beam)  # (B, keep, N, ...): each candidate's parent history
            top_hist[0][:, :, cur - plen] = model_lp.view(b, nb * vocab).gather(1, top_idx)
            alt_lp, alt_ids = torch.topk(model_lp, n_top, dim=-1)  # (B*nb, n)
            alt = _beam_gather((alt_lp.view(b, nb, n_top), alt_ids.view(b, nb, n_top)), src_beam)
            top_hist[1][:, :, cur - plen], top_hist[2][:, :, cur - plen] = alt

        # the best `nb` continuations that did not stop keep running
        live = top_scores + hits.float() * NEG
        nxt = torch.topk(live, nb)[1]
        running = torch.take_along_dim(top_seqs, nxt[:, :, None], dim=1)
        run_scores = torch.take_along_dim(live, nxt, dim=1)
        parents = torch.take_along_dim(src_beam, nxt, dim=1)

        # stopped continuations among the top `nb` join the finished hypotheses if they beat them
        just = hits & top_mask[None, :]
        cand = top_scores / ((cur + 1 - plen) ** lp_pen)
        cand = cand + (is_fin.all(-1, keepdim=True) & (config.early_stopping is True)).float() * NEG
        cand = cand + (~improvable).float() * NEG
        cand = cand + (~just).float() * NEG
        merged = torch.cat((fin_scores, cand), dim=1)
        best = torch.topk(merged, nb)[1]
        finished = torch.take_along_dim(torch.cat((finished, top_seqs), dim=1), best[:, :, None], dim=1)
        fin_scores = torch.take_along_dim(merged, best, dim=1)
        new_lens = torch.full_like(cand, cur + 1 - plen, dtype=torch.long)
        fin_lens = torch.take_along_dim(torch.cat((fin_lens, new_lens), dim=1), best, dim=1)
        is_fin = torch.take_along_dim(torch.cat((is_fin, just), dim=1), best, dim=1)
        if hist is not None:
            hist = _beam_gather(top_hist, nxt)
            fin_hist = _beam_gather(tuple(torch.cat(pair, dim=1) for pair in zip(fin_hist, top_hist, strict=True)),
                                    best)

        cur += 1
        best_running = run_scores[:, :1] / (((max_len if optimistic else cur) - plen) ** lp_pen)
        worst_fin = torch.where(is_fin, fin_scores.min(dim=1, keepdim=True)[0], NEG)
        improvable = improvable & (best_running > worst_fin).any(dim=-1, keepdim=True)
        all_full = bool(is_fin.all()) and config.early_stopping is True
        if not bool(improvable.any()) or all_full or bool(hits.all()):
            break
        cache.reorder((parents + batch_offset).view(-1))
        step_ids = running[:, :, cur - 1].reshape(b * nb, 1)
        pos = positions(batch, cur - 1, 1, nb)
        out = model(step_ids, cache=cache, input_pos=cur - 1, position_ids=pos,
                    attention_mask=None if mask is None else mask[:, :cur])
        logits = out.logits[:, -1].float()

    results = []
    for i in range(b):
        toks = [finished[i, j, plen:plen + int(fin_lens[i, j])].tolist() for j in range(n_ret)]
        lps = None if fin_hist is None else [_hypothesis_logprobs(fin_hist, i, j, toks[j]) for j in range(n_ret)]
        results.append(generations(toks, stops=stops, prompt_lens=[batch.lens[i]] * n_ret,
                                   scores=fin_scores[i, :n_ret].tolist(), logprobs=lps))
    return results


def _hypothesis_logprobs(hist: tuple[torch.Tensor, ...], i: int, j: int, tokens: list[int]) -> list[TokenLogprob]:
    """TokenLogprobs of prompt i's hypothesis j (its generated `tokens`) from the (chosen, top values, top ids)
    histories."""
    chosen, top_lp, top_ids = (t[i, j, :len(tokens)].tolist() for t in hist)
    return [TokenLogprob(token_id=tok, logprob=lp, top=list(zip(ti, tl, strict=True)))
            for tok, lp, ti, tl in zip(tokens, chosen, top_ids, top_lp, strict=True)]


# generate() finds every search method here; contrastive.py and speculative.py import the plumbing above, so they
# are loaded on first use (PEP 562) rather than imported at the top, which would be circular.
_ELSEWHERE = {"contrastive_search": "contrastive", "contrastive_decoding": "contrastive",
              "speculative_decode": "speculative"}
# the padded-batch plumbing lives in inputs.py (the plain loop uses it too) and stays importable from here
__all__ = ["Batch", "beam_search", "full_mask", "left_pad", "positions", *_ELSEWHERE]


def __getattr__(name: str):
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(f"neurallayers.generation.{_ELSEWHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
