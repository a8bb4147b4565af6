"""The Python API's load() and generation_defaults() on names that are no folder."""

from __future__ import annotations

import pytest

from neurallayers.api import generation_defaults, load


@pytest.mark.parametrize("read", [load, generation_defaults])  # generation_defaults lacked load's hint
def test_a_preset_name_says_how_to_build_or_train_it(tmp_path, monkeypatch, read):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    with pytest.raises(FileNotFoundError, match=r"'gpt2' is a preset.*ModelConfig\.from_name\('gpt2'\).*--preset gpt2"):
        read("gpt2")
    with pytest.raises(FileNotFoundError) as missing:
        read("no-such-model")
    assert "preset" not in str(missing.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"file is a file; give a run directory \(config\.yaml\) or a Hugging Face"):
        read("file")
