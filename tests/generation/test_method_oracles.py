"""Oracles for the decoding methods beside plain greedy and sampling, on many random cases with tiny random models:
speculative decoding with greedy gives the target's own greedy tokens (any draft, any number of drafted tokens, a
stop token, a stop string or max_new_tokens inside a drafted block, a draft with a shorter context) and, sampled,
the target's distribution of the first two tokens; contrastive search equals transformers' algorithm computed by
hand on a transformers model with the same weights (transformers 5 no longer ships it); stream() gives generate()'s
text, tokens and log-probabilities; every method reports the model's own log-probabilities (before processors) and
gives a prompt in a batch what it gives it alone."""

from __future__ import annotations

import os
import random
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from nl_gen_helpers import UNICODE_TEXT, MarkovLM, memorized_lm, unicode_tokenizer
from nl_search_helpers import chi2, chi2_threshold, tiny
from torch import nn

from neurallayers.config import ModelConfig
from neurallayers.generation import GenerationConfig, generate, stream
from neurallayers.generation.processors import apply_processors, build_processors
from neurallayers.generation.speculative import speculative_decode
from neurallayers.models import build_model
from neurallayers.models.decoder import DecoderLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def random_lm(rng: random.Random, vocab: int, block_size: int, *, n_layer: int = 1) -> DecoderLM:
    """A GPT-2 or Llama style DecoderLM with random weights, peaked or flat."""
    torch.manual_seed(rng.randrange(10**6))
    llama = dict(norm="rmsnorm", mlp="swiglu", position="rope", bias=False) if rng.random() < 0.5 else {}
    cfg = ModelConfig(vocab_size=vocab, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=16,
                      init_std=rng.choice([0.3, 1.0]), **llama)
    return DecoderLM(cfg).eval()


@torch.inference_mode()
def reference_greedy(model: DecoderLM, prompt: list[int], cfg: GenerationConfig, stops: list[int]) -> list[int]:
    """Greedy decoding by full forwards without a cache, through cfg's processors: the tokens up to a stop token or
    the model's full context."""
    procs = build_processors(cfg, eos_ids=stops, prompt_lens=len(prompt))
    ids = list(prompt)
    for _ in range(min(cfg.max_new_tokens, model.config.block_size - len(prompt) + 1)):
        scores = apply_processors(procs, torch.tensor([ids]), model(torch.tensor([ids])).logits[:, -1].float())
        tok = int(scores[0].argmax())
        if tok in stops:
            break
        ids.append(tok)
    return ids[len(prompt):]


@torch.inference_mode()
def assert_own_logprobs(model: DecoderLM, prompt: list[int], gen, n_top: int) -> None:
    """gen.logprobs are log_softmax of the model's logits over prompt + tokens (before processors), top n_top too."""
    assert len(gen.logprobs) == len(gen.token_ids)
    if not gen.token_ids:
        return
    # the last token is never fed (it may sit past a full context)
    logits = model(torch.tensor([(prompt + gen.token_ids)[:-1]])).logits[0, len(prompt) - 1:].float()
    logp = F.log_softmax(logits, dim=-1)
    for i, rec in enumerate(gen.logprobs):
        assert rec.token_id == gen.token_ids[i]
        assert rec.logprob == pytest.approx(float(logp[i, rec.token_id]), abs=1e-4)
        top = logp[i].topk(n_top)
        assert [v for _, v in rec.top] == pytest.approx(top.values.tolist(), abs=1e-4)


