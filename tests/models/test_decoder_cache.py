"""KV-cache decoding equals the full forward (prefill then one token at a time, and in chunks), and a left-padded
batch with an attention mask equals each prompt alone, for every architecture whose positions allow it."""

from __future__ import annotations

import pytest
import torch
from nl_model_helpers import CACHED, config, model, random_ids

from neurallayers.models.decoder import DecoderLM

ATOL = 2e-5


@pytest.mark.parametrize("name", CACHED)
@torch.no_grad()
def test_prefill_then_token_by_token_equals_full_forward(name):
    net = model(name)
    ids = random_ids(2, 20, seed=5)
    full = net(ids).logits
    cache = net.new_cache(2, 24)
    got = [net(ids[:, :7], cache=cache).logits]
    for t in range(7, 20):
        got.append(net(ids[:, t:t + 1], cache=cache, input_pos=t).logits)
    torch.testing.assert_close(torch.cat(got, dim=1), full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", CACHED)
@torch.no_grad()
def test_chunked_prefill_equals_full_forward(name):
    net = model(name)
    ids = random_ids(2, 21, seed=6)
    full = net(ids).logits
    cache = net.new_cache(2, 21)
    got, start = [], 0
    for size in (4, 1, 6, 3, 7):  # sliding window 5: chunks both shorter and longer than the window
        got.append(net(ids[:, start:start + size], cache=cache, input_pos=start).logits)
        start += size
    torch.testing.assert_close(torch.cat(got, dim=1), full, atol=ATOL, rtol=0)
    # logits_to_keep gives the same last rows
    last = net(ids[:, -3:], cache=net.new_cache(2, 21), input_pos=0, logits_to_keep=1).logits
    torch.testing.assert_close(last, net(ids[:, -3:]).logits[:, -1:], atol=ATOL, rtol=0)


@torch.no_grad()
def test_logits_to_keep_feeds_the_lm_head_a_dense_tensor():
    """The kept rows reach lm_head as their own dense tensor, not a strided slice of every position: on CPU a bf16
    linear over such a slice copies the whole weight first (~100 ms a GPT-2 prefill; benchmarks/decode.py)."""
    net = model(CACHED[0])
    seen = []
    handle = net.lm_head.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        net(random_ids(2, 9, seed=8), logits_to_keep=2)
    finally:
        handle.remove()
    (x,) = seen
    assert x.shape[:2] == (2, 2) and x.stride() == (2 * x.shape[-1], x.shape[-1], 1)


@pytest.mark.parametrize("name", CACHED)
@torch.no_grad()
def test_per_row_positions_equal_shared_positions(name):
    """input_pos as a (B,) tensor (rows at different lengths, as a server batches them) equals each row alone."""
    net = model(name)
    ids = random_ids(2, 16, seed=7)
    cache = net.new_cache(2, 16)
    net(ids[:1, :9], cache=cache.rows(0, 1))
    net(ids[1:, :5], cache=cache.rows(1, 2))
    pos = torch.tensor([9, 5])
    step = torch.stack((ids[0, 9:12], ids[1, 5:8]))  # 3 tokens per row from its own position
    got = net(step, cache=cache, input_pos=pos).logits
    torch.testing.assert_close(got[0], net(ids[:1, :12]).logits[0, 9:], atol=ATOL, rtol=0)
    torch.testing.assert_close(got[1], net(ids[1:, :8]).logits[0, 5:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", CACHED)
@torch.no_grad()
def test_left_padded_batch_equals_one_at_a_time(name):
    """Prompts of lengths 6, 11, 2 left-padded into one batch, prefilled, then 5 decode steps with the attention
    mask over every cache slot: each row's logits equal that prompt's own full forward."""
    net = model(name)
    lens, steps = [6, 11, 2], 5
    seqs = [random_ids(n + steps, seed=10 + i).tolist() for i, n in enumerate(lens)]
    width = max(lens)
    ids = torch.zeros(len(lens), width, dtype=torch.long)
    mask = torch.zeros(len(lens), width + steps, dtype=torch.long)
    for r, n in enumerate(lens):
        ids[r, width - n:] = torch.tensor(seqs[r][:n])
        mask[r, width - n:] = 1
    pads = torch.tensor([width - n for n in lens])
    cache = net.new_cache(len(lens), width + steps)
    pos = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
    rows = [net(ids, cache=cache, attention_mask=mask[:, :width], position_ids=pos).logits]
    for i in range(steps):
        tok = torch.tensor([[s[n + i]] for s, n in zip(seqs, lens, strict=True)])
        step_pos = (width + i - pads)[:, None]
        rows.append(net(tok, cache=cache, input_pos=width + i, position_ids=step_pos,
                        attention_mask=mask[:, :width + i + 1]).logits)
    batched = torch.cat(rows, dim=1)  # (B, width + steps, V)
    for r, n in enumerate(lens):
        alone = net(torch.tensor([seqs[r]])).logits[0]
        torch.testing.assert_close(batched[r, width - n:], alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["alibi", "llama-gqa"])
@torch.no_grad()
def test_decoding_past_block_size_equals_the_full_forward_of_a_longer_context(name):
    """ALiBi and RoPE have no position table: with a longer cache they decode past block_size (48) as a model of the
    same weights with a longer context computes it in one forward."""
    net = model(name)
    longer = DecoderLM(config(name, block_size=80)).eval()
    longer.load_state_dict(net.state_dict())
    ids = random_ids(1, 70, seed=9)
    cache = net.new_cache(1, 80)
    got = [net(ids[:, :40], cache=cache).logits]
    got += [net(ids[:, t:t + 1], cache=cache, input_pos=t).logits for t in range(40, 70)]
    torch.testing.assert_close(torch.cat(got, dim=1), longer(ids).logits, atol=ATOL, rtol=0)


def test_cache_overflow_and_context_length_are_clear_errors():
    net = model("gpt2")
    cache = net.new_cache(1, 8)
    with pytest.raises(ValueError, match="KV cache holds 8 positions; writing up to 10"):
        net(random_ids(1, 4), cache=cache, input_pos=6)
    with pytest.raises(ValueError, match="exceeds the context length block_size=48"):
        net(random_ids(1, 49))


@torch.no_grad()
def test_a_cache_of_another_dtype_than_the_model_is_a_clear_error():
    """A cache made before the model was cast: torch failed in the write or in attention ("expected scalar type
    BFloat16 but found Float"), naming neither the cache nor the cure. Under autocast the keys come out in bf16 and a
    float32 cache stores them, as before."""
    net = DecoderLM(config("gpt2")).eval()  # not the shared model: the casts below round its weights
    ids = random_ids(1, 5)
    for cache_dtype, model_dtype in ((torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)):
        cache = net.new_cache(1, 8, dtype=cache_dtype)
        with pytest.raises(ValueError, match=f"KV cache holds {cache_dtype} on cpu, but layer 0's keys are "
                                             f"{model_dtype}.*model.new_cache"):
            net.to(model_dtype)(ids, cache=cache)
    net.float()
    cache = net.new_cache(1, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(ids[:, :4], cache=cache)
        step = net(ids[:, 4:], cache=cache, input_pos=4).logits
        full = net(ids).logits
    torch.testing.assert_close(step[0, -1].float(), full[0, -1].float(), atol=0.05, rtol=0)


@pytest.mark.parametrize(("rows", "name"), [(1, "gpt2"), (3, "gpt2"), (2, "llama-gqa")])
@torch.no_grad()
def test_a_cache_of_another_batch_or_model_is_a_clear_error(rows, name):
    """One row into a cache of two was broadcast into both (the other row's keys overwritten) before a reshape failed;
    three rows, or another model's head count, failed in the write: torch's shape errors, naming neither."""
    cache = model("gpt2").new_cache(2, 16)  # 4 key/value heads; llama-gqa has 2
    before = cache.k.clone()
    with pytest.raises(ValueError, match=r"KV cache holds 2 rows of 4 key/value heads of size 8, but layer 0's keys "
                                         r"are \d rows of \d of size 8: make the cache for this batch and model"):
        model(name)(random_ids(rows, 4), cache=cache)
    assert torch.equal(cache.k, before)  # nothing written


def test_rows_outside_the_cache_are_refused():
    cache = model("gpt2").new_cache(2, 8)
    for start, stop in ((1, 5), (3, 4), (1, 1), (-1, 2)):
        with pytest.raises(ValueError, match=rf"rows\({start}, {stop}\) must satisfy 0 <= start < stop <= 2"):
            cache.rows(start, stop)
    assert cache.rows(1, 2).batch_size == 1


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "alibi"])
@torch.no_grad()
def test_a_static_cache_names_per_row_positions_outside_it(name):
    """Per-row (tensor) positions into a static cache were never read back: past its end torch's bare "index 8 is out of
    bounds for dimension 2 with size 8", and a negative one wrote the cache's last column and returned logits,
    silently (a learned table's bare IndexError). Now the lengths are named as for a dynamic cache, and nothing is
    written."""
    net = model(name)
    cache = net.new_cache(2, 8, static=True)
    net(random_ids(2, 4), cache=cache)
    before = cache.k.clone()
    with pytest.raises(ValueError, match="KV cache holds 8 positions; writing up to 11"):
        net(random_ids(2, 3), cache=cache, input_pos=torch.tensor([4, 8]))
    with pytest.raises(ValueError, match="KV cache positions start at 0; writing at -1"):
        net(random_ids(2, 1), cache=cache, input_pos=torch.tensor([-1, 3]))
    assert torch.equal(cache.k, before)
    # the last column is still writable, row by row
    ids = random_ids(2, 8, seed=3)
    fresh = net.new_cache(2, 8, static=True)
    net(ids[:, :7], cache=fresh)
    last = net(ids[:, 7:], cache=fresh, input_pos=torch.tensor([7, 7])).logits
    torch.testing.assert_close(last[:, 0], net(ids).logits[:, 7], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", CACHED)
@torch.no_grad()
def test_a_cache_reused_for_a_shorter_sequence_gives_its_full_forward(name):
    """A cache filled by an 18-token sequence, then reused from position 0 for a 9-token one: the stale keys past the
    new positions are never seen (a dynamic cache returns only the written columns, a static one masks the rest), at
    int and per-row positions alike."""
    net = model(name)
    old, new = random_ids(2, 18, seed=1), random_ids(2, 9, seed=2)
    full = net(new).logits
    for static in (False, True):
        cache = net.new_cache(2, 24, static=static)
        net(old, cache=cache)
        for per_row in (False, True):
            at = (lambda p: torch.tensor([p, p])) if per_row else (lambda p: p)
            got = [net(new[:, :5], cache=cache, input_pos=at(0)).logits]
            got += [net(new[:, t:t + 1], cache=cache, input_pos=at(t)).logits for t in range(5, 9)]
            torch.testing.assert_close(torch.cat(got, 1), full, atol=ATOL, rtol=0, msg=f"{static=} {per_row=}")
