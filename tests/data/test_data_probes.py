import os
import stat

import pytest

from neurallayers.data.corpora import TextCorpus, load_corpus
from neurallayers.data.datasets import prepare_tokens
from neurallayers.data.tokenizers import Tokenizer


@pytest.mark.parametrize(("value", "shown"), [("5", r"a number \(5\)"), ("null", "null"),
                                              ("true", r"a boolean \(true\)"), ('{"en": "hi"}', "an object"),
                                              ('["a"]', "an array")])
def test_jsonl_field_of_another_type_says_its_type(tmp_path, value, shown):
    # The field is there: "no string field 'text' (found ['text'])" contradicted itself.
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n{"text": ' + value + "}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"d.jsonl:2: field 'text' holds {shown}, not a string"):
        list(load_corpus(path).documents())


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_token_cache_folder_follows_the_umask(tmp_path):
    # A cache shared by a team (umask 002) must be readable by the others, not private as mkdtemp makes it.
    tok = Tokenizer.train_char(["abc\n"])
    old = os.umask(0o002)
    try:
        data = prepare_tokens(TextCorpus(["abc\n" * 50, "cab\n" * 50]), tok, tmp_path, show_progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(data.path.stat().st_mode) == 0o775


def test_empty_corpus_spec_is_refused(tmp_path, monkeypatch):
    # Path("") is ".": an empty spec (an unset shell variable) read every text file below the working directory.
    (tmp_path / "private.txt").write_text("not a corpus\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="the corpus spec is empty"):
        load_corpus("")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_jsonl_in_utf16_or_utf32_after_its_bom(tmp_path, encoding):
    # As text files are (README: "or UTF-16/32 after their BOM"); PowerShell's `>` writes UTF-16 with CRLF.
    path = tmp_path / "d.jsonl"
    path.write_bytes('{"text": "hé\\r\\nthere"}\r\n\r\n{"text": "😀"}\r\n'.encode(encoding))
    docs = list(load_corpus(path).documents())
    assert [(d.name, d.text) for d in docs] == [("d.jsonl:1", "hé\r\nthere"), ("d.jsonl:3", "😀")]


def test_jsonl_truncated_utf16_says_so(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes('{"text": "a"}\n'.encode("utf-16") + b"{")
    with pytest.raises(ValueError, match=r"d.jsonl' is not UTF-16 \(truncated data\); convert it to UTF-8"):
        list(load_corpus(path).documents())
