"""The token cache on a disk that fills up while it is written."""

import builtins
import os
import tracemalloc

import pytest

from neurallayers.data import datasets
from neurallayers.data.corpora import TextCorpus
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.files import WriteError


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_a_disk_that_fills_up_while_tokens_are_written_says_so(tmp_path, monkeypatch):
    # ndarray.tofile's error carries no errno: the one line read "(50049 requested and 48252 written)", not why.
    def full_tokens(path, mode="r", *args, **kwargs):
        path = "/dev/full" if str(path).endswith("all.bin") else path  # every write there fails with ENOSPC
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(datasets, "open", full_tokens, raising=False)
    tok = Tokenizer.train_char(["ab \n"])
    with pytest.raises(WriteError, match=r"cannot write the cache in .*\(No space left on device\)"):
        datasets.prepare_tokens(TextCorpus(["ab " * 50_000]), tok, tmp_path / "cache", show_progress=False)
    assert os.listdir(tmp_path / "cache") == []  # the build folder is removed


def test_memory_per_document_stays_small_for_a_corpus_of_many_records(tmp_path, monkeypatch):
    # A list of (name, start, length), the names sorted by hash and one array view per piece: ~800 bytes a document
    # beyond the tokens, GBs for a JSON-lines corpus of millions of records.
    monkeypatch.setattr(datasets, "_BATCH_CHARS", 10_000)  # the tokenizer's batches stay small: what is left is ours
    n = 40_000
    corpus = TextCorpus([f"record {i % 97}\n" for i in range(n)])
    tok = Tokenizer.train_char(["record 0123456789\n"])
    tracemalloc.start()
    try:
        data = datasets.prepare_tokens(corpus, tok, tmp_path / "cache", show_progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data.meta["pieces"] == n and data.meta["val_pieces"] == n // 10
    assert peak < 200 * n, f"{peak / n:.0f} bytes a document"
