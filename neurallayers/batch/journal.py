"""The files a run writes: atomic writes, the progress record `<output>.progress.json` and the JSONL output, appended
a batch at a time and counted only once on disk, then put in input order at the end."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from neurallayers.batch.fingerprint import _changes
from neurallayers.batch.inputs import BatchItem
from neurallayers.files import WriteError, fsync_dir

FORMAT = "neurallayers-batch/1"


def _write_atomic(path: Path, write) -> None:
    """Call write(binary file) on a temp name beside `path`, fsync, rename over `path`, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise _write_failed(e, path) from e
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)  # a no-op where folders cannot be opened (Windows)


def _write_failed(e: OSError, path: Path) -> WriteError:
    """One line for a failed write (a full disk: a 28-line traceback before), saying that nothing done is lost."""
    return WriteError(e.errno, f"could not write {path}: {e.strerror or e}; the results written before are kept: "
                               "run the same command again to go on")


def _write_json(path: Path, data: dict) -> None:
    _write_atomic(path, lambda f: f.write(json.dumps(data, indent=1).encode()))


# ----- the progress record and the JSONL journal -----
class _Progress:
    """`<output>.progress.json`: the fingerprint, committed output bytes (JSONL) and whether the run is done."""

    def __init__(self, output: Path, fingerprint: dict, total: int) -> None:
        self.path = output.with_name(output.name + ".progress.json")
        self.parts = output.with_name(output.name + ".parts")
        self.output = output
        self.data = {"format": FORMAT, "fingerprint": fingerprint, "total": total, "committed_bytes": 0,
                     "complete": False}

    def open(self, *, overwrite: bool) -> dict | None:
        """Start fresh (None) or return the earlier run's record after checking it may be resumed."""
        if overwrite:
            for p in (self.output, self.path):
                p.unlink(missing_ok=True)
            shutil.rmtree(self.parts, ignore_errors=True)
        if not self.path.is_file():
            if self.output.exists() and self.output.stat().st_size > 0:
                raise ValueError(f"{self.output} exists and is not the output of an interrupted batch run (no "
                                 f"{self.path.name}); pass --overwrite to replace it or choose another --output")
            shutil.rmtree(self.parts, ignore_errors=True)
            self.save()
            return None
        try:
            old = json.loads(self.path.read_text())
        except ValueError:
            old = None
        if not isinstance(old, dict) or old.get("format") != FORMAT:
            raise ValueError(f"{self.path} is not a batch progress record; remove it or pass --overwrite")
        changed = _changes(old.get("fingerprint", {}), self.data["fingerprint"])
        if changed:
            raise ValueError(f"cannot resume into {self.output}: changed since that run started: {'; '.join(changed)}. "
                             "Run with the same input, settings and model, or pass --overwrite to start again")
        if (old["committed_bytes"] or old["complete"]) and not self.output.is_file():
            raise ValueError(f"{self.output} is missing but {self.path.name} records results in it; pass --overwrite "
                             "to start again")
        self.data.update(committed_bytes=old["committed_bytes"], complete=old["complete"])
        return old

    def save(self) -> None:
        _write_json(self.path, self.data)


def _resume_jsonl(progress: _Progress, items: list[BatchItem], *,
                  key: str = "id") -> tuple[dict[str, tuple[int, int]], int]:
    """Where the earlier run's result lines are, by the JSON of their `key` field ("custom_id" for OpenAI Batch
    results): (offset, length) in the output, after cutting it back to its committed length."""
    out, committed = progress.output, progress.data["committed_bytes"]
    out.touch()
    size = out.stat().st_size
    if size < committed:
        raise ValueError(f"{out} is shorter ({size} bytes) than its progress record says ({committed}): it was changed "
                         "outside this run; pass --overwrite to start again")
    repaired = size - committed
    if repaired:
        with out.open("r+b") as f:  # a torn line or a batch not yet committed: recompute it
            f.truncate(committed)
            os.fsync(f.fileno())
    known = {it.key for it in items}
    done: dict[str, tuple[int, int]] = {}
    offset = 0
    with out.open("rb") as f:
        for n, line in enumerate(f, start=1):
            try:
                rid = json.dumps(json.loads(line)[key])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{out} line {n} is not a batch result; pass --overwrite to start again") from None
            if rid not in known or rid in done:
                raise ValueError(f"{out} line {n}: {key} {rid} is not in the input or answered twice; pass "
                                 "--overwrite")
            done[rid] = offset, len(line)
            offset += len(line)
    return done, repaired


def _append(progress: _Progress, lines: list[bytes]) -> None:
    """Whole lines, fsync'd, then counted in the progress record: a kill leaves at most an uncounted tail."""
    try:
        with progress.output.open("ab") as f:
            f.write(b"".join(lines))
            f.flush()
            os.fsync(f.fileno())
            progress.data["committed_bytes"] = f.tell()
    except OSError as e:  # the uncounted tail is cut off on resume
        raise _write_failed(e, progress.output) from e
    progress.save()


def _finish_jsonl(progress: _Progress, items: list[BatchItem], *, key: str = "id") -> None:
    """Rewrite the output in input order (atomically) and mark the run complete. Line by line: the results of a large
    file were held in memory twice over."""
    done, _ = _resume_jsonl(progress, items, key=key)

    def write(f) -> None:
        with progress.output.open("rb") as results:
            for it in items:
                offset, length = done[it.key]
                results.seek(offset)
                f.write(results.read(length))

    _write_atomic(progress.output, write)
    progress.data.update(committed_bytes=progress.output.stat().st_size, complete=True)
    progress.save()


def _line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
