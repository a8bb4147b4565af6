"""Where a text without a newline between two words is cut into pieces for a GPT-2 style tokenizer: before the
whitespace after a word, which starts a pre-token there. It was after a newline, which GPT-2's split joins with the
whitespace beside it ("\\n  " before an indented line, "\\r\\n" or "\\n\\n" at a piece's end): other ids than the
whole text's."""

import json

import pytest

from neurallayers.data.corpora import load_corpus
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
