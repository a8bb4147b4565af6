"""Where a text without a newline between two words is cut into pieces for a GPT-2 style tokenizer: before the
whitespace after a word, which starts a pre-token there. It was after a newline, which GPT-2's split joins with the
whitespace beside it ("\\n  " before an indented line, "\\r\\n" or "\\n\\n" at a piece's end): other ids than the
whole text's."""

import json

import pytest

from neurallayers.data import chunking
from neurallayers.data.corpora import chunk_text, load_corpus
from neurallayers.data.datasets import prepare_tokens
from neurallayers.data.tokenizers import Tokenizer

TEXTS = {  # each over twice a piece with no newline between two words
    "pretty-printed JSON": json.dumps([{"id": i, "tags": ["ab", "cd"], "ok": True} for i in range(120)], indent=2),
    "CRLF line ends": "".join(f"line {i} ends here.\r\n" for i in range(300)),
    "blank lines between paragraphs": "".join(f"Paragraph {i} ends.\n\n" for i in range(300)),
}


@pytest.mark.parametrize("kind", ["bpe", "gpt2"])
@pytest.mark.parametrize("name", list(TEXTS))
def test_a_text_without_a_newline_between_words_gets_the_whole_texts_ids(tmp_path, name, kind):
    text = TEXTS[name]
    # a JSON-lines record keeps its "\r\n" (a text file's are read as "\n")
    (tmp_path / "data.jsonl").write_text(json.dumps({"text": text}) + "\n")
    tok = Tokenizer.load("gpt2") if kind == "gpt2" else Tokenizer.train_bpe([text], vocab_size=420, show_progress=False)
    want = tok.hf.encode(text).ids + [tok.eos_id]  # tokenizers, on the whole text
    for chunk_chars in (40, 53, 64):
        data = prepare_tokens(load_corpus(tmp_path / "data.jsonl"), tok, tmp_path / str(chunk_chars), val_fraction=0,
                              chunk_chars=chunk_chars, show_progress=False)
        assert data.meta["pieces"] > 20
        assert data.train.tolist() == want, chunk_chars


def test_where_no_cut_is_safe_a_short_text_stays_whole_and_a_long_one_is_cut_as_before():
    # A tokenizer that merges across every cut (no pre-tokenizer, say): a text within reach is one piece, its ids
    # exact; past that, the pieces end at line ends, as without a check, and never grow without bound.
    short = "word\n\n" * 20  # fewer cuts than are tried
    assert list(chunk_text([short], 10, safe_cut=lambda left, right: False)) == [short]
    text = "".join(f"line {i} of the text.\n\n" for i in range(3 * chunking._CUT_REACH // 20))
    pieces = list(chunk_text([text], 100, safe_cut=lambda left, right: False))
    assert "".join(pieces) == text and len(pieces) > 2
    assert max(map(len, pieces)) <= chunking._CUT_REACH + 200
    assert all(piece.endswith("\n") for piece in pieces)


def test_a_cut_is_checked_on_the_characters_around_it_within_its_piece():
    seen = []

    def safe_cut(left, right):
        seen.append((left, right))
        return not left.endswith(".")  # Llama 3 joins ".\n\n" in one pre-token

    text = "One line ends.\n\nAnd the next\n\none too.\n\nLast" * 3
    pieces = list(chunk_text([text], 10, safe_cut=safe_cut))
    assert "".join(pieces) == text and len(pieces) > 5
    assert not any(piece.endswith(".") for piece in pieces)
    assert seen[0] == ("One line ", text[9 : 9 + chunking._CUT_WINDOW])  # the first cut from max_chars on
    accepted = [(left, right) for left, right in seen if not left.endswith(".")]
    window, at = chunking._CUT_WINDOW, 0
    for piece, (left, right) in zip(pieces, accepted, strict=False):  # within the piece, not before it
        at += len(piece)
        assert (left, right) == (piece[-window:], text[at : at + window])