# ----- speculative decoding -----
@pytest.mark.parametrize("seed", range(2))
def test_speculative_greedy_gives_the_targets_greedy_tokens(seed: int) -> None:
    """Random target/draft pairs (the draft's context often shorter than the sequence), numbers of drafted tokens,
    processors, stop tokens the target does produce, stop strings and max_new_tokens that end a drafted block
    midway; several prompts at once."""
    tok = unicode_tokenizer()
    rng = random.Random(seed)
    ended = Counter()
    for _ in range(8):
        target = random_lm(rng, tok.vocab_size, rng.choice([24, 64]), n_layer=rng.choice([1, 2]))
        draft = random_lm(rng, tok.vocab_size, rng.choice([6, 12, 64]))
        starts = [rng.randrange(len(UNICODE_TEXT) - 20) for _ in range(rng.randint(1, 3))]
        prompts = [UNICODE_TEXT[i:i + rng.randint(1, 12)] for i in starts]
        kw = dict(max_new_tokens=rng.randint(1, 24), temperature=0, num_speculative_tokens=rng.randint(1, 8),
                  logprobs=rng.choice([None, 2]))
        kw |= rng.choice([{}, dict(repetition_penalty=1.3), dict(no_repeat_ngram_size=3),
                          dict(frequency_penalty=0.8, logit_bias={rng.randrange(tok.vocab_size): 2.0})])
        plain = generate(target, tok, prompts, GenerationConfig(**kw))
        if rng.random() < 0.5:  # a token the target produces: a stop token inside some drafted block
            kw["stop_token_ids"] = [rng.choice(g.token_ids) for g in plain if g.token_ids][:1]
        if rng.random() < 0.5:  # a stop string of the text, maybe split over tokens
            kw["stop"] = [g.text[j:j + rng.randint(1, 3)] for g in plain if g.text
                          for j in [rng.randrange(len(g.text))]][:2]
        cfg = GenerationConfig(**kw)
        want = generate(target, tok, prompts, cfg)
        got = generate(target, tok, prompts, cfg, draft_model=draft)
        for prompt, w, g in zip(prompts, want, got, strict=True):
            assert (g.token_ids, g.text, g.finish_reason, g.generated_tokens) == \
                (w.token_ids, w.text, w.finish_reason, w.generated_tokens), (prompt, kw)
            ids = tok.encode(prompt, add_special_tokens=True)
            if not cfg.stop:
                assert g.token_ids == reference_greedy(target, ids, cfg, tok.eos_ids + cfg.stop_token_ids)
            if cfg.logprobs is not None:
                assert_own_logprobs(target, ids, g, 2)
            ended[g.finish_reason] += 1
    assert ended["stop"] and ended["length"], ended


class RowLM(nn.Module):
    """A stub decoder whose next-token logits are one fixed row at every position."""

    def __init__(self, row: torch.Tensor) -> None:
        super().__init__()
        self.row = row
        self.wte = nn.Embedding(len(row), 1)
        self.config = SimpleNamespace(vocab_size=len(row), block_size=32, causal=True, position="learned",
                                      rope_scaling=None)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> SimpleNamespace:
        return SimpleNamespace(rows=lambda start, stop: None, reorder=lambda index: None)

    def forward(self, ids: torch.Tensor, *, logits_to_keep: int = 0, **_) -> SimpleNamespace:
        logits = self.row.expand(*ids.shape, -1)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def test_speculative_greedy_takes_the_argmax_of_the_scores_not_of_their_softmax() -> None:
    """Two top scores one float apart: softmax rounds them to one probability, and the argmax of the probabilities
    took the first, token 0, where plain greedy decoding takes the larger score, token 1."""
    top = torch.tensor(0.25)
    row = torch.tensor([0.25, float(torch.nextafter(top, torch.tensor(1.0)))] + [-2.0] * 6)
    assert row.softmax(-1)[0] == row.softmax(-1)[1], "the rounding this test is about"
    target = RowLM(row)
    cfg = GenerationConfig(max_new_tokens=5, temperature=0)
    (plain,) = generate(target, None, [[3]], cfg)
    assert plain.token_ids == [1] * 5
    for draft in (target, RowLM(torch.zeros(8))):  # a draft that proposes the rounded argmax, and a flat one
        ((got,),) = speculative_decode(target, draft, [[3]], cfg.replace(num_speculative_tokens=2), eos_ids=[])
        assert got.token_ids == plain.token_ids


@torch.inference_mode()
def first_two(model: nn.Module, prompt: list[int], cfg: GenerationConfig, eos: int) -> dict[tuple[int, ...], float]:
    """P(the first two tokens) in float64 through cfg's processors; a sequence that stops at eos first is (eos,)."""
    procs = build_processors(cfg, eos_ids=[eos], prompt_lens=len(prompt))

    def dist(ids: list[int]) -> torch.Tensor:
        logits = model(torch.tensor([ids])).logits[0, -1:].double()
        return apply_processors(procs, torch.tensor([ids]), logits)[0].softmax(-1)

    p1, out = dist(prompt), {}
    for a in range(len(p1)):
        if a == eos:
            out[(a,)] = float(p1[a])
            continue
        p2 = dist([*prompt, a])
        out |= {(a, b): float(p1[a] * p2[b]) for b in range(len(p2))}
    return out


