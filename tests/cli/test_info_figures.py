"""The figures `neurallayers info` prints, whatever their size."""

from pathlib import Path

from neurallayers.__main__ import main
from neurallayers.config import ModelConfig


def test_info_prints_an_encoder_too_large_for_a_float(tmp_path: Path, capsys):
    """An encoder of 10**400 layers (no KV cache, so no size limit refuses it) made `info` fail with OverflowError
    at n / 1e6: its figures are past a float's range."""
    path = tmp_path / "huge.yaml"
    path.write_text(f"preset: bert-tiny\nn_layer: {10**400}\n")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    n = ModelConfig.from_file(path).param_count()
    assert f"parameters       {n:,} (19827200" in out and n > 10**405
    assert "FLOPs per token  forward 6.55e+393 TFLOP, training 1.97e+394 TFLOP (context 512)" in out
    assert "weights          fp32 72130933403968" in out and " TiB, bf16/fp16 36065466701984" in out
