"""Where the caches live, and writing a text file so that no reader, and no crash, ever sees half of it (weights:
`weights.save_safetensors`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("neurallayers")


def default_cache_dir() -> str:
    """Token caches and built kernels: $NEURALLAYERS_CACHE, else ~/.cache/neurallayers (DataConfig.cache_dir
    overrides it for a run's tokens)."""
    return os.environ.get("NEURALLAYERS_CACHE") or str(Path.home() / ".cache" / "neurallayers")


class WriteError(OSError):
    """A file the run needs could not be written (disk full, permissions): said in one line, what was there intact."""

    def __str__(self) -> str:  # the message, without OSError's "[Errno 28]" before it
        return self.strerror or super().__str__()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` (UTF-8) beside `path` under a temporary name, fsyncs it, then renames it over `path` and fsyncs
    the folder: a reader, or a power cut, sees the old file or the new one, never a part or an empty file.

    Raises:
        WriteError: naming the file and why (disk full, permissions); the temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            keep_mode(path, tmp)  # before the text goes in: a private file's is never readable to others
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        kept = "; the previous file is intact" if path.is_file() else ""
        raise WriteError(e.errno, f"could not write {path}: {e.strerror or e}{kept}") from e
    finally:
        with contextlib.suppress(OSError):  # a read-only file system refuses even to remove a file that is not there
            tmp.unlink(missing_ok=True)
    return path


def keep_mode(old: Path, new: Path) -> bool:
    """Give `new`, about to replace `old`, the permissions `old` has (True), or leave it the new file's (False: no
    `old`): made anew, a config.yaml chmod'ed 600 came back readable to everyone once a resume rewrote it. Best effort:
    vfat and exFAT (Linux) refuse with EPERM a mode they cannot store."""
    try:
        mode = old.stat().st_mode & 0o777  # the permission bits only: never a set-id bit on new content
    except OSError:
        return False
    try:
        os.chmod(new, mode)
    except OSError:
        pass
    return True


def fsync_dir(path: str | os.PathLike) -> None:
    """Makes a rename inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The file that stands where a folder above `path` must be made (`notes.txt` for `notes.txt/run`), or None:
    checked before any work, since mkdir would fail only when the output is written, as "[Errno 20]"."""
    existing = next((p for p in Path(path).parents if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


@contextlib.contextmanager
def exclusive(lock: Path, busy: str) -> Iterator[None]:
    """Holds the file lock `lock` (created, and removed at the end) while a process writes what it guards: two
    processes writing the same run or output interleave their files into one no resume can use. Where there are no
    file locks (Windows has no fcntl; some network file systems refuse flock) the work goes on unguarded.

    Raises:
        ValueError: `busy`, when another process holds the lock.
        WriteError: the lock file cannot be created there.
    """
    while True:
        try:
            f = lock.open("a")
        except OSError as e:  # a read-only or unwritable folder: what the work itself would meet
            raise WriteError(e.errno, f"could not write {lock.parent}: {e.strerror or e}") from e
        held = _try_lock(f)
        if held is None:
            f.close()
            lock.unlink(missing_ok=True)
            log.warning("no file locks for %s here: a second process writing there would not be refused", lock.parent)
            yield
            return
        if not held:
            f.close()
            raise ValueError(busy)
        try:  # the process that held it may have removed it meanwhile: a lock on that file guards nothing
            if os.fstat(f.fileno()).st_ino == lock.stat().st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    with f:
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)


def _try_lock(f) -> bool | None:
    """Locks open file `f` for this process: True, or False when another holds it; None where locks are missing."""
    try:
        import fcntl
    except ImportError:  # Windows: what the lock guards ran there before the lock, so it still must
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP: a file system without flock
        return None
    return True


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host; True where that cannot be told (another user's process, or Windows,
    where os.kill ends the process whatever the signal), so that its files are left alone."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's process
        return True
    return True
