"""Token caches on disk, random training windows, evaluation windows and SFT batches.

`prepare_tokens` tokenizes a corpus once into `cache_dir/<key>/{train,val}.bin` (flat token arrays,
documents separated by eos) and memory-maps them afterwards. `RandomWindows.batch(step)` depends only on
(seed, step), so the data position of a run is its step number and a resumed run sees the same batches.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import numbers
import os
import re
import secrets
import shutil
import socket
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from tqdm.auto import tqdm

from neurallayers.checks import is_integral
from neurallayers.data.chunking import SafeCut, chunk_text
from neurallayers.data.corpora import Corpus, Document, FileDocument, named_pieces
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.files import WriteError, process_alive

log = logging.getLogger("neurallayers.data")

# Bump when the file layout or the split rule changes: old caches are then ignored. 3: long lines are cut at spaces;
# 4: a newline is a cut only between two words (beside other whitespace it joins it in a token); 5: for GPT-2's split,
# where there is none near, whitespace after a word is, before any newline; 6: a cut is one the tokenizer itself
# keeps the ids across (`safe_cut`), for every tokenizer.
CACHE_VERSION = 6
CHUNK_CHARS = 50_000
_BATCH_CHARS = 1_000_000  # text handed to the tokenizer per call: big enough for its thread pool
# A piece longer than this is encoded in parts cut as pieces are (a tail split's one piece is the whole corpus, and
# encoded whole it took ~300 bytes a character: 1.4 GB for 3 MB of text); its tokens stay one piece for the split.
_ENCODE_CHARS = 1_000_000
_COPY_BYTES = 1 << 24
_Part = tuple[Document, bool, bool, bool]  # (part of a piece, first part of its document, last, starts its piece)
_STALE_SECONDS = 24 * 3600  # a build folder whose owner cannot be checked is dead after this long without a write
_IDLE_SECONDS = 600  # a live build writes every few seconds


@dataclass
class TokenData:
    """Train and validation tokens of one corpus, as read-only arrays (memory-mapped when non-empty).

    Attributes:
        train: 1-D array of token ids (uint16, or uint32 for vocabularies over 65535).
        val: 1-D array of token ids; empty only when val_fraction is 0 or the corpus is one tiny document.
        meta: What meta.json records: sources, counts, dtype.
        path: The cache folder.
        cached: True when an existing cache was reused, False when it was just built.
    """

    train: np.ndarray
    val: np.ndarray
    meta: dict
    path: Path
    cached: bool

    @classmethod
    def open(cls, path: str | os.PathLike, *, cached: bool = True) -> TokenData:
        """Opens a finished cache folder written by `prepare_tokens`.

        Raises:
            ValueError: The folder is damaged: meta.json unreadable, or a .bin file not as long as meta.json records
                (a copy cut short, a full disk): its tokens are not trusted.
        """
        path = Path(path)
        try:
            try:
                meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"meta.json is not JSON ({e.msg})") from None
            dtype = np.dtype(meta["dtype"])
            for split in ("train", "val"):
                size, want = (path / f"{split}.bin").stat().st_size, meta[f"{split}_tokens"] * dtype.itemsize
                if size != want:
                    raise ValueError(f"{split}.bin holds {size:,} bytes where meta.json records {want:,}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"token cache {path} is damaged: {e}") from None
        return cls(_map(path / "train.bin", dtype), _map(path / "val.bin", dtype), meta, path, cached)


def prepare_tokens(
    corpus: Corpus,
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    chunk_chars: int = CHUNK_CHARS,
    show_progress: bool = True,
    document_bos: bool | None = None,
    tail: bool = False,
    frame: bool | None = None,
) -> TokenData:
    """Tokenizes `corpus` into a train/val cache, or reuses the cache made from the same inputs.

    Documents are cut into pieces of about `chunk_chars` at line boundaries (so one big file still
    splits), and whole pieces go to train or val: ordered by a hash of (seed, piece name), the first
    round(val_fraction * n) go to val. A corpus of too few pieces for that to take one (a single piece, or two of
    50k and 10k characters: round(0.1 * 2) is 0) is split by position instead (its last val_fraction of tokens).
    An eos token follows each document's last piece when the tokenizer has one, and its bos precedes the first
    piece when `document_bos` says so (None: when the tokenizer's own encoding puts one first, as a Llama
    tokenizer.json's post-processor does: prompts start with it, and transformers' run_clm trains so). A tokenizer
    with neither frames each document as its own encoding frames a text (BERT's [CLS] ... [SEP], as transformers'
    run_mlm tokenizes one: `document_frame`) when `frame` says so (None: whenever it can).

    Args:
        corpus: The text.
        tokenizer: The tokenizer; a different one (or different specials) gives a different cache.
        cache_dir: Parent folder of the caches; each lives in `cache_dir/<key>/`.
        val_fraction: Share of pieces for validation, in [0, 1).
        seed: Chooses the split (where val_fraction is not 0).
        chunk_chars: Target size of a piece in characters.
        show_progress: Show a progress bar while tokenizing.
        tail: Split by position whatever the pieces: the last val_fraction of the tokens, in the corpus's order, go
            to val (nanoGPT's contiguous split); each document still ends with eos.
        frame: Frame each document as the tokenizer frames a text (see above); None: where it has neither bos nor
            eos and frames a text; False: never (a run recorded before framing, whose resume reads its own tokens).

    Raises:
        ValueError: Bad val_fraction / chunk_chars / seed, or a corpus with no text.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r} must be a number in [0, 1)")  # "0.1" was a TypeError
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars={chunk_chars} must be >= 1")
    if not is_integral(seed):
        raise ValueError(f"seed={seed!r} must be an integer")
    # The key holds what chooses the tokens, as plain numbers: 0 (YAML's) and 0.0 (eval's) or a numpy seed were other
    # keys, and with nothing for val each seed and either split made the same cache again (or crashed the JSON).
    val_fraction, seed = float(val_fraction), int(seed)
    if val_fraction == 0:
        seed, tail = 0, False
    sources = {
        "version": CACHE_VERSION,
        "corpus": corpus.name,
        "corpus_fingerprint": corpus.fingerprint(),
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "val_fraction": val_fraction,
        "seed": seed,
        "chunk_chars": chunk_chars,
    }
    if tail:  # only then: the caches of the documents split keep their keys
        sources["split"] = "tail"
    if document_bos is None:
        document_bos = tokenizer.adds_bos
    if document_bos and tokenizer.bos_id is None:
        raise ValueError("document_bos=True: the tokenizer has no bos token")
    if document_bos:  # a key of its own (caches written before did not add it)
        sources["document_bos"] = True
    framed = document_frame(tokenizer) if frame is not False else None
    if frame and framed is None:
        raise ValueError("document_frame=True: the tokenizer has a bos or an eos, or frames nothing; use false")
    if framed:  # only then, as document_bos: the caches of other tokenizers keep their keys
        sources["document_frame"] = framed
    key = hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()[:16]
    final = Path(cache_dir) / key
    if final.parent.is_dir():
        _remove_dead_builds(final.parent, key)
    if (final / "meta.json").exists():
        try:
            return TokenData.open(final, cached=True)
        except ValueError as e:  # a copy cut short was trusted: numpy's size error, or fewer tokens without a word
            log.warning("%s; building it again", e)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        # Build in a temporary folder and rename it into place: a cache folder is either complete or absent. Its name
        # holds its builder (pid@host), so that the folder of a killed build can be told from that of a live one.
        tmp = _build_folder(final.parent, key)
    except OSError as e:
        raise cache_write_error(e, final.parent) from None
    try:
        _build(corpus, tokenizer, tmp, sources, show_progress=show_progress)
        if final.exists() and not _whole(final):
            shutil.rmtree(final)  # leftover from a foreign writer or a damaged copy; ours are never partial
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").exists():  # not just another process finishing first
                raise
    except OSError as e:
        # a corpus file that cannot be read keeps its own error; the cache's own writes (disk full) are named here
        if e.filename is not None and not _inside(e.filename, final.parent):
            raise
        raise cache_write_error(e, final.parent) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenData.open(final, cached=False)


