import codecs
import json
import os

import pytest

from neurallayers.data.corpora import (
    BUILTIN_CORPORA,
    Document,
    TextCorpus,
    absolute_spec,
    chunk_document,
    load_corpus,
)


def test_shakespeare():
    corpus = load_corpus("shakespeare")
    docs = list(corpus.documents())
    assert len(docs) == 42 and corpus.name == "shakespeare"
    assert len({d.name for d in docs}) == 42
    assert not any(d.name.endswith("_f") for d in docs)  # First-Folio duplicates left out
    assert any("ROMEO" in d.text for d in docs)
    assert corpus.fingerprint() == load_corpus("shakespeare").fingerprint()


def test_python_stdlib_is_deterministic():
    corpus = load_corpus("python-stdlib")
    names = [doc.name for _, doc in zip(range(50), corpus.documents(), strict=False)]
    assert names == sorted(names) and all(n.endswith(".py") for n in names)
    assert not any(part in ("test", "tests", "site-packages") for n in names for part in n.split("/"))
    assert "os.py" in {f.name for f in corpus.files}
    assert corpus.fingerprint() == load_corpus("python-stdlib").fingerprint()
    assert set(BUILTIN_CORPORA) == {"shakespeare", "python-stdlib"}


def test_text_file_folder_and_glob(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee\n")
    (tmp_path / "a.md").write_text("# a\n")
    (tmp_path / "sub" / "c").write_text("sea\n")
    (tmp_path / ".hidden").write_text("secret\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01binary")

    single = load_corpus(tmp_path / "b.txt")
    assert [(d.name, d.text) for d in single.documents()] == [("b.txt", "bee\n")]

    folder = load_corpus(str(tmp_path))
    assert [d.name for d in folder.documents()] == ["a.md", "b.txt", "sub/c"]

    pattern = load_corpus(str(tmp_path / "**" / "*"))
    assert [d.name for d in pattern.documents()] == ["a.md", "b.txt", "sub/c"]
    only_txt = load_corpus(str(tmp_path / "*.txt"))
    assert [d.text for d in only_txt.documents()] == ["bee\n"]


def test_fingerprint_changes_with_content(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\n")
    before = load_corpus(tmp_path).fingerprint()
    path.write_text("one two\n")
    assert load_corpus(tmp_path).fingerprint() != before
    assert TextCorpus(["x"]).fingerprint() != TextCorpus(["y"]).fingerprint()


def test_jsonl(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"text": "first"}) + "\n\n" + json.dumps({"body": "second", "text": "2nd"}) + "\n")
    assert [(d.name, d.text) for d in load_corpus(path).documents()] == [("data.jsonl:1", "first"),
                                                                        ("data.jsonl:3", "2nd")]
    other = tmp_path / "other.ndjson"
    other.write_text(json.dumps({"body": "b1"}) + "\n" + json.dumps({"body": "b2"}) + "\n")
    assert [d.text for d in load_corpus(other, text_field="body").documents()] == ["b1", "b2"]


def test_jsonl_missing_field_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "ok"}\n{"content": "no text here"}\n')
    with pytest.raises(ValueError, match=r"data.jsonl:2: no string field 'text' \(found \['content'\]\)"):
        list(load_corpus(path).documents())
    path.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(ValueError, match=r"data.jsonl:2: invalid JSON"):
        list(load_corpus(path).documents())


def test_chunk_document_cuts_at_lines():
    text = "".join(f"line {i}\n" for i in range(1000))
    pieces = chunk_document(Document("big", text), 500)
    assert len(pieces) > 10 and "".join(p.text for p in pieces) == text
    assert all(p.text.endswith("\n") for p in pieces) and pieces[0].name == "big#0"
    assert chunk_document(Document("small", "tiny"), 500) == [Document("small", "tiny")]
    assert len(chunk_document(Document("one-line", "x" * 2000), 500)) == 1  # no newline to cut at


def test_chunk_document_cuts_a_long_line_before_a_word():
    line = " ".join(f"word{i}" for i in range(1000)) + "\n"  # one line of 8,890 characters
    pieces = chunk_document(Document("text8", line + "short\n" * 10), 500)
    assert len(pieces) > 10 and "".join(p.text for p in pieces) == line + "short\n" * 10
    assert all(p.text.startswith(" word") for p in pieces[1:-1]) and all(len(p.text) <= 1000 for p in pieces)
    # a line up to twice the piece size is still cut only at its end (between two words: after "b \n" the cut gave
    # GPT-2 tokens " \n" where the text has " " and "\n")
    line = "a b " * 199 + "a b\n"
    assert [p.text for p in chunk_document(Document("d", line + "c\n"), 500)] == [line, "c\n"]


