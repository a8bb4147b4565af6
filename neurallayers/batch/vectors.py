"""Embeddings: computed a batch at a time into part files under `<output>.parts/`, joined into the NPY or NPZ file (or
written as JSONL lines) in input order at the end."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn

from neurallayers.batch.decoding import _encoded
from neurallayers.batch.inputs import BatchItem
from neurallayers.batch.journal import _append, _line, _Progress, _write_atomic
from neurallayers.data.tokenizers import Tokenizer

VECTOR_SUFFIXES = (".npy", ".npz")


def _embed_todo(model: nn.Module, tokenizer: Tokenizer, todo: list[BatchItem], record: _Progress, bar, *,
                vectors: bool, batch_size: int, pooling: str, normalize: bool, max_length: int | None) -> None:
    import numpy as np

    from neurallayers.embeddings import embed

    todo = sorted(todo, key=lambda it: len(it.text))  # similar lengths batch with less padding
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        vecs = embed(model, tokenizer, [it.text for it in chunk], pooling=pooling, normalize=normalize,
                     batch_size=batch_size, max_length=max_length).cpu().numpy()
        if vectors:
            part = record.parts / f"part-{chunk[0].index:09d}.npz"
            index = np.array([it.index for it in chunk], dtype=np.int64)
            _write_atomic(part, lambda f, index=index, vecs=vecs: np.savez(f, index=index, vectors=vecs))
        else:
            _append(record, [_line({"id": it.id, "embedding": v.tolist()}) for it, v in zip(chunk, vecs, strict=True)])
        bar.update(len(chunk))


def _resume_parts(record: _Progress, total: int) -> dict[int, Any]:
    """Vectors of earlier batches by record index, from the complete part files (unfinished temp files removed)."""
    import numpy as np

    record.parts.mkdir(exist_ok=True)
    done: dict[int, Any] = {}
    for part in sorted(record.parts.iterdir()):
        if part.suffix != ".npz":
            part.unlink()  # a temp file of a batch cut short: it is recomputed
            continue
        try:
            with np.load(part, allow_pickle=False) as z:
                index, vecs = z["index"], z["vectors"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{part} is not a readable batch part ({e}); pass --overwrite to start again") from None
        for i, v in zip(index.tolist(), vecs, strict=True):
            if not 0 <= i < total or i in done:
                raise ValueError(f"{part}: record {i} is out of range or answered twice; pass --overwrite")
            done[i] = v
    return done


def _check_texts(items: list[BatchItem], tokenizer: Tokenizer, *, source: Path) -> None:
    """Every text gives at least one token: embed() refuses one that gives none (a blank text where the tokenizer
    adds no [CLS]/[SEP]), and it did so mid-run, naming "texts[0]" of its batch, not the input line."""
    for it, ids in zip(items, _encoded(tokenizer, items), strict=True):
        if not ids:
            raise ValueError(f"{source} line {it.line}: the text {it.text!r} encodes to no tokens with this tokenizer "
                             "(it adds no special tokens); give some text")


def _npz_ids(items: list[BatchItem], *, source: Path) -> list[str | int]:
    """The ids as the .npz file holds them: integers that int64 holds stay numbers; any other id makes them all
    strings (a 25-digit id overflowed), which must stay unique: 1 and "1" both became "1" (two rows, one name)."""
    ids = [it.id for it in items]
    if all(isinstance(i, int) and -(2**63) <= i < 2**63 for i in ids):
        return ids
    seen: dict[str, BatchItem] = {}
    for it in items:
        if (text := str(it.id)) in seen:
            raise ValueError(f"{source} line {it.line}: id {it.id!r} and line {seen[text].line}'s id "
                             f"{seen[text].id!r} are both {text!r} in a .npz file, whose ids are all strings when any "
                             "is not an int64; make them unique as text, or write .jsonl")
        seen[text] = it
    return [str(i) for i in ids]


class _Writer:
    """A file seen only through its write() method, whose errors raise."""

    def __init__(self, file) -> None:
        self.write = file.write


def _finish_vectors(record: _Progress, items: list[BatchItem]) -> None:
    """Join the parts into the NPY/NPZ output in input order (atomically), mark the run complete, drop the parts."""
    import numpy as np

    done = _resume_parts(record, len(items))
    missing = [it.line for it in items if it.index not in done]
    if missing:
        raise RuntimeError(f"batch parts are missing the records of lines {missing[:5]}")
    matrix = np.stack([done[it.index] for it in items]).astype(np.float32)  # (N, C)
    if record.output.suffix.lower() == ".npy":
        # through write(): given a real file, np.save writes with C's fwrite and ignores its errors, so a full disk
        # left a cut-off .npy marked complete
        _write_atomic(record.output, lambda f: np.save(_Writer(f), matrix))
    else:
        ids = _npz_ids(items, source=record.output)
        id_array = np.array(ids, dtype=np.int64 if all(isinstance(i, int) for i in ids) else str)
        _write_atomic(record.output, lambda f: np.savez(f, ids=id_array, embeddings=matrix))
    record.data["complete"] = True
    record.save()
    shutil.rmtree(record.parts, ignore_errors=True)