def document_frame(tokenizer: Tokenizer) -> list[list[int]] | None:
    """For a tokenizer with neither bos nor eos (BERT's), [the ids its own encoding puts before a text, those it puts
    after] ([CLS] and [SEP]): each document is framed so, as transformers' run_mlm tokenizes a text, where it ran into
    the next with no boundary. None for any other tokenizer, or one that frames nothing."""
    if tokenizer.bos_id is not None or tokenizer.eos_id is not None:
        return None
    try:
        plain, framed = tokenizer.encode("a"), tokenizer.encode("a", add_special_tokens=True)
    except Exception:  # a word-level vocabulary without "a" nor an unknown token: nothing known to frame
        return None
    start = next((k for k in range(len(framed) - len(plain) + 1) if framed[k : k + len(plain)] == plain), None)
    if start is None or len(framed) == len(plain):
        return None
    return [framed[:start], framed[start + len(plain) :]]


def _whole(folder: Path) -> bool:
    """Whether `folder` holds a cache as `prepare_tokens` writes one, every file whole."""
    try:
        TokenData.open(folder)
    except ValueError:
        return False
    return True


def cache_write_error(e: OSError, folder: Path) -> WriteError:
    """One line for a cache that cannot be written (a read-only or full disk; EROFS is no PermissionError, so the CLI
    showed a traceback), naming the folder and how to choose another."""
    return WriteError(e.errno, f"cannot write the cache in {folder} ({e.strerror or e}); set data.cache_dir or "
                      f"NEURALLAYERS_CACHE to a writable folder")


