"""What a decoder may see: no future token (a hypothesis property over every architecture), no padding, and no
ignored label in the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from nl_model_helpers import CONFIGS, VOCAB, config, model, random_ids

from neurallayers.models.decoder import DecoderLM

ATOL = 1e-5


@st.composite
def edits(draw):
    """A token sequence, a position in it and a different token to put there."""
    ids = draw(st.lists(st.integers(0, VOCAB - 1), min_size=2, max_size=40))
    pos = draw(st.integers(0, len(ids) - 1))
    new = draw(st.integers(0, VOCAB - 2))
    return ids, pos, new if new < ids[pos] else new + 1  # never the token already there


@pytest.mark.parametrize("name", list(CONFIGS))
@settings(max_examples=15, deadline=None, derandomize=True)
@given(edit=edits())
def test_changing_a_future_token_changes_no_earlier_logit(name, edit):
    ids, pos, new = edit
    net = model(name)
    changed = list(ids)
    changed[pos] = new
    with torch.no_grad():
        a = net(torch.tensor([ids])).logits[0]
        b = net(torch.tensor([changed])).logits[0]
    torch.testing.assert_close(a[:pos], b[:pos], atol=ATOL, rtol=0)
    assert not torch.allclose(a[pos], b[pos], atol=1e-4), "the edited position itself must see its token"


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_left_padding_is_invisible(name):
    """A left-padded row with attention_mask and position ids gives its real tokens the unpadded logits,
    whatever the padding holds."""
    net = model(name)
    ids = random_ids(1, 9, seed=1)
    alone = net(ids).logits
    for pad_len, fill in ((3, 0), (3, 17), (7, 5)):
        padded = torch.cat((torch.full((1, pad_len), fill), ids), dim=1)
        mask = torch.cat((torch.zeros(1, pad_len, dtype=torch.long), torch.ones_like(ids)), dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = net(padded, attention_mask=mask, position_ids=pos).logits
        torch.testing.assert_close(out[:, pad_len:], alone, atol=ATOL, rtol=0)
        assert torch.isfinite(out).all()  # padding queries see themselves, so no NaN anywhere


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_right_padded_rows_equal_each_row_alone(name):
    """Rows of lengths 20, 13 and 6 right-padded with an attention_mask give each row's own logits: dynamic NTK took
    the padded width for every row's length (its base grows past 8 positions here). So does the same prefill into a
    cache at one start per row (a (B,) input_pos), where dynamic NTK still took the padded width."""
    net = model(name)
    lens = [20, 13, 6]
    ids = random_ids(3, 20, seed=5)
    mask = (torch.arange(20)[None] < torch.tensor(lens)[:, None]).long()
    out = net(ids.masked_fill(mask == 0, 0), attention_mask=mask).logits
    for r, n in enumerate(lens):
        torch.testing.assert_close(out[r, :n], net(ids[r:r + 1, :n]).logits[0], atol=ATOL, rtol=0)
    for static in (False, True):
        cached = net(ids.masked_fill(mask == 0, 0), attention_mask=mask, cache=net.new_cache(3, 20, static=static),
                     input_pos=torch.zeros(3, dtype=torch.long)).logits
        torch.testing.assert_close(cached[mask.bool()], out[mask.bool()], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "alibi", "sliding-window"])
@torch.no_grad()
def test_a_row_of_padding_alone_stays_finite_and_leaves_the_other_rows_alone(name):
    """A row whose attention_mask is all 0 (a batch's empty slot): every query sees only itself, in both kernels, so
    its logits are finite and the sdpa and eager models agree on them, and the real row beside it is its own."""
    net = model(name)
    eager = DecoderLM(config(name, attention="eager")).eval()
    eager.load_state_dict(net.state_dict())
    ids = random_ids(2, 9, seed=6)
    mask = torch.ones_like(ids)
    mask[1] = 0
    out = net(ids, attention_mask=mask).logits
    assert torch.isfinite(out).all()
    torch.testing.assert_close(eager(ids, attention_mask=mask).logits, out, atol=ATOL, rtol=0)
    torch.testing.assert_close(out[0], net(ids[:1]).logits[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "alibi"])
@torch.no_grad()
def test_masked_keys_inside_the_sequence_are_ignored(name):
    """A 0 in attention_mask hides that key from every later query (not only leading padding)."""
    net = model(name)
    ids = random_ids(1, 10, seed=2)
    mask = torch.ones_like(ids)
    mask[0, 4] = 0
    other = ids.clone()
    other[0, 4] = (other[0, 4] + 1) % VOCAB
    a = net(ids, attention_mask=mask).logits
    b = net(other, attention_mask=mask).logits
    keep = [i for i in range(10) if i != 4]
    torch.testing.assert_close(a[:, keep], b[:, keep], atol=ATOL, rtol=0)
    assert not torch.allclose(net(ids).logits[:, 5:], a[:, 5:], atol=1e-4), "the mask must change something"


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
def test_ignored_labels_do_not_count(name):
    net = model(name)
    ids = random_ids(3, 12, seed=3)
    targets = random_ids(3, 12, seed=4)
    targets[0, :5] = -100
    targets[1, 7:] = -100
    targets[2, ::2] = -100
    out = net(ids, targets=targets)
    kept = targets != -100
    want = F.cross_entropy(out.logits[kept].float(), targets[kept])
    torch.testing.assert_close(out.loss, want, atol=1e-6, rtol=0)
    # what the ignored positions would have been changes nothing
    other = torch.where(kept, targets, -100)
    assert torch.equal(net(ids, targets=other).loss, out.loss)
    # and the mean is over kept tokens only, not over all positions
    full = F.cross_entropy(out.logits.flatten(0, 1).float(), torch.where(kept, targets, 0).flatten(), reduction="none")
    assert not torch.isclose(out.loss, full.mean())
    one = torch.full_like(targets, -100)
    one[1, 3] = targets[1, 3]
    torch.testing.assert_close(net(ids, targets=one).loss, F.cross_entropy(out.logits[1, 3:4].float(),
                                                                          targets[1, 3:4]), atol=1e-6, rtol=0)
