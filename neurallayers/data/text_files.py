"""Text files as a corpus reads them: found below a folder, told apart from binary and compressed files, decoded
(UTF-8, or UTF-16 / UTF-32 after their byte-order mark) a block at a time, and fingerprinted cheaply."""

from __future__ import annotations

import codecs
import fnmatch
import glob
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("neurallayers.data")
_BLOCK_CHARS = 1 << 20  # a text file is read this many characters at a time
_SCAN_BYTES = 1 << 20  # and searched for a byte that is not its encoding this many bytes at a time
# A file's fingerprint hashes the whole file up to _SAMPLES blocks of _SAMPLE_BYTES (1 MiB), and that many blocks spread
# from its start to its end beyond: cheap for a big file, and an edit anywhere in a smaller one is seen.
_SAMPLE_BYTES = 64 * 1024
_SAMPLES = 16
# UTF-32 before UTF-16: the UTF-32 LE BOM starts with the UTF-16 LE one.
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# A byte that is not UTF-8, as the surrogateescape error handler decodes it.
_ESCAPED_BYTE = re.compile(r"[\udc80-\udcff]")
# Magic numbers of the formats real corpora ship compressed in (C4's .json.gz, the Pile's .jsonl.zst): not read here.
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
               (b"PK\x03\x04", "zip"))


def walk(root: Path, *, suffix: str | None = None, skip: set[str] | frozenset[str] = frozenset()) -> list[Path]:
    """Files below `root`, sorted by relative path; hidden entries are left out (binary files are the caller's to
    skip). Symlinked folders are followed, except back into a folder above them (a loop), and a file reached by
    several names is kept once."""
    found = _files_below(root, suffix=suffix, skip=skip)
    return unique(sorted(found, key=lambda p: p.relative_to(root).as_posix()))


def glob_files(pattern: str, root: Path) -> list[Path]:
    """The files `pattern` matches, as `glob.glob(pattern, recursive=True)` finds them, unsorted; `root` is its folder
    before its first wildcard. Below a "**", the files are those `walk` finds below `root` (hidden ones left out, as
    glob's wildcards leave them out; a hidden name written after a "**" finds nothing): glob followed a symlink to a
    folder above it round the loop to the system's limit of 40 links, so two such links were 2**40 paths to list, a
    search that never ended."""
    parts = Path(pattern).parts
    if "**" not in parts or pattern.endswith(("/", os.sep)):  # one that ends in a separator matches folders only
        return [p for p in map(Path, glob.glob(pattern, recursive=False)) if p.is_file()]
    rest = parts[len(root.parts):]
    return [p for p in _files_below(root) if _glob_match(p.relative_to(root).parts, rest)]


