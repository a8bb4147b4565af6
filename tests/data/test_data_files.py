"""Corpus files as real data comes: JSON saved as .jsonl, and compressed shards, which are not read: each said in
one line, never skipped without a word."""

import bz2
import gzip
import json

import pytest

from neurallayers.data.corpora import load_corpus


def test_a_json_array_saved_as_jsonl_says_so(tmp_path):
    records = [{"text": "first"}, {"text": "second"}]
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(records))  # one line: "no string field 'text' (found list)" hid what was wrong
    with pytest.raises(
        ValueError,
        match=r"d.jsonl:1: a JSON array, not an object with a 'text' field; JSON lines "
        r"holds one object per line.*jq -c",
    ):
        list(load_corpus(path).documents())
    path.write_text(json.dumps(records, indent=2))  # pretty-printed: "invalid JSON (Expecting value)" alone
    with pytest.raises(ValueError, match=r"d.jsonl:1: invalid JSON \(Expecting value\); JSON lines holds one object"):
        list(load_corpus(path).documents())
    path.write_text('{"text": "ok"}\n["a"]\n')  # a stray array further down is not a whole-file mistake
    with pytest.raises(ValueError, match=r"d.jsonl:2: a JSON array, not an object with a 'text' field$"):
        list(load_corpus(path).documents())


def test_a_compressed_file_says_so(tmp_path):
    # "is not UTF-8 (invalid start byte at byte 1); convert it to UTF-8" sent the user looking for the wrong tool.
    (tmp_path / "c4.json.gz").write_bytes(gzip.compress(b'{"text": "hi"}\n'))
    with pytest.raises(
        ValueError,
        match=r"c4.json.gz' is gzip-compressed, and compressed files are not read: "
        "decompress it first",
    ):
        list(load_corpus(tmp_path / "c4.json.gz").documents())
    (tmp_path / "pile.jsonl").write_bytes(bz2.compress(b'{"text": "hi"}\n' * 100))  # named as if plain
    with pytest.raises(ValueError, match=r"pile.jsonl' is bzip2-compressed"):
        list(load_corpus(tmp_path / "pile.jsonl").documents())


def test_a_folder_or_glob_of_compressed_shards_says_so(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):
        (shards / f"part-{i}.jsonl.gz").write_bytes(gzip.compress(b'{"text": "hi"}\n' * 100))
    with pytest.raises(
        ValueError,
        match=r"folder .*shards' holds no text files \(only 3 binary file\(s\): "
        r".*part-0.jsonl.gz' is gzip-compressed, and compressed files are not read",
    ):
        load_corpus(shards)
    # The glob matched three files: "matches no files" was not true.
    with pytest.raises(ValueError, match=r"glob .* matches no text files \(only 3 binary file\(s\): .*gzip-compressed"):
        load_corpus(str(shards / "*.gz"))


def test_compressed_files_skipped_beside_text_are_warned_of(tmp_path, caplog):
    # A README beside the shards: training on the README alone, silently, was the result.
    (tmp_path / "README.md").write_text("about the data\n")
    (tmp_path / "part-0.jsonl.gz").write_bytes(gzip.compress(b'{"text": "hi"}\n' * 100))
    (tmp_path / "image.bin").write_bytes(b"\0\1\2")  # other binary files are skipped quietly, as before
    for spec in (str(tmp_path), str(tmp_path / "*")):
        caplog.clear()
        with caplog.at_level("WARNING", logger="neurallayers"):
            corpus = load_corpus(spec)
        assert [d.name for d in corpus.documents()] == ["README.md"]
        assert "1 compressed file(s) skipped (e.g. " in caplog.text and "part-0.jsonl.gz" in caplog.text
        assert "image.bin" not in caplog.text


def test_a_json_file_is_read_as_records_as_the_datasets_library_reads_it(tmp_path):
    """A .json corpus (Alpaca's array of records, or JSON lines by that name) was one text document: training
    learned the brackets, quotes and field names around the text, and --data.text_field was ignored."""
    records = [{"instruction": "Say hi", "output": "Hi there"}, {"instruction": "Count", "output": "one two"}]
    (tmp_path / "alpaca.json").write_text(json.dumps(records, indent=2))
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    for name in ("alpaca.json", "lines.json"):
        docs = list(load_corpus(tmp_path / name, text_field="output").documents())
        assert [d.text for d in docs] == ["Hi there", "one two"], name
    assert [d.name for d in load_corpus(tmp_path / "alpaca.json", text_field="output").documents()] == [
        "alpaca.json[0]", "alpaca.json[1]"]
    assert len(list(load_corpus(str(tmp_path / "*.json"), text_field="output").documents())) == 4  # a glob too
    with pytest.raises(ValueError, match=r"alpaca.json: item 0: no string field 'text' \(found \['instruction', "):
        list(load_corpus(tmp_path / "alpaca.json").documents())
    (tmp_path / "bad.json").write_text('[{"text": "a"},\n {"text": 3}]')
    with pytest.raises(ValueError, match=r"bad.json: item 1: field 'text' holds a number"):
        list(load_corpus(tmp_path / "bad.json").documents())


def test_json_files_in_a_folder_stay_text(tmp_path):
    """A folder is every text file below it: a code repository's package.json is text to learn, not records."""
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "package.json").write_text('{"name": "x"}\n')
    (tmp_path / "repo" / "a.js").write_text("let a = 1;\n")
    assert [d.text for d in load_corpus(tmp_path / "repo").documents()] == ["let a = 1;\n", '{"name": "x"}\n']
