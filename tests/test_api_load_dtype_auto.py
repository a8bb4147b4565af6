"""dtype="auto" (transformers 5's default): the dtype the checkpoint stores. For a Hugging Face folder the
config.json's dtype (or torch_dtype), else the first weight file's first floating-point tensor, proven against
transformers' from_pretrained(dtype="auto") on the same folders; for a run what dtype=None keeps."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from neurallayers import ModelConfig, build_model, load, pipeline
from neurallayers.data import Tokenizer
from neurallayers.interop import convert, load_hf, save_hf

CFG = ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16, norm="rmsnorm", mlp="swiglu",
                  position="rope", bias=False)
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


@pytest.fixture(scope="module")
def fp32_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf32")
    torch.manual_seed(0)
    save_hf(build_model(CFG), Tokenizer.train_char(["the quick brown fox jumps over a lazy dog"]), path)
    return path


def _folder(src, dest, *, config: dict, dtype_of) -> None:
    """A copy of `src` whose config.json has `config` in place of its dtype entries and whose weights store each
    tensor in `dtype_of(name)`."""
    dest.mkdir()
    for name in os.listdir(src):
        if name not in ("config.json", "model.safetensors"):
            os.symlink(src / name, dest / name)
    hf = {k: v for k, v in json.loads((src / "config.json").read_text()).items() if k not in ("dtype", "torch_dtype")}
    (dest / "config.json").write_text(json.dumps({**hf, **config}))
    sd = load_file(src / "model.safetensors")
    save_file({k: v.to(dtype_of(k)) for k, v in sd.items()}, dest / "model.safetensors", metadata={"format": "pt"})


def _transformers_dtype(path) -> torch.dtype:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype="auto").dtype


# (config.json's dtype entries, weights' dtype: one for all, or (attention's, the rest's))
CASES = [({"dtype": "float32"}, F32), ({"dtype": "bfloat16"}, BF16), ({"dtype": "float16"}, F16),
         ({"dtype": "bfloat16"}, F32), ({"torch_dtype": "float16"}, BF16),
         ({"dtype": "float32", "torch_dtype": "bfloat16"}, BF16),
         ({}, BF16), ({}, F16), ({}, (F16, F32)), ({}, (F32, BF16)),
         ({"dtype": "half"}, F32)]  # torch's alias, read as transformers reads it: getattr(torch, name)


@pytest.mark.parametrize(("config", "stored"), CASES)
def test_auto_loads_the_dtype_transformers_5_loads(fp32_folder, tmp_path, config, stored):
    pair = stored if isinstance(stored, tuple) else (stored, stored)
    _folder(fp32_folder, tmp_path / "m", config=config, dtype_of=lambda k: pair[int(".self_attn." not in k)])
    want = _transformers_dtype(tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp16 on a CPU warns that it is slow
        model, _ = load(tmp_path / "m", dtype="auto")
        also = load_hf(tmp_path / "m", dtype="auto")[0]
    assert {p.dtype for p in model.parameters()} == {want} == {p.dtype for p in also.parameters()}
    stored_wte = load_file(tmp_path / "m" / "model.safetensors")["model.embed_tokens.weight"]
    assert torch.equal(model.wte.weight, stored_wte.to(want))
    # dtype=None keeps transformers 4's float32
    assert {p.dtype for p in load(tmp_path / "m")[0].parameters()} == {F32}


def test_a_config_dtype_auto_cannot_load_is_refused_naming_it(fp32_folder, tmp_path):
    _folder(fp32_folder, tmp_path / "m", config={"torch_dtype": "int8"}, dtype_of=lambda _: F32)
    with pytest.raises(ValueError, match=r"config.json: torch_dtype='int8' is no weight dtype dtype='auto' can load"):
        load(tmp_path / "m", dtype="auto")
    with pytest.raises(ValueError, match=r"dtype='bogus': expected a torch.dtype or one of fp32, .*, auto$"):
        load(tmp_path / "m", dtype="bogus")


def test_auto_keeps_a_runs_stored_dtype_and_reaches_the_pipeline(fp32_folder, tmp_path):
    _folder(fp32_folder, tmp_path / "bf16", config={"dtype": "bfloat16"}, dtype_of=lambda _: BF16)
    run = convert(tmp_path / "bf16", tmp_path / "run", to="run")  # a run converted from bf16 stores bf16
    assert next(load(run, dtype="auto")[0].parameters()).dtype == next(load(run)[0].parameters()).dtype == BF16
    pipe = pipeline("text-generation", model=str(tmp_path / "bf16"), dtype="auto")
    assert next(pipe.model.parameters()).dtype == BF16
    same = pipeline("text-generation", model=(pipe.model, pipe.tokenizer), dtype="auto")  # a pair stays as it is
    assert same.model is pipe.model


def test_auto_reads_the_first_shard_of_a_sharded_folder(tmp_path):
    """No dtype in config.json: transformers reads the first shard file (by name), not the whole index."""
    torch.manual_seed(0)
    save_hf(build_model(CFG), None, tmp_path, max_shard_size=4096)
    shards = sorted(p for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    for i, shard in enumerate(shards):  # the first shard bf16, the rest float16
        sd = load_file(shard)
        save_file({k: v.to(BF16 if i == 0 else F16) for k, v in sd.items()}, shard, metadata={"format": "pt"})
    hf = {k: v for k, v in json.loads((tmp_path / "config.json").read_text()).items() if k != "dtype"}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    want = _transformers_dtype(tmp_path)
    assert want == BF16
    assert {p.dtype for p in load(tmp_path, dtype="auto")[0].parameters()} == {want}