@pytest.mark.parametrize(("k", "max_new", "settings"), [(4, 3, dict(top_p=0.9, repetition_penalty=1.5)),
                                                        (3, 2, dict(temperature=0.7, min_new_tokens=1)),
                                                        (5, 4, dict(top_k=4, no_repeat_ngram_size=2))], ids=str)
def test_speculative_sampling_keeps_the_targets_distribution_with_stops_inside_a_block(k, max_new, settings):
    """Leviathan et al. / Chen et al.: the first two tokens follow the target's processed distribution when the
    drafted block holds the eos token, ends at max_new_tokens, or outruns a draft with a 4-token context."""
    vocab, eos, prompt, n = 6, 2, [1, 4, 3], 2000
    target, draft = MarkovLM(0, 1.0, vocab), MarkovLM(1, 2.5, vocab, block_size=4)
    cfg = GenerationConfig(max_new_tokens=max_new, num_speculative_tokens=k, **settings)
    counts, drafted, accepted, stopped = Counter(), 0, 0, 0
    for seed in range(n):
        stats: dict = {}
        ((g,),) = speculative_decode(target, draft, [prompt], cfg.replace(seed=seed), eos_ids=[eos], stats=stats)
        seq = g.token_ids + [eos] * (g.finish_reason == "stop")
        counts[tuple(seq[:2])] += 1
        drafted, accepted = drafted + stats["drafted"], accepted + stats["accepted"]
        stopped += g.finish_reason == "stop"
    assert 0.1 < accepted / drafted < 0.9, "both the accept and the reject path must run"
    assert stopped > 100, "sequences must stop at eos inside a block"
    want = first_two(target, prompt, cfg, eos)
    assert set(counts) <= {c for c, p in want.items() if p > 0}
    stat, df = chi2(counts, want, n)
    assert stat < chi2_threshold(df), (stat, df)
    stat, df = chi2(counts, first_two(draft, prompt, cfg, eos), n)
    assert stat > chi2_threshold(df), "the test must tell the target from the draft"


def test_a_draft_or_amateur_that_is_no_decoder_is_named() -> None:
    """An encoder, a run's path or a tokenizer given as the draft or amateur model failed with an AttributeError
    deep in the search (on its cache, config or modules)."""
    tok = unicode_tokenizer()
    target = tiny(seed=1, vocab=tok.vocab_size)
    encoder = build_model(ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                                      causal=False))
    for role in ("draft_model", "amateur_model"):
        with pytest.raises(ValueError, match=f"^{role}: {type(encoder).__name__} is an encoder"):
            generate(target, tok, ["héllo"], max_new_tokens=3, **{role: encoder})
        with pytest.raises(ValueError, match=f"^{role}: .*got str .*load the model first"):
            generate(target, tok, ["héllo"], max_new_tokens=3, **{role: "runs/tiny"})
        with pytest.raises(ValueError, match=f"^{role}: generation needs a causal decoder .*got Tokenizer"):
            generate(target, tok, ["héllo"], max_new_tokens=3, **{role: tok})
    with pytest.raises(ValueError, match="^draft: .*got str"):
        speculative_decode(target, "runs/tiny", [[1, 2]], GenerationConfig(max_new_tokens=2), eos_ids=[])


# ----- contrastive search -----
def hf_pair(seed: int, family: str, vocab: int = 48) -> tuple[nn.Module, DecoderLM]:
    """A random transformers GPT-2 or Llama (GQA) and our DecoderLM holding the same weights."""
    import transformers

    from neurallayers.interop import gpt2, llama

    torch.manual_seed(seed)
    if family == "gpt2":
        hf_cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                         initializer_range=0.3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        hf, interop = transformers.GPT2LMHeadModel(hf_cfg).eval(), gpt2
    else:
        hf_cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                          initializer_range=0.3, tie_word_embeddings=False)
        hf, interop = transformers.LlamaForCausalLM(hf_cfg).eval(), llama
    cfg = interop.config_from_hf(hf_cfg.to_dict())
    ours = DecoderLM(cfg).eval()
    ours.load_state_dict(interop.to_ours(hf.state_dict(), cfg), strict=False)
    return hf, ours


