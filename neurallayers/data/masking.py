"""BERT's masking for masked-LM training, reproducible from (seed, stream, index) alone.

Each token that is not a special token is selected with probability `prob`; a selected token is replaced by the
mask token 80% of the time, by a random token 10% of the time, and kept 10% of the time (Devlin et al. 2019, as
transformers' DataCollatorForLanguageModeling does). The labels hold the original id at selected positions and
-100 elsewhere. Like `RandomWindows.batch(n)`, the masks of batch n come from a fresh generator seeded by
(seed, stream, n): a resumed run masks its batches exactly as the uninterrupted run did, and validation masks
(stream EVAL) are the same at every evaluation.
"""

from __future__ import annotations

import numpy as np
import torch

TRAIN, EVAL = 0, 1  # generator streams: training batches and evaluation windows draw independent masks
MASK_RATE, RANDOM_RATE = 0.8, 0.1  # of the selected tokens: masked, replaced by a random token (the rest kept)


class Masker:
    """Masks batches of token ids for masked-LM training.

    Args:
        mask_id: The mask token's id.
        vocab_size: Random replacements are drawn from [0, vocab_size) minus the special ids.
        special_ids: Ids never selected (eos separators, padding, the mask token itself, ...).
        prob: Share of the other tokens selected for prediction, in (0, 1).
        seed: Seeds every batch together with its stream and index.
    """

    def __init__(self, *, mask_id: int, vocab_size: int, special_ids: list[int] | tuple[int, ...] = (),
                 prob: float = 0.15, seed: int = 0) -> None:
        if not 0 < prob < 1:
            raise ValueError(f"prob={prob}: the share of tokens to mask must be in (0, 1)")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed={seed!r}: must be an int >= 0")  # numpy refused it only at the first batch
        if not 0 <= mask_id < vocab_size:
            raise ValueError(f"mask_id={mask_id} is outside the vocabulary [0, {vocab_size})")
        self.mask_id, self.vocab_size, self.prob, self.seed = mask_id, vocab_size, prob, seed
        self.special_ids = np.array(sorted({*special_ids, mask_id}), dtype=np.int64)
        self.replacements = np.setdiff1d(np.arange(vocab_size), self.special_ids)
        if len(self.replacements) == 0:
            raise ValueError("every id of the vocabulary is special: nothing to predict")

    @classmethod
    def for_tokenizer(cls, tokenizer: object, *, prob: float = 0.15, seed: int = 0) -> Masker:
        """A Masker over `tokenizer`'s vocabulary, its mask token and its special tokens."""
        if tokenizer.mask_id is None:
            raise ValueError("masked-LM needs a mask token ([MASK] or <mask>) in the tokenizer; "
                             "Tokenizer.with_mask_token() adds one")
        return cls(mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size, special_ids=tokenizer.special_ids,
                   prob=prob, seed=seed)

    def __call__(self, ids: torch.Tensor, index: int, *, stream: int = TRAIN) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) for the (B, T) int64 batch `ids`, number `index` of `stream`.

        At least one token per row (window) is selected when the row has any that is not special, so the loss is
        defined for every slice of rows (each process's share of a batch, under DDP).
        """
        if not isinstance(ids, torch.Tensor):  # a numpy batch was "'numpy.ndarray' object has no attribute ..."
            raise ValueError(f"ids must be a (B, T) torch tensor of integer ids, got {type(ids).__name__}")
        if ids.ndim != 2 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"ids must be (B, T) integer ids, got a {ids.dtype} tensor of shape {tuple(ids.shape)}")
        if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
            raise ValueError(f"index={index!r}: must be an int >= 0")  # a tensor was a TypeError from numpy's seeding
        rng = np.random.Generator(np.random.PCG64([self.seed, stream, index]))
        x = ids.numpy()
        if x.size and (x.min() < 0 or x.max() >= self.vocab_size):  # another tokenizer's ids: labels past the head
            raise ValueError(f"ids must be in [0, vocab_size={self.vocab_size}), got values in [{x.min()}, {x.max()}]")
        eligible = ~np.isin(x, self.special_ids)
        selected = (rng.random(x.shape) < self.prob) & eligible
        how = rng.random(x.shape)
        random_ids = self.replacements[rng.integers(0, len(self.replacements), size=x.shape)]
        empty = ~selected.any(axis=1) & eligible.any(axis=1)
        if empty.any():  # one of such a row's tokens at random (drawn last: the other rows keep their masks)
            pick = np.where(eligible, rng.random(x.shape), -1.0).argmax(axis=1)
            selected[np.flatnonzero(empty), pick[empty]] = True
        inputs = np.where(selected & (how < MASK_RATE), self.mask_id, x)
        inputs = np.where(selected & (how >= MASK_RATE) & (how < MASK_RATE + RANDOM_RATE), random_ids, inputs)
        labels = np.where(selected, x, -100)
        return torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(labels.astype(np.int64))
