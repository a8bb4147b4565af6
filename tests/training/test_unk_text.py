"""A char tokenizer trained on the corpus knows all its characters: the "<unk>" a corpus writes itself (WikiText's
unknown words), which the tokenizer reads as its unk token since that became special, is no sign of a tokenizer
trained on other text (a fresh run said so)."""

from __future__ import annotations

from nl_train_helpers import tiny_run

from neurallayers.training.prepare import prepare_data


def test_a_fresh_char_tokenizer_does_not_blame_itself_for_the_corpus_unk_text(tmp_path, caplog):
    corpus = tmp_path / "wiki.txt"
    corpus.write_text("the <unk> sat on the <unk> mat .\n" * 200)
    with caplog.at_level("WARNING", logger="neurallayers"):
        tokenizer, tokens, _ = prepare_data(tiny_run(tmp_path, corpus=corpus))
    assert tokenizer.token_to_id("<unk>") in set(tokens.train.tolist())  # read as the unk token, as transformers does
    assert "unknown token" not in caplog.text