@torch.inference_mode()
def hf_contrastive_search(hf: nn.Module, prompt: list[int], n: int, *, k: int, alpha: float, eos: list[int],
                          processors) -> list[int]:
    """transformers 4's _contrastive_search for one prompt, by full forwards of the transformers model: the top k of
    softmax(processed logits), each scored (1 - alpha) * p - alpha * max cosine(its last hidden state, the context's
    last hidden states), the best taken (the first on ties); ends before an eos id."""
    ids = list(prompt)
    for _ in range(n):
        out = hf(torch.tensor([ids]), output_hidden_states=True)
        probs = processors(torch.tensor([ids]), out.logits[:, -1].float()).softmax(-1)[0]
        top_p, top_ids = probs.topk(k)
        context = out.hidden_states[-1][0]
        context = context / context.norm(dim=-1, keepdim=True)  # (T, D)
        scores = []
        for p, v in zip(top_p.tolist(), top_ids.tolist(), strict=True):
            h = hf(torch.tensor([[*ids, v]]), output_hidden_states=True).hidden_states[-1][0, -1]
            scores.append((1 - alpha) * p - alpha * float((context @ (h / h.norm())).max()))
        tok = int(top_ids[scores.index(max(scores))])
        if tok in eos:
            break
        ids.append(tok)
    return ids[len(prompt):]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_contrastive_search_equals_transformers_algorithm_on_the_same_weights(family: str) -> None:
    """Left-padded batches of random prompts; random top_k, penalty_alpha, max_new_tokens, eos ids the model
    produces, repetition penalty and min_new_tokens (the matching transformers processors in the reference)."""
    from transformers.generation import logits_process as lp

    hf, ours = hf_pair(7, family)
    rng = random.Random(family)
    differs = stopped = 0
    for _ in range(4):
        prompts = [[rng.randrange(48) for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 3))]
        k, alpha, n = rng.choice([2, 3, 5]), rng.choice([0.3, 0.6, 1.0]), rng.randint(2, 9)
        kw = rng.choice([{}, dict(repetition_penalty=1.5), dict(min_new_tokens=2)])
        greedy = generate(ours, None, prompts, max_new_tokens=n, temperature=0)
        eos = [g.token_ids[-1] for g in greedy if g.token_ids][:1] if rng.random() < 0.7 else []
        cfg = GenerationConfig(max_new_tokens=n, top_k=k, penalty_alpha=alpha, stop_token_ids=eos, **kw)
        got = generate(ours, None, prompts, cfg)
        for prompt, g, gr in zip(prompts, got, greedy, strict=True):
            procs = lp.LogitsProcessorList()
            if "repetition_penalty" in kw:
                procs.append(lp.RepetitionPenaltyLogitsProcessor(1.5))
            if "min_new_tokens" in kw and eos:
                procs.append(lp.MinNewTokensLengthLogitsProcessor(len(prompt), 2, eos))
            want = hf_contrastive_search(hf, prompt, n, k=k, alpha=alpha, eos=eos, processors=procs)
            assert g.token_ids == want, (prompt, k, alpha, n, eos, kw)
            differs += want != gr.token_ids[:len(want)]
            stopped += g.finish_reason == "stop"
    assert differs and stopped, "the degeneration penalty must change choices, and some sequences must stop"


# ----- stream -----
@pytest.mark.parametrize("seed", range(2))
def test_stream_gives_generates_text_tokens_and_logprobs(seed: int) -> None:
    """A model that recites emoji, CJK and accented text through a byte-level BPE (characters split over tokens),
    greedy and sampled, prompts as text or as ids that end inside a character, stop strings from the continuation
    (a character split over tokens, several at once): the events join to generate()'s text, never show U+FFFD,
    carry its tokens and log-probabilities, and end with its finish_reason."""
    model, tok = memorized_lm(), unicode_tokenizer()
    rng = random.Random(seed)
    text = UNICODE_TEXT * 2
    cut = 0
    for _ in range(25):
        i = rng.randrange(len(UNICODE_TEXT))
        prompt = text[i:i + rng.randint(1, 12)]
        if rng.random() < 0.3:
            ids = tok.encode(text[i:i + 20])
            prompt = ids[:rng.randint(1, len(ids))]
        base = GenerationConfig(max_new_tokens=rng.randint(1, 30), temperature=rng.choice([0, 0, 0.7]),
                                seed=rng.randrange(100), logprobs=rng.choice([None, 2]))
        (full,) = generate(model, tok, [prompt], base)
        stops = [full.text[j:j + rng.randint(1, 4)] for j in rng.sample(range(len(full.text)), min(2, len(full.text)))]
        cfg = base.replace(stop=stops + [rng.choice(["🙂", "日本", "é", "語 o"])] * (rng.random() < 0.4))
        (want,) = generate(model, tok, [prompt], cfg)
        events = list(stream(model, tok, prompt, cfg))
        tokens = [e for e in events if e.token_id is not None]
        assert "".join(e.text for e in events) == want.text, (prompt, cfg.stop)
        assert "\ufffd" in want.text or not any("\ufffd" in e.text for e in events)
        assert [e.token_id for e in tokens] == want.token_ids
        assert events[-1].finish_reason == want.finish_reason and events[-1].token_id is None
        assert not any(s in want.text for s in cfg.stop)
        if cfg.logprobs is not None:
            assert [(e.logprob.logprob, e.logprob.top) for e in tokens] == \
                [(lp.logprob, lp.top) for lp in want.logprobs]
            ids = prompt if isinstance(prompt, list) else tok.encode(prompt, add_special_tokens=True)
            assert_own_logprobs(model, ids, want, 2)
        cut += want.text != full.text
    assert cut > 5, "stop strings must end many of the texts"