def test_bad_specs(tmp_path):
    with pytest.raises(FileNotFoundError, match="built-in corpus.*shakespeare"):
        load_corpus("no-such-corpus")
    with pytest.raises(FileNotFoundError, match="matches no files"):
        load_corpus(str(tmp_path / "*.nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no text files"):
        load_corpus(tmp_path / "empty")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        [d.text for d in load_corpus(tmp_path / "latin1.txt").documents()]  # read when its text is
    with pytest.raises(TypeError):
        TextCorpus("a single string")


def test_fingerprint_samples_the_content(tmp_path):
    # Same name, size and mtime (`touch -d`, unpacked archives): only the bytes differ.
    for folder, text in (("a", "abc\n"), ("b", "xyz\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "data.txt").write_text(text)
        os.utime(tmp_path / folder / "data.txt", ns=(1_700_000_000_000_000_000,) * 2)
    a, b = load_corpus(tmp_path / "a"), load_corpus(tmp_path / "b")
    assert a.fingerprint() != b.fingerprint()
    big = tmp_path / "big.txt"  # an edit at the end of a big file that keeps its size and mtime
    big.write_text("x" * 500_000 + "1\n")
    before, st = load_corpus(big).fingerprint(), os.stat(big)
    big.write_text("x" * 500_000 + "2\n")
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_corpus(big).fingerprint() != before
    assert a.fingerprint() == load_corpus(tmp_path / "a").fingerprint()


def test_symlinked_folders_are_read_once(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.txt").write_text("a\n")
    (tmp_path / "b.txt").write_text("b\n")
    try:
        (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
        (tmp_path / "real" / "loop").symlink_to(tmp_path / "real", target_is_directory=True)
    except OSError:
        pytest.skip("no symlinks here")
    # Each real file once, under the first of its names in sorted order.
    assert [d.name for d in load_corpus(tmp_path).documents()] == ["alias/a.txt", "b.txt"]
    assert [d.name for d in load_corpus(str(tmp_path / "**" / "*.txt")).documents()] == ["alias/a.txt", "b.txt"]


def test_utf16_and_utf32_files_are_text(tmp_path):
    text = "héllo 日本\r\nwörld\n"  # PowerShell's `>` writes UTF-16 LE with a BOM, and CRLF
    (tmp_path / "le16.txt").write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    (tmp_path / "be16.txt").write_bytes(codecs.BOM_UTF16_BE + text.encode("utf-16-be"))
    (tmp_path / "le32.txt").write_bytes(codecs.BOM_UTF32_LE + text.encode("utf-32-le"))
    (tmp_path / "utf8.txt").write_bytes(text.encode())
    want = ["héllo 日本\nwörld\n"] * 4  # newlines as for a UTF-8 file
    assert [d.text for d in load_corpus(tmp_path).documents()] == want
    assert [d.text for d in load_corpus(str(tmp_path / "*.txt")).documents()] == want
    assert [d.text for d in load_corpus(tmp_path / "le16.txt").documents()] == want[:1]


def test_file_name_that_is_not_utf8(tmp_path):
    name = os.fsdecode(b"caf\xe9.txt")
    try:
        (tmp_path / name).write_text("x\n")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes UTF-8 names only")
    corpus = load_corpus(tmp_path)
    assert [d.name for d in corpus.documents()] == [name]
    assert corpus.fingerprint() == load_corpus(tmp_path).fingerprint()


def test_jsonl_encoding_errors_name_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')  # Latin-1
    with pytest.raises(ValueError, match=r"data.jsonl:2: not UTF-8 .*convert the file to UTF-8"):
        list(load_corpus(path).documents())
    path.write_text('{"text": "ok"}\n{"text": "cut emoji \\ud83d"}\n')  # valid JSON, not valid Unicode
    with pytest.raises(ValueError, match=r"data.jsonl:2: 'text' contains a lone surrogate \(U\+D83D\), which is not"):
        list(load_corpus(path).documents())


def test_utf8_bom_is_not_text(tmp_path):
    (tmp_path / "a.txt").write_bytes(codecs.BOM_UTF8 + b"abc\n")
    (tmp_path / "b.jsonl").write_bytes(codecs.BOM_UTF8 + b'{"text": "def"}\n')
    assert [d.text for d in load_corpus(tmp_path).documents()] == ["abc\n", "def"]


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "small.txt").write_text("hi\n")
    assert [d.text for d in load_corpus("~/small.txt").documents()] == ["hi\n"]
    assert [d.text for d in load_corpus("~/*.txt").documents()] == ["hi\n"]
    assert absolute_spec("~/small.txt") == str(tmp_path / "small.txt")


def test_an_encoding_error_after_a_utf8_bom_names_the_files_byte(tmp_path):
    """UTF-8 with a BOM is decoded after the BOM, so the error counted 3 bytes short: "at byte 3" sent the user to the
    "a" of "abc", not to the bad byte 0xFF at 6 (of the file, and of a JSON-lines file's first line)."""
    (tmp_path / "a.txt").write_bytes(codecs.BOM_UTF8 + b"abc\xffdef\n")
    with pytest.raises(ValueError, match=r"a.txt' is not UTF-8 \(invalid start byte at byte 6\)"):
        _ = next(load_corpus(tmp_path / "a.txt").documents()).text
    (tmp_path / "b.jsonl").write_bytes(codecs.BOM_UTF8 + b'{"t": "\xff"}\n')
    with pytest.raises(ValueError, match=r"b.jsonl:1: not UTF-8 \(invalid start byte at byte 10 of the line\)"):
        list(load_corpus(tmp_path / "b.jsonl", text_field="t").documents())
    (tmp_path / "c.jsonl").write_bytes(b'{"t": "ok"}\n{"t": "\xff"}\n')  # no BOM: counted from the line's start
    with pytest.raises(ValueError, match=r"c.jsonl:2: not UTF-8 \(invalid start byte at byte 7 of the line\)"):
        list(load_corpus(tmp_path / "c.jsonl", text_field="t").documents())


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16"])
def test_jsonl_lines_end_as_pythons_universal_newlines_end_them(tmp_path, encoding):
    """A file of CR line ends (an old Mac's, some exporters') was one line of "invalid JSON (Extra data)". JSON holds no
    raw CR within a value, so a lone CR ends a record as Python's text reading (the oracle) and editors take it."""
    records = [{"text": "first\r\nline"}, {"text": "second"}, {"text": "caf\u00e9 \U0001f600"}, {"text": "last"}]
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    path = tmp_path / "d.jsonl"
    path.write_bytes((lines[0] + "\r" + lines[1] + "\r\r" + lines[2] + "\r\n" + lines[3] + "\n").encode(encoding))
    with open(path, encoding="utf-16" if encoding == "utf-16" else "utf-8-sig") as f:  # universal newlines
        want = [(f"d.jsonl:{n}", json.loads(line)["text"]) for n, line in enumerate(f, start=1) if line.strip()]
    assert [(d.name, d.text) for d in load_corpus(path).documents()] == want
    assert [name for name, _ in want] == ["d.jsonl:1", "d.jsonl:2", "d.jsonl:4", "d.jsonl:5"]


def test_jsonl_of_cr_line_ends_names_the_line_of_an_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok"}\r{"text": "caf\xe9"}\r')  # Latin-1 on line 2, counted from that line's start
    with pytest.raises(ValueError, match=r"d.jsonl:2: not UTF-8 \(invalid continuation byte at byte 13 of the line\)"):
        list(load_corpus(path).documents())
    path.write_bytes(b'{"text": "ok"}\r{"n": 1}\r')
    with pytest.raises(ValueError, match=r"d.jsonl:2: no string field 'text' \(found \['n'\]\)"):
        list(load_corpus(path).documents())
    path.write_bytes(b'{"text":\r"ok"}\n')  # a record a lone CR runs through is cut there: said so
    with pytest.raises(ValueError, match=r"d.jsonl:1: invalid JSON \(Expecting value\); its line ends at a lone "
                                         r"carriage return \(\\r\)"):
        list(load_corpus(path).documents())


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_record_past_pythons_json_limits_names_its_file_and_line(tmp_path, suffix):
    """Valid JSON that Python's reader stops at (a number of over 4,300 digits, an array nested past its recursion
    limit) was "Exceeds the limit (4300 digits) ...", naming no file, or a RecursionError's traceback."""
    big, deep = '{"text": "b", "n": 1' + "0" * 5000 + "}", '{"text": "b", "m": ' + "[" * 100_000 + "]" * 100_000 + "}"
    for name, record, why in [("big", big, "a number too long"), ("deep", deep, "nested too deeply")]:
        path = tmp_path / f"{name}{suffix}"
        lines = ['{"text": "a"}', record]
        path.write_text("\n".join(lines) + "\n" if suffix == ".jsonl" else "[" + ",\n".join(lines) + "]")
        where = f"{name}.jsonl:2" if suffix == ".jsonl" else f"{name}.json"
        with pytest.raises(ValueError, match=rf"{where}: .*{why} for Python's JSON reader"):
            list(load_corpus(path).documents())
