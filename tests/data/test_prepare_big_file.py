"""The tokenizer `prepare` and `train` build for a corpus of one big file."""

import json
import random

from neurallayers.data.corpora import load_corpus
from neurallayers.data.datasets import CHUNK_CHARS
from neurallayers.data.tokenizers import ENDOFTEXT, Tokenizer
from neurallayers.training import DataConfig
from neurallayers.training.prepare import build_tokenizer


def test_bpe_is_trained_on_pieces_of_a_big_file_into_the_same_tokenizer(tmp_path, monkeypatch):
    # HF's trainer took ~90 bytes a character of a text given whole: 1.8 GB of memory for a 20 MB file.
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 8))) for _ in range(300)]
    lines = [" ".join(rng.choices(words, k=rng.randint(1, 15))) for _ in range(6000)]
    lines.insert(3000, " ".join(rng.choices(words, k=30_000)))  # a line far over a piece
    # indented lines with no clean line end for 100k characters, and punctuation ending in "\x1c" (a space to Python)
    lines.insert(1000, json.dumps([{"id": i, "tags": [rng.choice(words), ".\x1c"]} for i in range(3000)], indent=2))
    text = "\n".join(lines) + "\n"
    (tmp_path / "big.txt").write_text(text)
    longest = []
    train_bpe = Tokenizer.train_bpe.__func__

    def spy(cls, texts, **kwargs):
        texts = list(texts)
        longest.append(max(map(len, texts)))
        return train_bpe(cls, texts, **kwargs)

    monkeypatch.setattr(Tokenizer, "train_bpe", classmethod(spy))
    data = DataConfig(source=str(tmp_path / "big.txt"), vocab_size=400, cache_dir=str(tmp_path / "cache"))
    tok = build_tokenizer(data, load_corpus(data.source), model_vocab=512)
    assert len(longest) == 1 and longest[0] <= 2 * CHUNK_CHARS < len(text) / 2  # pieces, not the text whole
    whole = train_bpe(Tokenizer, [text], vocab_size=400, special_tokens=(ENDOFTEXT,), show_progress=False)
    assert tok.fingerprint() == whole.fingerprint()  # the same words counted: the same merges