# ----- batching -----
def fields(gen) -> tuple:
    """A Generation's fields, its floats (scores, log-probabilities: a padded batch sums in another order) to 1e-4."""
    def near(x: float | None) -> object:
        return None if x is None else pytest.approx(x, abs=1e-4)

    logprobs = [(lp.token_id, near(lp.logprob), [(t, near(v)) for t, v in lp.top]) for lp in gen.logprobs]
    return (gen.token_ids, gen.text, gen.finish_reason, gen.prompt_tokens, gen.generated_tokens, near(gen.score),
            logprobs)


METHODS = {
    "greedy": dict(temperature=0),
    "sampling": dict(temperature=0.8, top_k=5, num_return_sequences=2),
    "beam search": dict(num_beams=3, num_return_sequences=2),
    "contrastive search": dict(penalty_alpha=0.6, top_k=3),
    "contrastive decoding": dict(temperature=0.8, num_return_sequences=2, helper="amateur_model"),
    "speculative greedy": dict(temperature=0, helper="draft_model"),
    "speculative sampling": dict(temperature=0.8, num_return_sequences=2, helper="draft_model"),
}


@pytest.mark.parametrize("method", METHODS, ids=str)
def test_every_method_gives_a_prompt_in_a_batch_what_it_gives_it_alone(method: str) -> None:
    """Prompts of different lengths (some filling the context), a seed, processors, stop token ids and stop strings
    that the batch's own texts hold, log-probabilities: each prompt's sequences equal its call alone, field for
    field."""
    tok = unicode_tokenizer()
    rng = random.Random(method)
    kw = dict(METHODS[method])
    role = kw.pop("helper", None)
    for _ in range(3):
        block = rng.choice([16, 64])
        target, other = random_lm(rng, tok.vocab_size, block), random_lm(rng, tok.vocab_size, rng.choice([12, 64]))
        room = min(block, other.config.block_size) if role == "amateur_model" else block
        room -= method == "contrastive search"  # it feeds each candidate: a prompt may not fill the context
        prompts = [tok.encode(UNICODE_TEXT[i:i + 30])[:rng.randint(1, room)]
                   for i in (rng.randrange(len(UNICODE_TEXT) - 30) for _ in range(3))]
        extra = {role: other} if role else {}
        cfg = GenerationConfig(max_new_tokens=rng.randint(1, 16), seed=rng.randrange(100), logprobs=1, **kw)
        cfg = cfg.replace(**rng.choice([{}, dict(repetition_penalty=1.3), dict(min_new_tokens=1)]))
        texts = [g.text for g in generate(target, tok, prompts, cfg, **extra) if g.text]
        stops = [t[j:j + 2] for t in texts for j in [rng.randrange(len(t))]][:2]
        cfg = cfg.replace(stop=stops, stop_token_ids=[rng.randrange(tok.vocab_size)])
        batched = generate(target, tok, prompts, cfg, **extra)
        n = cfg.num_return_sequences
        for i, prompt in enumerate(prompts):
            alone = generate(target, tok, [prompt], cfg, **extra)
            assert [fields(g) for g in batched[i * n:(i + 1) * n]] == [fields(g) for g in alone], (method, i)

