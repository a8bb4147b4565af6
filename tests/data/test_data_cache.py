"""The token cache against a demanding user's files and disks: edits the cheap fingerprint could miss, and caches
that cannot be written."""

import errno
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest

from neurallayers.__main__ import main
from neurallayers.data.corpora import Corpus, Document, chunk_document, load_corpus
from neurallayers.data.datasets import prepare_tokens
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.files import WriteError


def test_an_edit_in_the_middle_that_keeps_size_and_mtime_rebuilds_the_cache(tmp_path):
    # The fingerprint samples a big file's first and last 64 KiB only: an edit between them, with the mtime put back
    # (`touch -r`, a tool that keeps it), reused the stale tokens.
    path = tmp_path / "big.txt"
    path.write_text("a" * 100_000 + "b" + "a" * 100_000 + "\n")
    tok = Tokenizer.train_char(["abc\n"])
    prepare_tokens(load_corpus(path), tok, tmp_path / "cache", val_fraction=0, show_progress=False)
    st = os.stat(path)
    path.write_text("a" * 100_000 + "c" + "a" * 100_000 + "\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    after = prepare_tokens(load_corpus(path), tok, tmp_path / "cache", val_fraction=0, show_progress=False)
    assert not after.cached and "c" in tok.decode(after.train.tolist())
    again = prepare_tokens(load_corpus(path), tok, tmp_path / "cache", val_fraction=0, show_progress=False)
    assert again.cached and again.path == after.path  # nothing changed since: reused


def test_a_chmod_a_hard_link_or_a_copy_keeping_times_reuses_the_cache(tmp_path):
    # The fingerprint hashed the change time, which these change and no text: each re-tokenized the whole corpus
    # (`chmod -R`, rsnapshot's hard links, `rsync -a` / `cp -a` of the corpus to another disk or node).
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("a.txt", "b.txt"):
        (corpus / name).write_text(f"{name} " * 50_000 + "\n")  # 300 KB: past the 64 KiB a sample once read
    tok = Tokenizer.train_char(["abtx. \n"])

    def prepare(folder):
        return prepare_tokens(load_corpus(folder), tok, tmp_path / "cache", show_progress=False)

    first = prepare(corpus)
    os.chmod(corpus / "a.txt", 0o600)
    os.link(corpus / "b.txt", tmp_path / "b-snapshot.txt")
    assert prepare(corpus).cached
    moved = tmp_path / "elsewhere" / "corpus"
    shutil.copytree(corpus, moved)  # copy2: the same bytes and mtimes, a new change time
    again = prepare(moved)
    assert again.cached and again.path == first.path
    (moved / "b.txt").write_text("b.txt " * 50_000 + "\n")  # rewritten: a new mtime, so read again
    assert not prepare(moved).cached


def test_another_text_field_rebuilds_only_a_corpus_of_records(tmp_path):
    """data.text_field names the records' field; a folder of text files has none, yet another field re-trained the BPE
    tokenizer and re-tokenized the corpus (keyed on the corpus fingerprint, which hashed it): a config made for JSON
    lines, used on text, cost a whole rebuild for the same tokens."""
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("some text\n")
    (tmp_path / "records.jsonl").write_text('{"text": "some text", "body": "other words"}\n')
    tok = Tokenizer.train_char(["some text other words\n"])

    def prepare(spec, field):
        corpus = load_corpus(tmp_path / spec, text_field=field)
        return corpus.fingerprint(), prepare_tokens(corpus, tok, tmp_path / "cache", val_fraction=0,
                                                    show_progress=False)

    (key, first), (other, again) = prepare("text", "text"), prepare("text", "body")
    assert other == key and again.cached and again.path == first.path  # the same text: the same tokens, reused
    (key, first), (other, again) = prepare("records.jsonl", "text"), prepare("records.jsonl", "body")
    assert other != key and not again.cached and tok.decode(again.train.tolist()) == "other words"


@pytest.mark.parametrize("damage", ["cut", "emptied", "meta"])
def test_a_damaged_cache_is_built_again_not_trusted(tmp_path, damage, caplog):
    # A cache copied short (or a disk that filled behind another tool) was trusted: a train.bin cut to an even length
    # trained on a few tokens without a word, an odd one failed with numpy's "not a multiple of the data-type size".
    path = tmp_path / "a.txt"
    path.write_text("abc\n" * 500)
    tok = Tokenizer.train_char(["abc\n"])
    built = prepare_tokens(load_corpus(path), tok, tmp_path / "cache", show_progress=False)
    want = (built.train.tolist(), built.val.tolist())
    if damage == "meta":
        (built.path / "meta.json").write_text('{"train')
    else:
        os.truncate(built.path / "train.bin", 100 if damage == "cut" else 0)
    again = prepare_tokens(load_corpus(path), tok, tmp_path / "cache", show_progress=False)
    assert not again.cached and again.path == built.path and (again.train.tolist(), again.val.tolist()) == want
    assert f"token cache {built.path} is damaged" in caplog.text
    assert prepare_tokens(load_corpus(path), tok, tmp_path / "cache", show_progress=False).cached


def _refuse_mkdir_under(monkeypatch, folder: Path, code: int) -> None:
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if Path(self).is_relative_to(folder):
            raise OSError(code, os.strerror(code), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def test_a_read_only_cache_is_one_line_naming_the_folder(tmp_path, monkeypatch, capsys):
    # A read-only file system (a `:ro` volume) raises EROFS, which is no PermissionError: the CLI showed a traceback.
    cache = tmp_path / "cache"
    _refuse_mkdir_under(monkeypatch, cache, errno.EROFS)
    with pytest.raises(
        WriteError,
        match=rf"cannot write the cache in {cache}/tokens \(Read-only file system\); "
        "set data.cache_dir or NEURALLAYERS_CACHE",
    ):
        prepare_tokens(_Texts(), Tokenizer.train_char(["abc\n"]), cache / "tokens", show_progress=False)
    (tmp_path / "a.txt").write_text("abc\n" * 100)
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(cache))
    code = main(["prepare", "--preset", "tiny", "--data", str(tmp_path / "a.txt"), "--tokenizer", "char"])
    err = capsys.readouterr().err
    assert code == 2 and err == (
        f"neurallayers prepare: error: cannot write the cache in {cache}/tokenizers "
        "(Read-only file system); set data.cache_dir or NEURALLAYERS_CACHE to a writable "
        "folder\n"
    )


def test_a_full_disk_while_building_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match=rf"cannot write the cache in {tmp_path} \(No space left on device\)"):
        prepare_tokens(_Texts(), Tokenizer.train_char(["abc\n"]), tmp_path, show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_corpus_file_that_cannot_be_read_keeps_its_own_error(tmp_path):
    with pytest.raises(PermissionError, match="secret.txt"):
        prepare_tokens(_Texts(fail=True), Tokenizer.train_char(["abc\n"]), tmp_path / "cache", show_progress=False)


class _Texts(Corpus):
    name = "texts"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def documents(self):
        yield Document("a", "abc\n" * 50)
        if self.fail:
            raise PermissionError(errno.EACCES, "Permission denied", "/data/secret.txt")
        yield Document("b", "cab\n" * 50)

    def fingerprint(self) -> str:
        return f"texts-{self.fail}"


@pytest.mark.parametrize("seed", range(4))
def test_a_file_of_two_pieces_gets_its_val_fraction(tmp_path, seed):
    # 60k characters are two pieces (50k and 10k): one of the two went to val, 83% or 17% of the text by the seed.
    path = tmp_path / "notes.txt"
    path.write_text("".join(f"line {i} of my notes\n" for i in range(3_000)))
    tok = Tokenizer.train_char([path.read_text()])
    data = prepare_tokens(load_corpus(path), tok, tmp_path / "cache", val_fraction=0.1, seed=seed, show_progress=False)
    assert data.meta["pieces"] == 2
    total = len(data.train) + len(data.val)
    assert len(data.val) == round(0.1 * total)
    assert tok.decode(data.train.tolist() + data.val.tolist()) == path.read_text()  # in order, each token once


def _sentencepiece_style(texts: list[str], *, words_apart: bool = False) -> Tokenizer:
    """A Llama-2 / Mistral shaped tokenizer.json: its normalizer puts "▁" before every text it encodes. `words_apart`:
    no token spans a space, as SentencePiece trains them (split_by_whitespace)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    lines = pre_tokenizers.Split("\n", behavior="isolated")  # no merge across a newline, as in Llama's
    words = pre_tokenizers.Split("▁", behavior="merged_with_next")
    hf.pre_tokenizer = pre_tokenizers.Sequence([lines, words]) if words_apart else lines
    hf.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    hf.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    hf.pre_tokenizer = lines  # as Llama's tokenizer.json: words are apart in the merges only
    return Tokenizer.from_hf(hf, bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("kind", ["sentencepiece", "gpt2", "char"])
def test_cached_tokens_equal_the_documents_encoded_whole(tmp_path, kind):
    # A document is tokenized in pieces cut after a newline; with a SentencePiece normalizer each later piece began
    # with a "▁" of its own: "...motion\n age will" in the cache, where the text says "motion\nage will".
    rng = random.Random(0)
    words = "what a piece of work is man how noble in reason\n".split(" ")
    docs = {f"d{i}": " ".join(rng.choice(words) for _ in range(100)) for i in range(3)}
    tok = {
        "sentencepiece": lambda: _sentencepiece_style(list(docs.values())),
        "gpt2": lambda: Tokenizer.load("gpt2"),
        "char": lambda: Tokenizer.train_char(list(docs.values())),
    }[kind]()
    data = prepare_tokens(_Docs(docs), tok, tmp_path, val_fraction=0, chunk_chars=100, show_progress=False)
    assert data.meta["pieces"] > 3 * len(docs)
    assert data.train.tolist() == [i for text in docs.values() for i in tok.encode(text) + [tok.eos_id]]


@pytest.mark.parametrize("kind", ["sentencepiece", "gpt2", "char"])
def test_a_line_far_longer_than_a_piece_is_cut_at_spaces_into_the_same_tokens(tmp_path, kind):
    # A line was never cut: text8 (one line of 100M characters) went to the tokenizer whole, tens of GB of ids and
    # offsets; 5M characters of it took 2 GB against 0.2 GB for the same text in lines.
    rng = random.Random(0)
    words = "anarchism originated as a term of abuse first used against early working class radicals".split()
    text = " ".join(rng.choice(words) for _ in range(400)) + "\n"
    tok = {
        "sentencepiece": lambda: _sentencepiece_style([text], words_apart=True),
        "gpt2": lambda: Tokenizer.load("gpt2"),
        "char": lambda: Tokenizer.train_char([text]),
    }[kind]()
    data = prepare_tokens(_Docs({"text8": text}), tok, tmp_path, val_fraction=0, chunk_chars=100, show_progress=False)
    assert data.meta["pieces"] > 10
    assert data.train.tolist() == tok.encode(text) + [tok.eos_id]


@pytest.mark.parametrize("kind", ["gpt2", "bpe"])
def test_pieces_of_indented_code_and_blank_lines_get_the_documents_tokens(tmp_path, kind):
    # A piece was cut after any newline: GPT-2's pre-tokenizer joins a newline with the whitespace beside it ("\n\n" and
    # "\n    " before an indented line are one piece each), so code and paragraphs got tokens the document does not have
    # (7 of 5,611 in json/decoder.py, cut every 200 characters).
    text = "".join(f"def f{i}(x):\n    if x:\n\n        return {i}\n\n\n# note {i}\n" for i in range(60))
    tok = Tokenizer.load("gpt2") if kind == "gpt2" else Tokenizer.train_bpe([text], vocab_size=400, show_progress=False)
    for chunk_chars in (30, 37, 45):  # cuts fell in every kind of place: after a blank line, before an indented one
        data = prepare_tokens(
            _Docs({"code": text}),
            tok,
            tmp_path / str(chunk_chars),
            val_fraction=0,
            chunk_chars=chunk_chars,
            show_progress=False,
        )
        assert data.meta["pieces"] > 30
        assert data.train.tolist() == tok.encode(text) + [tok.eos_id], chunk_chars
    few = "\n\n".join(["x"] * 300)  # no newline between two words: still cut at newlines, not one piece of all
    assert max(len(p.text) for p in chunk_document(Document("d", few), 50)) <= 100


class _Docs(Corpus):
    name = "docs"

    def __init__(self, docs: dict[str, str]) -> None:
        self.docs = docs

    def documents(self):
        yield from (Document(name, text) for name, text in self.docs.items())

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.docs).encode()).hexdigest()[:16]


def test_a_word_level_vocabulary_without_an_unknown_token_still_prepares(tmp_path):
    # The check for SentencePiece's "▁" encodes a few letters of its own: a vocabulary without them must not fail.
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    hf = HFTokenizer(models.WordLevel({"x": 0, "y": 1, "</s>": 2}))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = Tokenizer.from_hf(hf, eos_token="</s>")
    data = prepare_tokens(
        _Docs({"a": "x y\n" * 40}), tok, tmp_path, val_fraction=0, chunk_chars=10, show_progress=False
    )
    assert data.train.tolist() == [0, 1] * 40 + [2]


def test_one_piece_of_a_whole_corpus_is_encoded_in_parts(tmp_path, monkeypatch):
    # One piece of a whole corpus (the tail split made one, then) went to the tokenizer whole: 3 MB of
    # text took 1.4 GB (~300 bytes a character), so a 100 MB corpus (enwik8) could not be prepared.
    from neurallayers.data import datasets

    monkeypatch.setattr(datasets, "_ENCODE_CHARS", 500, raising=False)
    text = "".join(f"line {i} of the one text\n" for i in range(400))
    tok = Tokenizer.train_char([text])
    longest = []
    encode_batch = Tokenizer.encode_batch

    def spy(self, texts, **kwargs):
        texts = list(texts)
        longest.append(max(map(len, texts)))
        return encode_batch(self, texts, **kwargs)

    monkeypatch.setattr(Tokenizer, "encode_batch", spy)
    data = prepare_tokens(_Docs({"all": text}), tok, tmp_path, val_fraction=0.1, chunk_chars=2**62, show_progress=False)
    assert max(longest) <= 2 * 500 + 1  # a part ends at the first newline past 500 characters, plus the added one
    assert data.meta["pieces"] == 1  # still one piece: val is the last tenth of the tokens
    ids = tok.encode(text) + [tok.eos_id]
    assert (data.train.tolist(), data.val.tolist()) == (ids[: -round(0.1 * len(ids))], ids[-round(0.1 * len(ids)) :])