def _inside(path: str | os.PathLike, folder: Path) -> bool:
    return Path(os.path.abspath(os.fsdecode(path))).is_relative_to(os.path.abspath(folder))


def split_names(names: list[str], val_fraction: float, seed: int) -> set[str]:
    """The names that go to validation: the round(val_fraction * n) with the smallest hash(seed, name).

    With two or more names and val_fraction > 0, at least one name goes to each side.
    """
    hashes = np.array([_hash(f"{seed}\0{name}") for name in names], dtype=np.uint64)
    return {names[i] for i in np.flatnonzero(_val_mask(hashes, val_fraction))}


def _val_mask(hashes: np.ndarray, val_fraction: float) -> np.ndarray:
    """Which pieces go to validation, given their hash(seed, name): as `split_names` chooses."""
    mask = np.zeros(len(hashes), dtype=bool)
    if val_fraction == 0 or len(hashes) < 2:
        return mask
    n_val = min(max(round(val_fraction * len(hashes)), 1), len(hashes) - 1)
    mask[np.argsort(hashes, kind="stable")[:n_val]] = True
    return mask


def _build_folder(parent: Path, key: str) -> Path:
    """A new, empty folder for building `key`, readable as the umask says: mkdtemp's is private (0o700) and stays so
    after the rename, so a cache folder shared by a team (NEURALLAYERS_CACHE, umask 002) would refuse the others."""
    while True:
        tmp = parent / f".{key}.tmp-{os.getpid()}@{_host()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _host() -> str:
    return re.sub(r"[^\w.-]", "_", socket.gethostname())


def _remove_dead_builds(parent: Path, key: str) -> None:
    """Removes the temporary folders left by killed builds: their process is gone or, where that cannot be checked
    (another host, a name without pid), they have not been written to for _STALE_SECONDS. Those of every key: a
    corpus edited after its build was killed builds under another key, and the dead folder's gigabytes stayed. Another
    key's folder must also have had no write for _IDLE_SECONDS: a container sharing the host's name (host networking)
    has pids of its own, so its live build looks dead from here."""
    for tmp in parent.glob(".*.tmp-*"):
        if not (build := re.fullmatch(r"\.([0-9a-f]{16})\.tmp-(.*)", tmp.name)):
            continue  # not ours
        owner = re.fullmatch(r"(\d+)@(.+)-[^-]*", build[2])
        idle = time.time() - _last_write(tmp)
        if owner and owner[2] == _host() and os.name == "posix":  # os.kill(pid, 0) would end the process on Windows
            dead = not process_alive(int(owner[1])) and (build[1] == key or idle > _IDLE_SECONDS)
        else:
            dead = idle > _STALE_SECONDS
        if dead:
            shutil.rmtree(tmp, ignore_errors=True)


