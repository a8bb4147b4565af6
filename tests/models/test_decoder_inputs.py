"""Bad input to DecoderLM.forward: one clear ValueError naming the argument, never an IndexError from a position
table or a mask that broadcasts silently into wrong logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nl_model_helpers import VOCAB, config, model, random_ids

from neurallayers.models.decoder import DecoderLM


def test_an_attention_mask_shorter_than_the_cached_keys_is_refused():
    """A decode step given the mask of its new token only: (B, 1) would broadcast over every cached key."""
    net = model("gpt2")
    ids = random_ids(1, 6)
    cache = net.new_cache(1)
    net(ids[:, :5], cache=cache)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(B=1, S>=6\).*got \(1, 1\)"):
        net(ids[:, 5:], cache=cache, input_pos=5, attention_mask=torch.zeros(1, 1, dtype=torch.long))
    # the whole mask, prefix included, is what it takes; it gives the full forward's logits
    step = net(ids[:, 5:], cache=cache, input_pos=5, attention_mask=torch.ones(1, 6, dtype=torch.long))
    torch.testing.assert_close(step.logits[:, -1], net(ids).logits[:, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(2, 4), (1, 6, 1), (3, 6)])
def test_an_attention_mask_of_the_wrong_shape_is_refused(shape):
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model("gpt2")(random_ids(2, 6), attention_mask=torch.ones(shape, dtype=torch.long))


@pytest.mark.parametrize("name", ["gpt2", "sinusoidal-geglu"])
def test_positions_past_a_position_table_are_a_clear_error(name):
    net = model(name)  # block_size 48
    cache = net.new_cache(1, 64)  # a cache longer than the table
    with pytest.raises(ValueError, match="position 49 is past the .* position table.*block_size=48"):
        net(random_ids(1, 2), cache=cache, input_pos=48)
    with pytest.raises(ValueError, match="position 48 is past"):
        net(random_ids(1, 1), cache=cache, input_pos=torch.tensor([48]))
    with pytest.raises(ValueError, match="position 50 is past"):
        net(random_ids(1, 2), position_ids=torch.tensor([[3, 50]]))
    net(random_ids(1, 1), cache=cache, input_pos=47)  # the last row of the table is fine


@pytest.mark.parametrize("name", ["gpt2", "sinusoidal-geglu"])
@torch.no_grad()
def test_positions_outside_a_position_table_are_a_clear_error_with_a_static_cache(name):
    """A static cache skipped the table's check (to read no position back): past the table the embedding's bare
    IndexError, and a negative position id read the sinusoidal table's last row, silently. On the CPU the positions
    are read back anyway (the cache's own check), so the table is checked as without a static cache."""
    net = model(name)  # block_size 48
    cache = net.new_cache(1, 64, static=True)  # a cache longer than the table
    with pytest.raises(ValueError, match="position 48 is past the .* position table.*block_size=48"):
        net(random_ids(1, 1), cache=cache, input_pos=torch.tensor([48]))
    with pytest.raises(ValueError, match=r"position -1 is negative: .* must be in \[0, block_size=48\)"):
        net(random_ids(1, 1), cache=cache, input_pos=torch.tensor([3]), position_ids=torch.tensor([[-1]]))
    net(random_ids(1, 1), cache=cache, input_pos=torch.tensor([47]))  # the last row of the table is fine


@pytest.mark.parametrize("name", ["gpt2", "sinusoidal-geglu"])
def test_negative_positions_of_a_position_table_are_a_clear_error(name):
    """A learned table raised IndexError; the sinusoidal one read its last rows, silently wrong logits."""
    net = model(name)
    with pytest.raises(ValueError, match=r"position -1 is negative: .* must be in \[0, block_size=48\)"):
        net(random_ids(1, 3), position_ids=torch.tensor([[-1, 0, 1]]))
    with pytest.raises(ValueError, match="position -2 is negative"):
        net(random_ids(1, 3), cache=net.new_cache(1, 8), input_pos=torch.tensor([-2]))


@pytest.mark.parametrize("input_pos", [-2, torch.tensor([-2]), torch.tensor([0, -1])])
def test_a_negative_cache_position_is_refused(input_pos):
    """Written from the end of the cache, the keys lay where no query looked (a tensor position: silently)."""
    net = model("llama-gqa")  # RoPE: no position table to catch it first
    rows = 1 if isinstance(input_pos, int) else len(input_pos)
    with pytest.raises(ValueError, match="KV cache positions start at 0; writing at -"):
        net(random_ids(rows, 3), cache=net.new_cache(rows, 8), input_pos=input_pos)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
@pytest.mark.parametrize("input_pos", [1.0, True, torch.tensor(1), torch.tensor([1.0, 1.0]), torch.tensor([[1], [1]]),
                                       torch.tensor([1, 1, 1])])
def test_a_cache_position_that_is_no_int_nor_one_per_row_is_one_clear_line(name, input_pos):
    """These failed deep in the cache or the position table with torch's bare errors; True was taken as position 1."""
    net = model(name)
    cache = net.new_cache(2, 8)
    net(random_ids(2, 1), cache=cache)
    with pytest.raises(ValueError, match=r"input_pos must be an int .* or an integer tensor of shape \(B,\)=\(2,\)"):
        net(random_ids(2, 1), cache=cache, input_pos=input_pos)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
def test_a_numpy_int_cache_position_is_that_int(name):
    net = model(name)
    ids = random_ids(2, 4)
    want = net(ids).logits[:, -1]
    cache = net.new_cache(2, 8)
    net(ids[:, :3], cache=cache)
    for pos in (np.int64(3), torch.tensor([3, 3]), torch.tensor([3, 3], dtype=torch.int32)):
        torch.testing.assert_close(net(ids[:, 3:], cache=cache, input_pos=pos).logits[:, -1], want, atol=1e-5, rtol=0)


def test_rope_positions_may_go_past_block_size_with_a_longer_cache():
    net = model("llama-gqa")
    cache = net.new_cache(1, 64)
    assert net(random_ids(1, 2), cache=cache, input_pos=50).logits.isfinite().all()


@pytest.mark.parametrize("targets", [torch.ones(4, 2, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)])
def test_targets_of_another_shape_are_refused(targets):
    """(4, 2) against ids (2, 4) has the same number of elements: flattened, it would pair the wrong tokens."""
    with pytest.raises(ValueError, match=r"targets must have the shape of input_ids \(2, 4\)"):
        model("gpt2")(random_ids(2, 4), targets=targets)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("value, match", [
    (VOCAB, f"targets must be in \\[0, vocab_size={VOCAB}\\), or -100 where ignored, got {VOCAB}"),
    (-5, "targets must be in .* got -5"),
    (1.0, "targets must be integer ids .* got a torch.float32 tensor"),
])
def test_targets_outside_the_vocabulary_or_not_ids_are_one_clear_line(value, match, training):
    """They were the loss's bare "Target 96 is out of bounds" or "expected target dtype to be Long or Byte"."""
    net = DecoderLM(config("gpt2")).train(training)
    targets = torch.full((2, 4), -100, dtype=torch.long if isinstance(value, int) else torch.float32)
    targets[1, 2] = value
    with pytest.raises(ValueError, match=match):
        net(random_ids(2, 4), targets=targets)


def test_int32_targets_give_the_loss_of_int64_ones():
    net = model("llama-gqa")
    ids = random_ids(2, 5)
    targets = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    torch.testing.assert_close(net(ids, targets=targets.int()).loss, net(ids, targets=targets).loss, atol=0, rtol=0)


@pytest.mark.parametrize("ids", [torch.tensor([1, 2, 3]), torch.ones(1, 3), [[1, 2, 3]]])
def test_input_ids_must_be_an_integer_matrix(ids):
    with pytest.raises(ValueError, match=r"input_ids must be an integer tensor of shape \(B, T\)"):
        model("gpt2")(ids)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "alibi"])