def _glob_match(names: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether a path's `names` match the glob pattern's `parts`, one for one, a "**" matching any number of them."""
    if not parts:
        return not names
    if parts[0] == "**":
        return any(_glob_match(names[i:], parts[1:]) for i in range(len(names) + 1))
    return bool(names) and fnmatch.fnmatch(names[0], parts[0]) and _glob_match(names[1:], parts[1:])


def _files_below(root: Path, *, suffix: str | None = None, skip: set[str] | frozenset[str] = frozenset()) -> list[Path]:
    """`walk`'s files, in the order os.walk finds them, a file reached by several names under each."""
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
    return found


def unique(paths: list[Path]) -> list[Path]:
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


def content_sample(path: Path) -> bytes:
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


def warn_compressed(spec: str, found: list[Path], kept: list[Path]) -> None:
    """Warns of compressed files skipped as binary: a folder of README.md and 100 .jsonl.gz shards trained on the
    README alone, without a word."""
    kept = set(kept)
    packed = [p for p in found if p not in kept and _compression(p)]
    if packed:
        log.warning("%s: %d compressed file(s) skipped (e.g. %r): compressed files are not read; decompress them to "
                    "train on them", spec, len(packed), str(packed[0]))


def binary_note(paths: list[Path]) -> str:
    """What a folder or glob of binary files only holds, naming a compressed one: they are not read."""
    if not paths:
        return ""
    kinds = {p: _compression(p) for p in paths}
    packed = next((p for p, kind in kinds.items() if kind), None)
    if packed is None:
        return f" (only {len(paths)} binary file(s), e.g. {str(paths[0])!r})"
    return (f" (only {len(paths)} binary file(s): {str(packed)!r} is {kinds[packed]}-compressed, and compressed "
            f"files are not read: decompress them first)")


def looks_binary(path: Path) -> bool:
    # git's rule: a NUL byte near the start means binary; UTF-16/32 text is full of NULs but starts with a BOM.
    with open(path, "rb") as f:
        head = f.read(8192)
    return b"\0" in head and _text_encoding(head) == "utf-8-sig"


def not_text(path: Path) -> str:
    """Why a file named as the corpus, which `looks_binary`, is not read."""
    if kind := _compression(path):
        return _compressed(path, kind)
    return (f"{str(path)!r} is not text: a NUL byte in its first 8 KiB (a binary file, token ids such as nanoGPT's "
            f"train.bin, or UTF-16/32 without its byte-order mark); give a text file, or convert it to UTF-8")


def _compressed(path: Path, kind: str) -> str:
    return f"{str(path)!r} is {kind}-compressed, and compressed files are not read: decompress it first"


def read_text(path: Path) -> str:
    return "".join(text_blocks(path))


def text_blocks(path: Path) -> Iterator[str]:
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
    so the file is decoded again, a block at a time, to find it), or that it is compressed."""
    if kind := _compression(path):  # "convert it to UTF-8" sent the user looking for the wrong tool
        return ValueError(_compressed(path, kind))
    reason, at = _first_bad_byte(path, encoding.removesuffix("-sig")) or (error.reason, error.start)
    name = encoding.removesuffix("-sig").upper()
    return ValueError(f"{str(path)!r} is not {name} ({reason} at byte {at}); convert it to UTF-8")


def _first_bad_byte(path: Path, encoding: str) -> tuple[str, int] | None:
    """(reason, offset in the file) of the first bytes of `path` that are not `encoding`, counted as a hex editor
    counts (a UTF-8 BOM is decoded as the file's bytes too), or None. Decoded _SCAN_BYTES at a time: a stray byte
    deep in a file of gigabytes had it read, and decoded, whole."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(_SCAN_BYTES)
            held = len(decoder.getstate()[0])  # the start of a character the block before ended in
            try:
                decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                return e.reason, offset - held + e.start
            if not raw:
                return None
            offset += len(raw)


def jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a JSON-lines file: UTF-8, or UTF-16 / UTF-32 after their BOM as for text files
    (PowerShell's `>` writes UTF-16). Lines end at "\\n", "\\r\\n" or a lone "\\r", as Python's universal newlines
    and editors count them (a file of CR line ends was one line of "invalid JSON (Extra data)"); each keeps its end.
    Decoded line by line, so that an error names its line."""
    with open(path, "rb") as f:
        encoding = _text_encoding(f.read(4))
    if encoding != "utf-8-sig":
        with open(path, encoding=encoding, newline="") as f:
            try:
                yield from enumerate(f, start=1)
            except UnicodeDecodeError as e:  # decoded by blocks: the line is not known
                raise ValueError(f"{str(path)!r} is not {encoding.upper()} ({e.reason}); convert it to UTF-8") from None
        return
    # Bytes that are not UTF-8 come through as lone surrogates (surrogateescape), to be named with their line.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.isascii() and _ESCAPED_BYTE.search(line):
                try:
                    line.encode("utf-8", "surrogateescape").decode("utf-8")  # raises: the line's bytes as they were
                except UnicodeDecodeError as e:
                    raise _not_utf8_line(path, lineno, e) from None
            yield lineno, line.removeprefix("\ufeff")  # a BOM of a file cat'ed after the first is not JSON either


def _not_utf8_line(path: Path, lineno: int, error: UnicodeDecodeError) -> ValueError:
    """The error of line `lineno` of a JSON-lines file, whose bytes are not UTF-8 (`error`): its first bad byte, counted
    from the line's start as a hex editor shows it (the BOM a first line starts with included), or that the file is
    compressed."""
    if lineno == 1 and (kind := _compression(path)):
        return ValueError(_compressed(path, kind))
    with open(path, "rb") as f:
        bom = len(codecs.BOM_UTF8) if lineno == 1 and f.read(3) == codecs.BOM_UTF8 else 0
    return ValueError(f"{path}:{lineno}: not UTF-8 ({error.reason} at byte {error.start + bom} of the line); "
                      f"convert the file to UTF-8")
