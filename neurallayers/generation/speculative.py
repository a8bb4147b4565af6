"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes k tokens, the target
checks all of them in one forward pass, and an accept/reject rule keeps the output distribution exactly the
target's."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from neurallayers.generation.config import Generation, GenerationConfig
from neurallayers.generation.generate import _row_seed
from neurallayers.generation.inputs import _check_decoder
from neurallayers.generation.processors import apply_processors, check_some_token_left
from neurallayers.generation.search import (
    LogprobTrail,
    build_processors,
    check_method,
    check_request,
    copies,
    generations,
    keeps_modes,
    stop_ids,
)


def _scores(model: nn.Module, cache, tokens: list[int], pos: int, keep: int) -> torch.Tensor:
    """Feed `tokens` at cache position `pos`; float logits (keep, V) of the last `keep` positions."""
    ids = torch.tensor([tokens], device=model.wte.weight.device)
    return model(ids, cache=cache, input_pos=pos, logits_to_keep=keep).logits[0].float()


def _pick(probs: torch.Tensor, greedy: bool, gen: torch.Generator) -> int:
    """Argmax (greedy) or one sample from probs (V,)."""
    return int(probs.argmax()) if greedy else int(torch.multinomial(probs, 1, generator=gen))


def _check_chunk_invariant(target: nn.Module, longest: int) -> None:
    """Speculative decoding is exact only if the target scores a token alike whether one forward holds it alone or
    with the drafted tokens after it. Dynamic NTK RoPE past its trained length scales by the forward's longest
    position, so there the verifying forward would not give the logits plain decoding takes."""
    scaling = target.config.rope_scaling or {}
    if target.config.position != "rope" or scaling.get("type") != "dynamic":
        return
    trained = scaling.get("original_max_position_embeddings", target.config.block_size)
    if longest > trained:
        raise ValueError(f"speculative decoding is not exact for a target with dynamic NTK RoPE scaling past its "
                         f"trained length of {trained} positions (this request reaches {longest}): its logits then "
                         f"depend on how many tokens one forward holds; use plain decoding or fewer max_new_tokens")


