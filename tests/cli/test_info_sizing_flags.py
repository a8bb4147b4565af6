"""`info --context` and `--batch-size` size one model's figures: where there are none for them to size (the list of
presets; the KV cache an encoder does not have) they were ignored without a word, as if the table answered them."""

from __future__ import annotations

import pytest

from neurallayers.__main__ import main


@pytest.mark.parametrize(("args", "said"), [
    (["--context", "1024"], "--context 1024: the list of presets has no figures to size; name the model too, e.g. "
                            "`neurallayers info gpt2 --context 1024`"),
    (["--batch-size", "4"], "--batch-size 4: the list of presets has no figures to size"),
    (["bert-tiny", "--batch-size", "4"], "--batch-size 4 sizes the KV-cache figure, and an encoder has no KV cache: "
                                         "leave it out"),
])
def test_a_sizing_flag_with_nothing_to_size_is_refused(args: list[str], said: str, capsys):
    assert main(["info", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"neurallayers info: error: {said}") and err.count("\n") == 1, err


def test_they_size_what_they_name(capsys):
    from neurallayers.config import ModelConfig

    assert main(["info", "bert-tiny", "--context", "64"]) == 0  # an encoder's FLOPs at that context
    assert "(context 64)" in capsys.readouterr().out
    assert main(["info", "tiny", "--batch-size", "4"]) == 0
    kv = ModelConfig.from_name("tiny").kv_cache_bytes(128, batch_size=4) / 1024  # bf16, the preset's context
    assert f"{kv:.1f} KiB bf16" in capsys.readouterr().out and kv == 256