def test_position_ids_of_one_row_or_one_dimension_broadcast_and_others_are_refused(name):
    """(T,) crashed a RoPE model with a bare size mismatch; transformers takes it as (1, T)."""
    net, ids = model(name), random_ids(2, 6)
    want = net(ids).logits
    for positions in (torch.arange(6), torch.arange(6)[None], torch.arange(6)[None].expand(2, 6)):
        torch.testing.assert_close(net(ids, position_ids=positions).logits, want)
    for bad in (torch.arange(5), torch.arange(12).view(2, 1, 6), torch.arange(18).view(3, 6)):
        with pytest.raises(ValueError, match=r"position_ids must have shape \(B, T\)=\(2, 6\), \(1, T\) or \(T,\)"):
            net(ids, position_ids=bad)


@pytest.mark.parametrize("name", ["gpt2", "alibi"])
def test_empty_input_ids_are_refused(name):
    """T = 0 gave empty logits and a NaN loss (ALiBi with a cache: a bare error from torch.max), where the encoder
    refuses it."""
    net, empty = model(name), torch.zeros(2, 0, dtype=torch.long)
    with pytest.raises(ValueError, match="input_ids is empty: need at least one token per row"):
        net(empty, targets=empty)
    with pytest.raises(ValueError, match="input_ids is empty"):
        net(empty, cache=net.new_cache(2), input_pos=3)


