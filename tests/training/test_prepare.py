"""DataConfig.split: "tail" cuts the token stream by position (nanoGPT's 90/10 split of one text file), the default
"documents" sends whole ~50k-character pieces to validation by a seeded hash."""

import dataclasses
import random

import pytest

from neurallayers import ModelConfig
from neurallayers.training import DataConfig, RunConfig, TrainConfig
from neurallayers.training.prepare import prepare_data


def _run(tmp_path, source, split, val_fraction=0.1):
    data = DataConfig(
        source=str(source), tokenizer="char", split=split, val_fraction=val_fraction, cache_dir=str(tmp_path / "cache")
    )
    return RunConfig(
        model=ModelConfig(vocab_size=64, block_size=8, n_layer=1, n_head=1, n_embd=8),
        train=TrainConfig(seed=3),
        data=data,
    )


def test_tail_split_is_the_last_fraction_of_the_text(tmp_path):
    rng = random.Random(0)
    # twelve pieces of ~50k characters (with three, too few for 10%, "documents" too splits by position)
    text = "".join(rng.choice("abcdefgh \n") for _ in range(600_000))
    (tmp_path / "a.txt").write_text(text)
    tok, tail, _ = prepare_data(_run(tmp_path, tmp_path / "a.txt", "tail"))
    n_val = len(tail.val)
    assert len(tail.train) + n_val == len(text) + 1  # + the eos after the document
    assert n_val == round(0.1 * (len(text) + 1))
    assert tok.decode(tail.train.tolist()) == text[: len(tail.train)]
    assert tok.decode(tail.val[:-1].tolist()) == text[len(tail.train) :] and tail.val[-1] == tok.eos_id
    _, pieces, _ = prepare_data(_run(tmp_path, tmp_path / "a.txt", "documents"))
    assert pieces.meta["pieces"] == tail.meta["pieces"] == 12 and tail.meta["split"] == "tail"
    assert tok.decode(pieces.val.tolist()) != tok.decode(tail.val.tolist())


def test_tail_split_keeps_a_folders_documents_in_order_each_ending_with_eos(tmp_path):
    """The tail split joined a folder's documents with newlines into one: one eos for three documents, where the
    README says each document ends with one (as the documents split gives them)."""
    (tmp_path / "docs").mkdir()
    bodies = ["first file\n" * 50, "second file\n" * 50, "third\n" * 50]
    for i, body in enumerate(bodies):
        (tmp_path / "docs" / f"{i + 1}.txt").write_text(body)
    tok, tokens, _ = prepare_data(_run(tmp_path, tmp_path / "docs", "tail", val_fraction=0.2))
    ids = tokens.train.tolist() + tokens.val.tolist()
    ends = [i for i, t in enumerate(ids) if t == tok.eos_id]
    assert len(ends) == 3 and ends[-1] == len(ids) - 1
    pieces = [ids[a + 1:b] for a, b in zip([-1, *ends[:-1]], ends, strict=True)]
    assert [tok.decode(p) for p in pieces] == bodies  # in the corpus's order
    assert len(tokens.val) == round(0.2 * len(ids)) and tok.decode(tokens.val[:-1].tolist()).endswith("third\n" * 20)


def test_bad_split_names_the_field():
    with pytest.raises(ValueError, match="DataConfig.split='head'"):
        DataConfig(split="head")


@pytest.mark.parametrize("tokenizer", ["char", "bpe", "gpt2"])
def test_an_empty_corpus_is_named_whatever_the_tokenizer(tmp_path, tokenizer):
    (tmp_path / "empty.txt").write_text("")
    run = _run(tmp_path, tmp_path / "empty.txt", "documents")
    run = dataclasses.replace(run, data=dataclasses.replace(run.data, tokenizer=tokenizer, vocab_size=300))
    with pytest.raises(ValueError, match="corpus '.*empty.txt' has no text to tokenize"):
        prepare_data(run)


def test_a_vocab_size_that_does_not_apply_or_cannot_be_reached_is_said(tmp_path, caplog):
    """data.vocab_size with a char tokenizer was dropped without a word, as was a BPE left smaller than asked."""
    (tmp_path / "a.txt").write_text("to be or not to be " * 200)
    run = _run(tmp_path, tmp_path / "a.txt", "documents")
    with caplog.at_level("WARNING", logger="neurallayers"):
        prepare_data(dataclasses.replace(run, data=dataclasses.replace(run.data, vocab_size=300)))
    assert "data.vocab_size=300 is ignored: it sizes a trained BPE" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="neurallayers"):
        tok, _, _ = prepare_data(dataclasses.replace(run, data=dataclasses.replace(run.data, tokenizer="bpe",
                                                                                    vocab_size=1024)))
    assert tok.vocab_size < 1024 and f"the BPE tokenizer has {tok.vocab_size} tokens, not the 1024" in caplog.text


def test_a_cached_masked_lm_tokenizer_gets_the_mask_that_takes_its_space(tmp_path):
    """A BPE cached before <mask> took the space before it (lstrip) is reused by new runs: it gets it on load."""
    import json

    from neurallayers.data import load_corpus
    from neurallayers.training.prepare import build_tokenizer

    (tmp_path / "text.txt").write_text("not to be, that is the question\n" * 200)
    data = DataConfig(source=str(tmp_path / "text.txt"), vocab_size=300, cache_dir=str(tmp_path / "cache"))
    corpus = load_corpus(data.source)
    build_tokenizer(data, corpus, model_vocab=300, mask=True)
    (saved,) = (tmp_path / "cache/tokenizers").glob("*/tokenizer.json")
    spec = json.loads(saved.read_text())
    for token in spec["added_tokens"]:
        token["lstrip"] = False  # as it was cached before
    saved.write_text(json.dumps(spec))
    tok = build_tokenizer(data, corpus, model_vocab=300, mask=True)
    pieces = [tok.decode([i], skip_special_tokens=False) for i in tok.encode("not to <mask>, that")]
    assert pieces[pieces.index("<mask>") - 1] == " to", pieces


def test_a_masked_lm_vocab_size_too_small_for_its_mask_is_named_as_the_field(tmp_path):
    """data.vocab_size=257 passes its check (>= 257), but a masked LM's BPE also holds <mask>: the error was HF-side
    "vocab_size=257 is too small: ... 256 bytes + 2 special tokens = 258", naming neither the field nor the tokens."""
    from neurallayers.data import load_corpus
    from neurallayers.training.prepare import build_tokenizer

    (tmp_path / "text.txt").write_text("not to be, that is the question\n" * 20)
    data = DataConfig(source=str(tmp_path / "text.txt"), vocab_size=257, cache_dir=str(tmp_path / "cache"))
    corpus = load_corpus(data.source)
    with pytest.raises(ValueError, match=r"^DataConfig.vocab_size=257: a masked LM's byte-level BPE needs >= 258 "
                       r"\(256 bytes, '<\|endoftext\|>' and '<mask>'\)"):
        build_tokenizer(data, corpus, model_vocab=300, mask=True)
    assert build_tokenizer(data, corpus, model_vocab=300).vocab_size == 257  # a decoder's holds one special
    tok = build_tokenizer(dataclasses.replace(data, vocab_size=258), corpus, model_vocab=300, mask=True)
    assert tok.vocab_size == 258 and tok.mask_id is not None
