"""The Python API's load() on names that are no folder."""

from __future__ import annotations

import pytest

from neurallayers.api import load


def test_loading_a_preset_name_says_how_to_build_or_train_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    with pytest.raises(FileNotFoundError, match=r"'gpt2' is a preset.*ModelConfig\.from_name\('gpt2'\).*--preset gpt2"):
        load("gpt2")
    with pytest.raises(FileNotFoundError) as missing:
        load("no-such-model")
    assert "preset" not in str(missing.value)
