"""files.write_text_atomic: the old file or the new one, never a part, and no temporary file left behind."""

import os

import pytest

from neurallayers.files import write_text_atomic


def test_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "a.json"
    assert write_text_atomic(path, "first ü\n") == path and path.read_text(encoding="utf-8") == "first ü\n"
    write_text_atomic(str(path), "second")
    assert path.read_text() == "second" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text("old")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_text_atomic(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names the fsynced files through /proc")
def test_the_text_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """A power cut after the rename could leave config.yaml or tokenizer.json empty: nothing was fsynced."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "config.yaml"
    write_text_atomic(path, "model: {}\n")
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert ".config.yaml.tmp-" in events[0][1] and events[1][1] == str(path) and events[2][1] == str(tmp_path)


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """The OSError went out of `train` as a traceback ("[Errno 28] ... .config.yaml.tmp-123")."""
    from neurallayers.cli.common import USER_ERRORS
    from neurallayers.files import WriteError

    path = tmp_path / "config.yaml"
    path.write_text("old")
    real_open = type(path).open

    def full(self, *a, **kw):
        if ".tmp-" in self.name:
            raise OSError(28, "No space left on device", str(self))
        return real_open(self, *a, **kw)

    monkeypatch.setattr(type(path), "open", full)
    with pytest.raises(WriteError) as e:
        write_text_atomic(path, "new")
    assert str(e.value) == f"could not write {path}: No space left on device; the previous file is intact"
    assert isinstance(e.value, USER_ERRORS) and e.value.errno == 28
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_a_rewritten_file_keeps_its_permissions(tmp_path):
    """A run's files are rewritten whole (config.yaml and tokenizer.json on every resume, model.safetensors at every
    better evaluation): each came back with the umask's 0o644, so a file its owner had made private (0o600) became
    readable to everyone on the machine. A new file still gets the umask's."""
    import torch

    from neurallayers.weights import save_safetensors

    old = os.umask(0o022)
    try:
        for name, write in (("config.yaml", lambda p: write_text_atomic(p, "model: {}\n")),
                            ("model.safetensors", lambda p: save_safetensors({"w": torch.zeros(2)}, p))):
            path = tmp_path / name
            write(path)
            assert path.stat().st_mode & 0o777 == 0o644, name
            path.chmod(0o600)
            write(path)
            assert path.stat().st_mode & 0o777 == 0o600, name
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "model.safetensors"]


def _read_only(monkeypatch, folder):
    """Linux on a read-only mount: creating a file there fails with EROFS, and so does unlink, even of a file that is
    not there (the mount is checked before the name)."""
    import errno
    from pathlib import Path

    def refuse(name):
        def call(self, *args, **kwargs):
            if self.parent == folder:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            return real[name](self, *args, **kwargs)
        return call

    real = {name: getattr(Path, name) for name in ("open", "unlink")}
    for name in real:
        monkeypatch.setattr(Path, name, refuse(name))


def test_a_read_only_folder_is_a_write_error_naming_the_file(tmp_path, monkeypatch):
    """`train --resume` of a run on a read-only mount ended in a traceback: the cleanup's unlink of the temporary
    file that was never made raised EROFS over the WriteError."""
    from neurallayers.files import WriteError

    path = tmp_path / "metrics.jsonl"
    path.write_text("old")
    _read_only(monkeypatch, tmp_path)
    with pytest.raises(WriteError) as e:
        write_text_atomic(path, "new")
    assert str(e.value) == f"could not write {path}: Read-only file system; the previous file is intact"


def test_a_lock_in_a_read_only_folder_is_a_write_error(tmp_path, monkeypatch):
    from neurallayers.files import WriteError, exclusive

    _read_only(monkeypatch, tmp_path)
    with pytest.raises(WriteError, match=f"could not write {tmp_path}: Read-only file system"):
        with exclusive(tmp_path / ".lock", "busy"):
            pass
