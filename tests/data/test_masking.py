"""BERT's masking: rates, special tokens, labels, and masks that depend only on (seed, stream, index)."""

import numpy as np
import pytest
import torch

from neurallayers.data import Tokenizer
from neurallayers.data.masking import EVAL, TRAIN, Masker


def test_masks_follow_berts_rates_and_never_touch_special_tokens():
    masker = Masker(mask_id=99, vocab_size=100, special_ids=[0, 1], prob=0.15, seed=5)
    ids = torch.randint(2, 99, (64, 256), generator=torch.Generator().manual_seed(0))
    ids[:, ::16] = 0  # separators
    inputs, labels = masker(ids, 7)
    selected = labels != -100
    assert torch.equal(labels[selected], ids[selected])  # the originals, to predict
    assert torch.equal(inputs[~selected], ids[~selected])  # the rest untouched
    assert not selected[:, ::16].any()  # specials are never selected
    share = selected.float().sum() / (ids != 0).sum()
    assert 0.14 < share < 0.16
    masked = (inputs == 99) & selected
    kept = (inputs == ids) & selected
    randomised = selected & ~masked & ~kept
    n = selected.sum()
    assert 0.78 < masked.sum() / n < 0.82 and 0.08 < randomised.sum() / n < 0.12 and 0.08 < kept.sum() / n < 0.12
    assert not torch.isin(inputs[randomised], torch.tensor([0, 1, 99])).any()  # random tokens are ordinary ones


def test_masks_depend_only_on_seed_stream_and_index():
    masker = Masker(mask_id=9, vocab_size=10, prob=0.3, seed=1)
    ids = torch.randint(0, 9, (4, 32), generator=torch.Generator().manual_seed(0))
    first = masker(ids, 3)
    assert all(torch.equal(a, b) for a, b in zip(first, masker(ids, 3), strict=True))
    reseeded = Masker(mask_id=9, vocab_size=10, prob=0.3, seed=2)
    for other in (masker(ids, 4), masker(ids, 3, stream=EVAL), reseeded(ids, 3)):
        assert not torch.equal(first[1], other[1])
    assert TRAIN != EVAL


def test_every_row_always_has_a_token_to_predict():
    """Each process of a DDP run takes its rows of a batch: a row with nothing to predict made its loss NaN."""
    masker = Masker(mask_id=3, vocab_size=4, special_ids=[0], prob=0.01, seed=0)
    ids = torch.tensor([[0, 2, 1, 2, 1, 2], [2, 0, 1, 1, 2, 1]]).repeat(4, 1)
    picked = set()
    for index in range(20):
        _, labels = masker(ids, index)
        assert ((labels != -100).sum(1) >= 1).all() and (labels[ids == 0] == -100).all()
        picked |= {int(t) for t in (labels[0] != -100).nonzero()[:, 0]}
    assert len(picked) > 2  # a row's forced token is any of its ordinary ones, not always the first
    _, labels = masker(torch.zeros(1, 3, dtype=torch.long), 0)  # only specials: nothing, and no error
    assert (labels == -100).all()


def test_bad_masker_arguments():
    with pytest.raises(ValueError, match="prob=1.0"):
        Masker(mask_id=1, vocab_size=4, prob=1.0)
    with pytest.raises(ValueError, match="mask_id=4 is outside"):
        Masker(mask_id=4, vocab_size=4)
    with pytest.raises(ValueError, match="every id of the vocabulary is special"):
        Masker(mask_id=1, vocab_size=2, special_ids=[0])
    with pytest.raises(ValueError, match="must be \\(B, T\\)"):
        Masker(mask_id=3, vocab_size=4)(torch.zeros(3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="needs a mask token"):
        Masker.for_tokenizer(Tokenizer.train_char(["abc"]))


def test_with_mask_token_adds_one_special_token_that_survives_save_and_load(tmp_path):
    gpt2 = Tokenizer.gpt2()
    assert gpt2.mask_token is None
    tok = gpt2.with_mask_token()
    assert (tok.mask_token, tok.mask_id, tok.vocab_size) == ("<mask>", 50257, 50258)
    assert tok.encode("a <mask> b") == [64, 50257, 275] and tok.decode([50257]) == ""  # the mask takes its space
    assert gpt2.vocab_size == 50257 and tok.with_mask_token() is tok  # the original is untouched; idempotent
    back = Tokenizer.load(tok.save(tmp_path))
    assert (back.mask_id, back.special_ids) == (50257, [50256, 50257])
    bpe = Tokenizer.train_bpe(["some text to train on"] * 5, vocab_size=300, special_tokens=["<|endoftext|>", "<mask>"],
                              show_progress=False)
    assert bpe.mask_id == 1 and bpe.vocab_size <= 300 and bpe.special_ids == [0, 1]
    masker = Masker.for_tokenizer(tok, prob=0.2, seed=0)
    assert masker.mask_id == 50257 and list(masker.special_ids) == [50256, 50257]


def test_a_bad_seed_or_non_integer_ids_are_refused_in_one_line():
    """A negative seed built a Masker that failed at its first batch with numpy's "expected non-negative integer";
    float ids were cast to int silently (5.7 became 5)."""
    with pytest.raises(ValueError, match=r"seed=-1: must be an int >= 0"):
        Masker(mask_id=3, vocab_size=10, seed=-1)
    with pytest.raises(ValueError, match=r"seed=1.5: must be an int >= 0"):
        Masker(mask_id=3, vocab_size=10, seed=1.5)
    masker = Masker(mask_id=3, vocab_size=10, seed=0)
    with pytest.raises(ValueError, match=r"integer ids, got a torch.float32 tensor of shape \(1, 3\)"):
        masker(torch.full((1, 3), 5.7), 0)
    inputs, labels = masker(torch.full((1, 3), 5, dtype=torch.int32), 0)  # any integer dtype
    assert inputs.dtype == labels.dtype == torch.int64


def test_ids_outside_the_vocabulary_or_a_bad_index_are_one_line():
    """Another tokenizer's ids became labels past the head ('IndexError: Target 5000 is out of bounds' at the loss); a
    tensor index was numpy's 'TypeError: len() of a 0-d tensor', a numpy batch an AttributeError."""
    masker = Masker(mask_id=3, vocab_size=10, seed=0)
    with pytest.raises(ValueError, match=r"ids must be in \[0, vocab_size=10\), got values in \[4, 5000\]"):
        masker(torch.tensor([[4, 5000, 5]]), 0)
    with pytest.raises(ValueError, match=r"ids must be in \[0, vocab_size=10\), got values in \[-1, 5\]"):
        masker(torch.tensor([[4, -1, 5]]), 0)
    for index in (torch.tensor(2), 1.5, True):
        with pytest.raises(ValueError, match=r"index=.*: must be an int >= 0"):
            masker(torch.tensor([[4, 5]]), index)
    with pytest.raises(ValueError, match=r"ids must be a \(B, T\) torch tensor of integer ids, got ndarray"):
        masker(np.array([[4, 5]]), 0)
    assert masker(torch.zeros(2, 0, dtype=torch.long), 0)[0].shape == (2, 0)  # nothing to check, nothing to mask
