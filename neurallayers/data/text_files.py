"""Text files as a corpus reads them: found below a folder, told apart from binary and compressed files, decoded
(UTF-8, or UTF-16 / UTF-32 after their byte-order mark) a block at a time, and fingerprinted cheaply."""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("neurallayers.data")
_BLOCK_CHARS = 1 << 20  # a text file is read this many characters at a time
# A file's fingerprint hashes the whole file up to _SAMPLES blocks of _SAMPLE_BYTES (1 MiB), and that many blocks spread
# from its start to its end beyond: cheap for a big file, and an edit anywhere in a smaller one is seen.
_SAMPLE_BYTES = 64 * 1024
_SAMPLES = 16
# UTF-32 before UTF-16: the UTF-32 LE BOM starts with the UTF-16 LE one.
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# Magic numbers of the formats real corpora ship compressed in (C4's .json.gz, the Pile's .jsonl.zst): not read here.
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
               (b"PK\x03\x04", "zip"))


def walk(root: Path, *, suffix: str | None = None, skip: set[str] | frozenset[str] = frozenset()) -> list[Path]:
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
    return unique(sorted(found, key=lambda p: p.relative_to(root).as_posix()))


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
    so the file is decoded whole to find it), or that it is compressed."""
    if kind := _compression(path):  # "convert it to UTF-8" sent the user looking for the wrong tool
        return ValueError(_compressed(path, kind))
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as e:
        error = e
    # utf-8-sig counts from after the BOM it drops: the byte is the file's, as a hex editor shows it
    at = error.start + (len(codecs.BOM_UTF8) if encoding == "utf-8-sig" and data.startswith(codecs.BOM_UTF8) else 0)
    name = encoding.removesuffix("-sig").upper()
    return ValueError(f"{str(path)!r} is not {name} ({error.reason} at byte {at}); convert it to UTF-8")


def jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
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
                at = e.start + (len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0)  # counted after it
                if lineno == 1 and (kind := _compression(path)):
                    raise ValueError(f"{str(path)!r} is {kind}-compressed, and compressed files are not read: "
                                     f"decompress it first") from None
                raise ValueError(f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {at} of the line); "
                                 f"convert the file to UTF-8") from None