@keeps_modes
@torch.inference_mode()
def speculative_decode(target: nn.Module, draft: nn.Module, input_ids: list[list[int]], config: GenerationConfig, *,
                       eos_ids: list[int], stats: dict | None = None,
                       stop_watch: Callable[[int], Callable[[int], bool]] | None = None) -> list[list[Generation]]:
    """Decode one prompt with `target`, `config.num_speculative_tokens` tokens at a time proposed by `draft`.

    Each round the draft samples k tokens d_1..d_k from its distributions q_i; the target scores the pending
    token and all k drafts in one forward over its KV cache, giving p_1..p_{k+1}. Draft d_i is accepted with
    probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection a token is sampled from
    norm(max(0, p_i - q_i)) and the round ends; if all k are accepted a bonus token comes from p_{k+1}. The tokens
    are therefore distributed exactly as sampling from the target alone (with the same processors: temperature,
    top-k/p, penalties ...). Greedy (temperature 0) accepts a draft when it is the target's argmax, so the tokens
    equal the target's own greedy decoding. Rejected positions are rolled back by moving each static cache's
    write position back: stale entries past it are never attended and get overwritten.

    Only one prompt per call (batch size 1): rows of a batch accept different numbers of tokens per round.

    Args:
        target: the DecoderLM whose distribution is sampled.
        draft: a smaller DecoderLM with the same vocabulary. It proposes while its context (block_size) holds the
            sequence, and no more than it may end: it stops at a drafted stop token and where its processed scores
            leave no token (an n-gram ban on its own path, which the target may never take). Past its context the
            target decodes alone, so the draft changes only the speed, never the tokens or how many.
        input_ids: exactly one prompt, [[token ids]].
        config: num_speculative_tokens (k), max_new_tokens, temperature (0 = greedy), processors, seed, logprobs
            (each token's log-probability under the target's own distribution, before processors, as generate()
            reports them: the target scores every emitted token in its verifying forward), num_return_sequences
            (sequence k sampled with the seed (seed, k), as generate() seeds a prompt's k-th sample; greedy: copies).
        eos_ids: token ids that end the sequence (unless config.ignore_eos).
        stats: if given, filled with rounds, drafted, accepted, acceptance_rate (accepted / drafted),
            target_forwards, draft_forwards and new_tokens (summed over the sequences sampled).
        stop_watch: stop strings (generate() passes them; None: none): stop_watch(0) gives a sequence's watch, which
            takes each generated token and says whether the text has met a stop string; the sequence ends there (its
            tokens up to that one kept; the caller cuts the text).

    Returns:
        [[Generation] * num_return_sequences]: one prompt, its sequences (token_ids exclude the prompt and a final
        stop token).

    Raises:
        ValueError: more than one prompt, a draft that is no causal decoder, vocabularies that differ, or the usual
            bad prompts.
    """
    if not isinstance(input_ids, list) or len(input_ids) != 1:
        n = len(input_ids) if isinstance(input_ids, list) else type(input_ids).__name__
        raise ValueError(f"speculative decoding takes exactly one prompt (batch size 1); got {n}")
    _check_decoder(target)  # both before their vocabularies are compared: else an AttributeError on a config
    _check_decoder(draft, "draft")
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"draft vocab_size={draft.config.vocab_size} differs from the target's "
                         f"vocab_size={target.config.vocab_size}; the draft must share the target's tokenizer")
    check_request(target, input_ids, config, eos_ids)
    check_method(config, "speculative_decode")
    _check_chunk_invariant(target, len(input_ids[0]) + config.max_new_tokens)
    if config.num_return_sequences > 1:
        return [_sequences(target, draft, input_ids, config, eos_ids=eos_ids, stats=stats, stop_watch=stop_watch)]
    greedy = config.greedy
    device = target.wte.weight.device
    gen = torch.Generator(device=device)
    if config.seed is not None:
        gen.manual_seed(config.seed)
    elif not greedy:  # from torch's global generator, as generate() seeds a prompt: torch.manual_seed repeats it
        gen.manual_seed(int(torch.randint(0, 2**62, ())))
    stops = stop_ids(config, eos_ids)
    prompt = input_ids[0]
    procs = build_processors(config, eos_ids, prompt_width=len(prompt), sampling=not greedy)

    def processed(logits: torch.Tensor, context: list[int]) -> torch.Tensor:
        """The processed next-token scores (V,) after `context`."""
        if not procs:
            return logits
        return apply_processors(procs, torch.tensor([context], device=logits.device), logits[None])[0]

    def probs(logits: torch.Tensor, context: list[int]) -> torch.Tensor:
        """The target's next-token distribution (V,) after `context`, a context plain decoding also reaches. Greedy:
        the processed scores themselves, whose argmax plain decoding takes; softmax rounds two top scores a float
        apart to one probability at times, and its argmax then took the first of them."""
        logits = processed(logits, context)
        check_some_token_left(config, logits[None], len(context) - len(prompt))
        return logits if greedy else logits.softmax(-1)

    total = len(prompt) + config.max_new_tokens
    # the draft only proposes: past its own context the target goes on alone, so the draft never shortens the output
    d_block = draft.config.block_size
    t_cache, d_cache = target.new_cache(1, total), draft.new_cache(1, min(total, d_block))
    seq = list(prompt)
    t_pos = d_pos = 0  # how many leading tokens of seq each cache holds correctly
    counts = dict(rounds=0, drafted=0, accepted=0, target_forwards=0, draft_forwards=0)
    trail = LogprobTrail(1, config.logprobs)
    met_stop = None if stop_watch is None else stop_watch(0)
    finished = False
    while not finished and len(seq) - len(prompt) < config.max_new_tokens:
        n = len(seq)
        # drafting token j feeds the draft up to position n + j - 2, which its context must hold
        k = min(config.num_speculative_tokens, config.max_new_tokens - (n - len(prompt)) - 1, d_block - n + 1)
        drafts: list[int] = []
        qs: list[torch.Tensor] = []
        for _ in range(k):
            pending = (seq + drafts)[d_pos:]
            scores = processed(_scores(draft, d_cache, pending, d_pos, 1)[-1], seq + drafts)
            d_pos += len(pending)
            counts["draft_forwards"] += 1
            if bool(torch.isneginf(scores).all()):  # the draft's path left no token (n-gram ban): the target decides
                break
            q = scores.softmax(-1)
            drafts.append(_pick(q, greedy, gen))
            qs.append(q)
            if drafts[-1] in stops:  # an accepted stop token ends the sequence: drafting past it is wasted
                break
        k = len(drafts)
        logits = _scores(target, t_cache, (seq + drafts)[t_pos:], t_pos, k + 1)  # (k+1, V): p_1 .. p_{k+1}
        new: list[int] = []
        accepted = k
        for i, (x, q) in enumerate(zip(drafts, qs, strict=True)):
            p = probs(logits[i], seq + drafts[:i])
            if greedy:
                ok = int(p.argmax()) == x
            else:
                ok = float(torch.rand((), generator=gen, device=device)) < float(p[x] / q[x])
            if not ok:
                residual = None if greedy else (p - q).clamp(min=0)  # greedy: p holds scores, not probabilities
                if residual is None or float(residual.sum()) <= 0:  # 0 only when p == q (then any draw is p's)
                    new.append(_pick(p, greedy, gen))
                else:
                    new.append(_pick(residual / residual.sum(), greedy, gen))
                accepted = i
                break
            new.append(x)
        if accepted == k and not (drafts and drafts[-1] in stops):  # bonus token: all drafts accepted, none a stop
            new.append(_pick(probs(logits[k], seq + drafts), greedy, gen))
        trail.extend(0, logits[:len(new)], torch.tensor(new, device=device))  # row i of logits chose new[i]
        counts["rounds"] += 1
        counts["drafted"] += k
        counts["accepted"] += accepted
        counts["target_forwards"] += 1
        # caches keep what they computed for the accepted prefix; later writes overwrite the rest
        t_pos = n + accepted
        d_pos = min(d_pos, n + accepted)
        for tok in new:
            seq.append(tok)
            if tok in stops or (met_stop is not None and met_stop(tok)):
                finished = True
                break
    if stats is not None:
        stats.update(counts, acceptance_rate=counts["accepted"] / counts["drafted"] if counts["drafted"] else 0.0,
                     new_tokens=len(seq) - len(prompt))
    lps = None if trail.rows is None else trail.rows
    return [generations([seq[len(prompt):]], stops=stops, prompt_lens=[len(prompt)], logprobs=lps)]


