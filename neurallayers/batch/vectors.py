"""Embeddings: computed a batch at a time into part files under `<output>.parts/`, joined into the NPY or NPZ file (or
written as JSONL lines) in input order at the end."""

from __future__ import annotations

import shutil
from pathlib import Path

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


def _parts(record: _Progress) -> list[Path]:
    """The complete part files, in name order; a temp file of a batch cut short is removed (it is recomputed)."""
    record.parts.mkdir(exist_ok=True)
    parts = []
    for part in sorted(record.parts.iterdir()):
        if part.suffix != ".npz":
            part.unlink()
            continue
        parts.append(part)
    return parts


def _read_part(part: Path, *keys: str) -> tuple:
    """The arrays `keys` of a part file (an .npz reads each array only when asked)."""
    import zipfile

    import numpy as np

    try:
        with np.load(part, allow_pickle=False) as z:
            return tuple(z[key] for key in keys)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{part} is not a readable batch part ({e}); pass --overwrite to start again") from None


def _resume_parts(record: _Progress, total: int) -> set[int]:
    """The record indices earlier batches embedded, from the part files' index arrays: their vectors stay on disk
    until the join (read here, they were held through the rest of the run, a copy of the matrix beside the join's)."""
    done: set[int] = set()
    for part in _parts(record):
        (index,) = _read_part(part, "index")
        for i in index.tolist():
            if not 0 <= i < total or i in done:
                raise ValueError(f"{part}: record {i} is out of range or answered twice; pass --overwrite")
            done.add(i)
    return done


def _joined(record: _Progress, total: int):
    """The (total, C) float32 matrix of the parts' vectors, row i record i, filled a part at a time: one copy of it
    (every part's vectors, np.stack's copy of them and astype's were three: a large job ran for hours, then failed
    at this last step for want of memory, and so did every rerun)."""
    import numpy as np

    matrix = None
    for part in _parts(record):
        index, vecs = _read_part(part, "index", "vectors")
        if vecs.ndim != 2 or len(vecs) != len(index):
            raise ValueError(f"{part} holds {len(index)} indices but vectors of shape {vecs.shape}; pass --overwrite")
        if matrix is None:
            matrix = np.empty((total, vecs.shape[1]), dtype=np.float32)
        matrix[index] = vecs
    return matrix


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
    matrix = _joined(record, len(items))  # (N, C), rows in input order: items[i].index == i
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
