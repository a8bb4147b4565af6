"""`neurallayers info` on a path that does not exist says so, as the verbs that load a model do."""

from __future__ import annotations

import pytest

from neurallayers.__main__ import main


@pytest.mark.parametrize("target", ["runs/llama/checkpoints/step-800", "runs/nope", "./nope", "nope/"])
def test_a_missing_run_or_checkpoint_is_named_missing(target, tmp_path, monkeypatch, capsys):
    # a checkpoint pruned by keep_last was "not a preset, a .yaml file or a folder", then the list of presets
    monkeypatch.chdir(tmp_path)
    assert main(["info", target]) == 2
    err = capsys.readouterr().err
    assert err == f"neurallayers info: error: no such run directory or model folder: {target}\n"


def test_a_misspelt_preset_is_still_a_preset_hint(capsys):
    assert main(["info", "gtp2"]) == 2
    assert "'gtp2' is not a preset, a .yaml file or a folder (did you mean 'gpt2'?)" in capsys.readouterr().err


def test_a_file_that_is_no_config_is_still_named_what_it_is_not(tmp_path, capsys):
    weights = tmp_path / "run" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"")
    assert main(["info", str(weights)]) == 2
    assert "is not a preset, a .yaml file or a folder" in capsys.readouterr().err
