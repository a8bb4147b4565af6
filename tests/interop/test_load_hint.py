"""load() names a preset only where it was given a preset's name, not a path."""

from __future__ import annotations

import pytest

from neurallayers.api import load


@pytest.mark.parametrize("path", ["./tiny", "tiny/"])
def test_a_missing_path_spelt_as_a_path_gets_no_preset_hint(tmp_path, monkeypatch, path):
    """load("./tiny") of a folder not made yet said "'tiny' is a preset": a path is never a preset (as `info` reads
    it), the user named a folder of theirs."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as missing:
        load(path)
    assert "preset" not in str(missing.value)
    with pytest.raises(FileNotFoundError, match="'tiny' is a preset"):
        load("tiny")