def _sequences(target: nn.Module, draft: nn.Module, input_ids: list[list[int]], config: GenerationConfig, *,
               eos_ids: list[int], stats: dict | None,
               stop_watch: Callable[[int], Callable[[int], bool]] | None) -> list[Generation]:
    """The prompt's config.num_return_sequences sequences, one speculative_decode each: sequence k sampled with the
    seed (seed, k) (unseeded: a fresh seed each), greedy decoding's one sequence copied; stats summed over the runs."""
    one = config.replace(num_return_sequences=1)
    n = config.num_return_sequences
    if config.greedy:
        ((gen,),) = speculative_decode(target, draft, input_ids, one, eos_ids=eos_ids, stats=stats,
                                       stop_watch=stop_watch)
        return copies([gen], n)
    gens, totals = [], {}
    for k in range(n):
        run: dict = {}
        seed = None if config.seed is None else _row_seed(config.seed, k)
        ((gen,),) = speculative_decode(target, draft, input_ids, one.replace(seed=seed), eos_ids=eos_ids, stats=run,
                                       stop_watch=stop_watch)
        gens.append(gen)
        run.pop("acceptance_rate")
        totals = {key: totals.get(key, 0) + value for key, value in run.items()}
    if stats is not None:
        drafted = totals["drafted"]
        stats.update(totals, acceptance_rate=totals["accepted"] / drafted if drafted else 0.0)
    return gens
