"""Which documents a corpus holds and what they are named, as files are added or linked: the split is drawn by name."""

import glob
import os
from pathlib import Path

import pytest

from neurallayers.data.corpora import load_corpus
from neurallayers.data.datasets import split_names


def _val(spec: str) -> set[str]:
    """The validation documents of `spec`'s corpus, as the files they come from."""
    corpus = load_corpus(spec)
    names = [d.name for d in corpus.documents()]
    return {(corpus.root / name).as_posix() for name in split_names(names, 0.1, seed=0)}


def test_a_file_added_beside_a_globs_matches_moves_no_other_document(tmp_path):
    # The names were relative to the matches' common folder: data/a/ while every match was there, data/ once a file
    # was added in data/b/, so every name changed and 3 of the 4 val documents went to train (and 3 trained on to val).
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i in range(40):
        (tmp_path / "a" / f"d{i:02d}.txt").write_text(f"document {i}\n")
    spec = str(tmp_path / "**" / "*.txt")
    before = _val(spec)
    (tmp_path / "b" / "new.txt").write_text("a new document\n")
    after = _val(spec)
    assert before - after == set() and after - before <= {(tmp_path / "b" / "new.txt").as_posix()}
    assert [d.name for d in load_corpus(spec).documents()][-1] == "b/new.txt"


def test_a_hard_linked_file_in_a_folder_is_read_once(tmp_path):
    # The same file under two names, as a symlink is: its text was read twice, and could land in train and in val.
    (tmp_path / "a.txt").write_text("the same text\n")
    (tmp_path / "c.txt").write_text("other text\n")
    try:
        os.link(tmp_path / "a.txt", tmp_path / "b.txt")
    except OSError:
        pytest.skip("no hard links here")
    assert [d.name for d in load_corpus(tmp_path).documents()] == ["a.txt", "c.txt"]
    assert [d.name for d in load_corpus(str(tmp_path / "*.txt")).documents()] == ["a.txt", "c.txt"]


def test_a_binary_file_named_as_the_corpus_is_refused(tmp_path):
    # A folder skips it; named alone, its bytes were read as text: nanoGPT's char-level train.bin (uint16 ids below
    # 128, valid UTF-8) trained on NULs and control characters without a word.
    path = tmp_path / "train.bin"
    path.write_bytes(bytes(b for i in range(2000) for b in ((i * 7) % 65, 0)))
    with pytest.raises(ValueError, match=r"train.bin' is not text: a NUL byte in its first 8 KiB"):
        load_corpus(path)
    path.write_bytes("UTF-16 without its byte-order mark\n".encode("utf-16-le"))
    with pytest.raises(ValueError, match=r"UTF-16/32 without its byte-order mark"):
        load_corpus(path)
    path.write_bytes("UTF-16 after its byte-order mark\n".encode("utf-16"))
    assert [d.text for d in load_corpus(path).documents()] == ["UTF-16 after its byte-order mark\n"]


def _symlink(target: str, link) -> None:
    try:
        os.symlink(target, link, target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("no symlinks here")


@pytest.mark.parametrize("pattern", ["**/*.txt", "**", "**/deep/*", "*/*.txt", "sub/**/*.md", "**/b.txt", "**/"])
def test_a_glob_matches_the_files_pythons_glob_matches(tmp_path, pattern):
    # The oracle: glob.glob(recursive=True), each real file once, named from the folder before the first wildcard.
    for rel in ("a.txt", "sub/b.txt", "sub/deep/c.md", "sub/deep/e.txt", "a-b/d.txt", ".hidden/x.txt", "sub/.h.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"{rel}\n")
    _symlink("sub", tmp_path / "linked")  # a symlinked folder, not a loop: its files are found under both names
    spec = str(tmp_path / pattern) + ("/" if pattern.endswith("/") else "")  # a Path drops it
    parts = Path(spec).parts
    root = Path(*parts[:next(i for i, part in enumerate(parts) if glob.has_magic(part))])
    seen, want = set(), []
    for path in sorted(p for p in map(Path, glob.glob(spec, recursive=True)) if p.is_file()):
        if os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            want.append(path.relative_to(root).as_posix())
    if not want:  # "**/" matches folders only
        with pytest.raises(FileNotFoundError, match="matches no files"):
            load_corpus(spec)
        return
    assert [d.name for d in load_corpus(spec).documents()] == want


def test_a_glob_through_symlinks_to_folders_above_it_ends(tmp_path, monkeypatch):
    # glob's "**" followed each link back up the tree to the system's limit of 40 links: two such links were 2**40
    # paths to list, and the run never started. The folder form stops at a loop; the glob now does too.
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "sub" / "a.txt").write_text("one\n")
    (tmp_path / "data" / "b.txt").write_text("two\n")
    _symlink("..", tmp_path / "data" / "sub" / "up")
    _symlink("..", tmp_path / "data" / "sub" / "up2")
    _symlink(".", tmp_path / "data" / "here")
    listed, scandir = [], os.scandir

    def counting_scandir(path="."):
        listed.append(path)
        if len(listed) > 1000:  # a few are enough for this tree; glob listed millions
            raise RuntimeError("listed more than 1000 folders")
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    spec = str(tmp_path / "data" / "**" / "*.txt")
    assert [d.name for d in load_corpus(spec).documents()] == ["b.txt", "sub/a.txt"]