def _last_write(folder: Path) -> float:
    try:
        return max([folder.stat().st_mtime] + [p.stat().st_mtime for p in folder.iterdir()])
    except OSError:  # removed meanwhile: its build finished
        return time.time()


def _build(corpus: Corpus, tokenizer: Tokenizer, out: Path, sources: dict, *, show_progress: bool) -> None:
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 65535 else np.uint32)
    eos, bos = tokenizer.eos_id, tokenizer.bos_id if sources.get("document_bos") else None
    head, tail = sources.get("document_frame") or ([] if bos is None else [bos], [] if eos is None else [eos])
    # Per piece: hash(seed, name) and length in all.bin, 8 bytes each. A list of names and one array view per piece
    # took ~600 bytes a piece: GBs for a JSON-lines corpus of millions of records.
    hashes, lengths = array("Q"), array("q")
    total = 0
    encode = _piece_encoder(tokenizer)
    with open(out / "all.bin", "wb") as f, tqdm(
        desc=f"tokenizing {corpus.name}", unit="char", unit_scale=True, disable=not show_progress,
        delay=1,  # shown only when it takes a while: a corpus refused at once leaves just its one-line error
    ) as bar:
        pieces = _pieces(corpus.documents(), sources["chunk_chars"], byte_level=byte_level_split(tokenizer),
                         safe_cut=safe_cut(tokenizer))
        for batch in _batches(pieces):
            for (piece, first, last, new), ids in zip(batch, encode(batch), strict=True):
                if first:
                    ids[:0] = head
                if last:
                    ids.extend(tail)
                _write(f, np.asarray(ids, dtype=dtype))
                if new:
                    hashes.append(_hash(f"{sources['seed']}\0{piece.name}"))
                    lengths.append(len(ids))
                else:  # a later part of the same piece
                    lengths[-1] += len(ids)
                total += len(ids)
            bar.update(sum(len(p.text) for p, *_ in batch))
    if total == 0:
        raise ValueError(f"corpus {corpus.name!r} has no text to tokenize")

    fraction = sources["val_fraction"]
    # all.bin is read in order, not mapped: its mapped pages counted in the process's memory (116 MB for 100 MB of text)
    with open(out / "all.bin", "rb") as src, open(out / "train.bin", "wb") as train, open(out / "val.bin", "wb") as val:
        if sources.get("split") == "tail" or not round(fraction * len(lengths)):
            # Whole pieces cannot give the fraction: split_names' one val piece of two made val 83% of a 60k-character
            # file (its 50k piece) or 17%, by the seed. A single piece always comes here.
            cut = total - (min(max(round(total * fraction), 1), total - 1) if fraction else 0)
            _copy(src, train, cut * dtype.itemsize)
            _copy(src, val, (total - cut) * dtype.itemsize)
            val_tokens, n_val_docs = total - cut, int(cut < total)
        else:
            to_val = _val_mask(np.frombuffer(hashes, dtype=np.uint64), fraction)
            for v, run in itertools.groupby(zip(to_val.tolist(), lengths, strict=True), key=lambda p: p[0]):
                _copy(src, val if v else train, sum(length for _, length in run) * dtype.itemsize)
            val_tokens, n_val_docs = int(np.frombuffer(lengths, dtype=np.int64)[to_val].sum()), int(to_val.sum())
        for f in (train, val):
            f.flush()
            os.fsync(f.fileno())
    counts = {"train_tokens": total - val_tokens, "val_tokens": val_tokens}
    (out / "all.bin").unlink()
    meta = {**sources, "dtype": dtype.name, "vocab_size": tokenizer.vocab_size, "eos_id": eos, **counts,
            "pieces": len(lengths), "val_pieces": n_val_docs}
    with open(out / "meta.json", "w", encoding="utf-8") as f:  # written last: marks the folder complete
        json.dump(meta, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _copy(src: BinaryIO, dst: BinaryIO, size: int) -> None:
    """Copies the next `size` bytes of `src` to `dst`, a block at a time."""
    while size > 0:
        block = src.read(min(size, _COPY_BYTES))
        if not block:
            raise ValueError("the token file ended early")  # never: it was written whole just before
        dst.write(block)
        size -= len(block)


def _write(f: BinaryIO, ids: np.ndarray) -> None:
    # Not ndarray.tofile: its error on a full disk has no errno nor reason, "50049 requested and 48252 written".
    f.write(np.ascontiguousarray(ids).data)


def _piece_encoder(tokenizer: Tokenizer) -> Callable[[list[_Part]], list[list[int]]]:
    """encode_batch for the items of `_pieces`, giving a document's later pieces the ids they have within it
    (`_later_prefix`)."""
    prefix = _later_prefix(tokenizer)

    def encode(batch: list[_Part]) -> list[list[int]]:
        return _encode_later(tokenizer, [p.text for p, *_ in batch], [not first for _, first, *_ in batch], prefix)

    return encode


def _encode_later(tokenizer: Tokenizer, texts: list[str], later: list[bool], prefix: list[int] | None, *,
                  add_eos: bool = False) -> list[list[int]]:
    """`encode_batch(texts)`, where the texts marked `later` get the ids they have after other text: encoded after the
    newline whose ids are `prefix` (`_later_prefix`), those ids dropped. Nothing changes where `prefix` is None."""
    shift = [prefix is not None and s for s in later]
    out = tokenizer.encode_batch(["\n" + t if s else t for t, s in zip(texts, shift, strict=True)], add_eos=add_eos)
    for i in (i for i, s in enumerate(shift) if s):
        # a text starting with a newline may merge it with the one added ("\n\n"): encoded alone, as before
        alone = out[i][:len(prefix)] != prefix
        out[i] = tokenizer.encode(texts[i], add_eos=add_eos) if alone else out[i][len(prefix):]
    return out


def _later_prefix(tokenizer: Tokenizer) -> list[int] | None:
    """The ids of "\n", where a later piece is encoded after it (None where it is encoded as it is).

    A SentencePiece normalizer puts "▁" before every text it encodes, so a piece encoded alone started with a space
    its document does not have there (one per cut). Where that is so, a later piece is encoded after the newline it
    was cut at, and that newline's ids are dropped.
    """
    enc = tokenizer.encode
    try:
        prefix = enc("\n")
        after_cut = enc("a\nb")[len(enc("a\n")):]  # "b" as a document's text after a newline encodes
        shifts = enc("b") != after_cut and enc("\nb") == prefix + after_cut
    except Exception:  # a word-level vocabulary without these nor an unknown token: encoded as they are
        shifts = False
    return prefix if shifts else None


def safe_cut(tokenizer: Tokenizer) -> SafeCut:
    """Whether `chunk_text` may cut a text between two strings for `tokenizer`, asked of the tokenizer itself: the ids
    of both strings together are those of the first then those of the second as a later piece (as `_piece_encoder`
    encodes it), and no token of the whole text can span the cut: it falls between two of its pre-tokens (after its
    normalizer), or, for a BPE, between two characters that no token of its vocabulary holds side by side (a legacy
    Llama 2 tokenizer.json has no pre-tokenizer, and its merges never join a "\n" or a "▁" after a word). Its model
    sees one pre-token at a time, so that holds in the whole text wherever the pre-tokenizer's splits are local
    (GPT-2's, Llama 3's and Qwen2's regex, Metaspace, BERT's, Whitespace, Sequences of them): no rule per family to
    keep in step with theirs."""
    prefix = _later_prefix(tokenizer)
    lead, skip = ("\n", len(prefix)) if prefix is not None else ("", 0)
    joined = _joined_pairs(tokenizer)

    def apart(encoding, n: int) -> bool:  # no token can span the place between its tokens n - 1 and n
        if n in (0, len(encoding.ids)):
            return True
        words, tokens = encoding.word_ids, encoding.tokens
        return words[n - 1] != words[n] or (joined is not None and tokens[n - 1][-1] + tokens[n][0] not in joined)

    def safe(left: str, right: str) -> bool:
        try:
            whole, first, second = tokenizer.hf.encode_batch([lead + left + right, lead + left, lead + right],
                                                             add_special_tokens=False)
        except Exception:  # a word-level vocabulary without an unknown token, and a window that ends inside a word
            return False
        if any(e.ids[:skip] != (prefix or []) for e in (whole, first, second)):
            return False
        n = len(first.ids)  # whole's ids from `left` end here
        return (whole.ids[skip:] == first.ids[skip:] + second.ids[skip:] and apart(whole, n)
                and (not skip or apart(second, skip)))  # nor across the newline a later piece is encoded after

    return safe


def _joined_pairs(tokenizer: Tokenizer) -> set[str] | None:
    """For a BPE, every two characters that a token of its vocabulary holds side by side (a merge may join them; its
    byte-fallback tokens, <0x0A>, are never merged); None for other models, whose tokens need not be merges."""
    from tokenizers import models

    model = tokenizer.hf.model
    if not isinstance(model, models.BPE):
        return None
    fallback = re.compile(r"<0x[0-9A-F]{2}>") if model.byte_fallback else None
    vocab = tokenizer.hf.get_vocab(with_added_tokens=False)
    return {t[i : i + 2] for t in vocab if not (fallback and fallback.fullmatch(t)) for i in range(len(t) - 1)}


def byte_level_split(tokenizer: Tokenizer) -> bool:
    """Whether `tokenizer` splits text as GPT-2's does (byte-level, its regex, no prefix space nor normalizer): any
    whitespace after a word starts a pre-token there, and `chunk_text` may cut before it."""
    from tokenizers import pre_tokenizers

    pre = tokenizer.hf.pre_tokenizer
    return (tokenizer.hf.normalizer is None and isinstance(pre, pre_tokenizers.ByteLevel) and pre.use_regex
            and not pre.add_prefix_space)


def _pieces(documents: Iterable[Document], chunk_chars: int, *, byte_level: bool,
            safe_cut: SafeCut | None = None) -> Iterator[_Part]:
    """The pieces of the documents, each in one part or, past _ENCODE_CHARS, several; empty documents skipped. A
    document's text is cut as it is read (a file's a block at a time), its pieces named by `named_pieces`."""
    for doc in documents:
        if not isinstance(doc, FileDocument) and len(doc.text) <= min(chunk_chars, _ENCODE_CHARS):
            if doc.text:  # one piece of one part, as chunk_text gives it: millions of JSON-lines records come here
                yield doc, True, True, True
            continue
        for i, (piece, last_piece) in enumerate(named_pieces(doc, chunk_chars, byte_level=byte_level,
                                                             safe_cut=safe_cut)):
            parts = [piece.text] if len(piece.text) <= _ENCODE_CHARS else list(chunk_text(
                [piece.text], _ENCODE_CHARS, byte_level=byte_level, safe_cut=safe_cut))
            for j, part in enumerate(parts):
                yield Document(piece.name, part), i == j == 0, last_piece and j == len(parts) - 1, j == 0


def _batches(pieces: Iterator[_Part]) -> Iterator[list[_Part]]:
    batch, chars = [], 0
    for item in pieces:
        batch.append(item)
        chars += len(item[0].text)
        if chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def _map(path: Path, dtype: np.dtype) -> np.ndarray:
    # np.memmap refuses empty files.
    return np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.empty(0, dtype=dtype)


def _check_count(value: object, name: str, *, least: int) -> None:
    """`value` must be an int (a numpy one too; not a bool) >= least: else numpy failed at the first batch, far from
    the cause ("seed must be integer", "arrays used as indices must be of integer type"), or took True as 1."""
    if not is_integral(value) or value < least:
        raise ValueError(f"{name}={value!r} must be an int >= {least}")


def _check_windows(tokens: np.ndarray, block_size: int, batch_size: int) -> None:
    _check_count(block_size, "block_size", least=1)
    _check_count(batch_size, "batch_size", least=1)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array, got shape {tokens.shape}")
    if len(tokens) < block_size + 1:
        raise ValueError(f"only {len(tokens)} tokens: a window of block_size={block_size} needs at least "
                         f"{block_size + 1}; use more text or a smaller block_size")


def _windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + np.arange(block_size + 1)  # (B, T+1)
    w = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


class RandomWindows:
    """Random (x, y) training windows where batch n depends only on (seed, n).

    Args:
        tokens: 1-D token array (e.g. `TokenData.train`).
        block_size: Window length T.
        batch_size: Windows per batch B.
        seed: Seeds every batch together with its step number.
    """

    def __init__(self, tokens: np.ndarray, *, block_size: int, batch_size: int, seed: int) -> None:
        _check_windows(tokens, block_size, batch_size)
        _check_count(seed, "seed", least=0)
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch for `step`: x (B, T) int64 and y (B, T) int64, y being x shifted left by one token."""
        _check_count(step, "step", least=0)
        # A fresh generator per step: no hidden state, so resuming at step n needs nothing but n.
        rng = np.random.Generator(np.random.PCG64([self.seed, step]))
        starts = rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        return _windows(self.tokens, starts, self.block_size)


def eval_window_count(n_tokens: int, *, block_size: int, batch_size: int, max_batches: int | None = None) -> int:
    """How many windows eval_batches yields for `n_tokens` tokens (in ceil(count / batch_size) batches)."""
    n = (n_tokens - 1) // block_size
    return n if max_batches is None else min(n, max_batches * batch_size)


def eval_batches(
    tokens: np.ndarray, *, block_size: int, batch_size: int, max_batches: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic evaluation windows, evenly spaced over `tokens` (non-overlapping when all are used).

    Yields:
        (x, y), each (B, T) int64; the last batch may be smaller.
    """
    _check_windows(tokens, block_size, batch_size)
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches={max_batches} must be >= 1 or None")
    n = eval_window_count(len(tokens), block_size=block_size, batch_size=batch_size, max_batches=max_batches)
    starts = np.linspace(0, len(tokens) - block_size - 1, num=n).round().astype(np.int64)
    for i in range(0, n, batch_size):
        yield _windows(tokens, starts[i : i + batch_size], block_size)


@dataclass(frozen=True)
class SFTExample:
    """One supervised fine-tuning pair: the model learns to produce `response` after `prompt`."""

    prompt: str
    response: str


def sft_collate(
    examples: list[SFTExample], tokenizer: Tokenizer, *, max_length: int | None = None, add_eos: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenizes and right-pads a batch of SFT examples.

    Uses the same (x, y) convention as `RandomWindows`: y[b, t] is the target for x[b, t]. Targets that
    belong to the prompt and padding are -100 (ignored by `cross_entropy`), so only the response (and its
    eos) is learned.

    Args:
        examples: The pairs.
        tokenizer: Encodes prompt and response separately, so the boundary is exact: the prompt as `generate` encodes
            one (with the tokenizer's own special tokens: a Llama tokenizer's bos first), the response as the text
            that follows it (no SentencePiece "▁" before it where the response does not start with a space).
        max_length: Keep at most this many input tokens per example (the response end is cut first).
        add_eos: End each response with eos so the model learns to stop.

    Returns:
        x (B, T) int64 padded with the pad id (else eos, else 0), and y (B, T) int64; T is the batch max.
    """
    if not examples:
        raise ValueError("sft_collate got no examples")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length={max_length} must be >= 1 or None")
    # As generate() will prompt the model: without its bos, a Llama's fine-tune learned replies to prompts it never sees
    prompts = tokenizer.encode_batch([e.prompt for e in examples], add_special_tokens=True)
    # A response gets the ids it has after its prompt: encoded alone, a SentencePiece tokenizer put a "▁" before it
    # (after "...\n", "Yes" was learned as " Yes"). TRL's SFT rule, where the prompt's ids begin the whole text's.
    responses = _encode_later(tokenizer, [e.response for e in examples], [True] * len(examples),
                              _later_prefix(tokenizer), add_eos=add_eos)
    rows = []
    for p, r in zip(prompts, responses, strict=True):
        ids = (p + r)[: None if max_length is None else max_length + 1]
        # The target of position t is ids[t + 1]; it is masked while that token is still prompt.
        targets = ([-100] * max(len(p) - 1, 0) + ids[max(len(p), 1) :])[: max(len(ids) - 1, 0)]
        rows.append((ids[:-1], targets))
    width = max(max(len(x) for x, _ in rows), 1)
    pad = next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
    x = torch.full((len(rows), width), pad, dtype=torch.long)
    y = torch.full((len(rows), width), -100, dtype=torch.long)
    for b, (ids, targets) in enumerate(rows):
        x[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        y[b, : len(targets)] = torch.tensor(targets, dtype=torch.long)
    return x, y
