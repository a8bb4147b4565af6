"""`neurallayers info` on a quantized Hugging Face folder (a quantization_config in config.json) says so, with its
size on disk, where it showed the unquantized fp32 and bf16 sizes as the folder's."""

from __future__ import annotations

import argparse
import json

import pytest

from neurallayers import ModelConfig, build_model
from neurallayers.cli import info
from neurallayers.interop import save_hf

CFG = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, position="rope", norm="rmsnorm",
                  mlp="swiglu", bias=False)


def _info(folder, capsys) -> str:
    assert info.run(argparse.Namespace(target=str(folder), context=None, batch_size=1)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(("quant", "method"), [
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "gptq, 4-bit"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes, 4-bit"),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "bitsandbytes, 8-bit"),
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "fp8, 8-bit"),
    ({"quant_method": "compressed-tensors"}, "compressed-tensors"),
])
def test_a_quantized_folder_is_described_as_stored(tmp_path, capsys, quant, method):
    save_hf(build_model(CFG), None, tmp_path, max_shard_size=3000)  # sharded: the index's files are counted
    plain = _info(tmp_path, capsys)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "quantization_config": quant}))
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("model-*.safetensors"))
    out = _info(tmp_path, capsys)
    row = next(line for line in out.splitlines() if line.startswith("weights"))
    assert row == (f"weights          quantized ({method}): {info._size(on_disk)} of weight files; unquantized "
                   f"fp32 {info._size(4 * CFG.param_count())}, bf16/fp16 {info._size(2 * CFG.param_count())} "
                   "(NeuralLayers does not load quantized checkpoints)")
    # every other row (parameters, FLOPs, KV cache) is the model's, quantized or not
    assert [line for line in out.splitlines() if not line.startswith("weights")] == \
        [line for line in plain.splitlines() if not line.startswith("weights")]


def test_an_unquantized_folder_keeps_its_dtype_sizes(tmp_path, capsys):
    save_hf(build_model(CFG), None, tmp_path)
    row = next(line for line in _info(tmp_path, capsys).splitlines() if line.startswith("weights"))
    assert row == f"weights          fp32 {info._size(4 * CFG.param_count())}, bf16/fp16 " \
                  f"{info._size(2 * CFG.param_count())}"
