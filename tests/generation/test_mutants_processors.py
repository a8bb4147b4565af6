"""Left padding holds a real token id: generate pads its rows with 0, which is a token too. The padding test in
test_gen_processors.py pads with an id no row holds (7 among 0..5), so an n-gram ban that also read the padding's
n-grams passed it; a row ending in the padding's id then had tokens banned that it never repeated."""

from __future__ import annotations

import pytest
import torch

from neurallayers.generation.processors import NoRepeatNGram, RepetitionPenalty


@pytest.mark.parametrize("make", [lambda p: NoRepeatNGram(2, pad_lens=p), lambda p: NoRepeatNGram(3, pad_lens=p),
                                  lambda p: RepetitionPenalty(1.5, pad_lens=p)], ids=["ngram2", "ngram3", "rep"])
def test_padding_with_an_id_the_rows_hold_changes_no_row(make):
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 4, (n,), generator=g) for n in (12, 3, 6, 2)]
    for row in rows:
        row[-2:] = 0  # each row ends in the padding id: its (n-1)-gram matches the padding's n-grams
    scores = torch.randn(len(rows), 8, generator=g)
    width = max(len(r) for r in rows)
    padded = torch.zeros(len(rows), width, dtype=torch.long)  # as generate pads
    for r, row in enumerate(rows):
        padded[r, width - len(row):] = row
    got = make([width - len(r) for r in rows])(padded, scores)
    for r, row in enumerate(rows):
        torch.testing.assert_close(got[r:r + 1], make(None)(row[None], scores[r:r + 1]))