def test_ids_outside_the_vocabulary_are_one_clear_error():
    """Another tokenizer's ids were an IndexError from inside the embedding."""
    net = model("gpt2")
    bad = torch.tensor([[1, net.config.vocab_size + 3]])
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, vocab_size=\d+\), got values in \[1, \d+\]"):
        net(bad)


@pytest.mark.parametrize("keep", [-2, 1.0, True])
def test_logits_to_keep_must_be_a_count(keep):
    """-2 sliced off the first two positions and returned T - 2 rows of logits, silently."""
    with pytest.raises(ValueError, match=r"logits_to_keep=.*: must be an int >= 0 \(the last N positions; 0 = all\)"):
        model("gpt2")(random_ids(2, 6), logits_to_keep=keep)


def test_logits_to_keep_with_targets_is_refused():
    """The loss met (B, 1) logits against (B, T) targets: torch's batch-size error named neither argument."""
    ids = random_ids(2, 6)
    with pytest.raises(ValueError, match="logits_to_keep=1 with targets: the loss needs the logits of every position"):
        model("gpt2")(ids, targets=ids, logits_to_keep=1)


def test_a_training_forward_on_the_cpu_names_ids_outside_the_vocabulary():
    """The check ran in eval mode only: a user's own training loop on the CPU (where it costs no host sync) got
    torch's bare 'IndexError: index out of range in self' for another tokenizer's ids."""
    lm = DecoderLM(config("gpt2")).train()
    ids = random_ids(1, 4)
    ids[0, 2] = VOCAB + 5
    with pytest.raises(ValueError, match=rf"input_ids must be in \[0, vocab_size={VOCAB}\)"):
        lm(ids, targets=ids)


def test_float_position_ids_into_a_table_are_one_clear_line():
    """They were torch's "Expected tensor for argument #1 'indices' to have one of the following scalar types"."""
    ids = random_ids(2, 5)
    with pytest.raises(ValueError, match=r"position_ids must be an integer \(int64 or int32\) tensor, got torch.float"):
        model("gpt2")(ids, position_ids=torch.arange(5.0))
    torch.testing.assert_close(model("gpt2")(ids, position_ids=torch.arange(5, dtype=torch.int32)).logits,
                               model("gpt2")(ids).logits)


@pytest.mark.parametrize("name", ["gpt2", "alibi"])
@pytest.mark.parametrize("hide", [float("-inf"), -10000.0])
def test_an_additive_float_attention_mask_is_refused(name, hide):
    """A float mask is read as 1/0: an additive one (0 = attend) hid every real token and attended to the padding,
    silently wrong logits."""
    net = model(name)
    ids = random_ids(2, 6)
    additive = torch.zeros(2, 6)
    additive[1, :2] = hide
    with pytest.raises(ValueError, match=r"attention_mask must hold 1 for real tokens and 0 for padding.*additive"):
        net(ids, attention_mask=additive)
    with pytest.raises(ValueError, match="attention_mask must hold 1"):
        net(ids[:, :1], attention_mask=additive, cache=net.new_cache(2), input_pos=5)


@pytest.mark.parametrize("name", ["gpt2", "alibi", "llama-gqa"])
@torch.no_grad()
def test_bool_int_and_float_attention_masks_are_one_mask(name):
    """1/0 in any dtype (a tokenizer's int64, bool, a float 1.0/0.0), also in a bf16 model."""
    ids = random_ids(2, 8, seed=3)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    for net in (model(name), DecoderLM(config(name)).eval().to(torch.bfloat16)):
        want = net(ids, attention_mask=mask, position_ids=pos).logits
        for other in (mask.bool(), mask.int(), mask.float(), mask.bfloat16()):
            torch.testing.assert_close(net(ids, attention_mask=other, position_ids=pos).logits, want, atol=0, rtol=0)
