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
