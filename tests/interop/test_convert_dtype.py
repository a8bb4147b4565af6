"""convert keeps the source's weight dtype, as transformers 5's from_pretrained and save_pretrained do (HF -> run ->
HF wrote float32 from a bf16 folder, twice its size), and `dtype=` / `--dtype` chooses another."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers.data.tokenizers import Tokenizer  # noqa: E402
from neurallayers.interop import convert  # noqa: E402

VOCAB = 64


def _hf_folder(path, dtype: torch.dtype, *, name_dtype: bool = True) -> dict[str, torch.Tensor]:
    """A tiny Llama saved by transformers in `dtype`; its stored weights."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    transformers.LlamaForCausalLM(cfg).to(dtype).save_pretrained(path)
    tok = Tokenizer.train_char(["some text for a char tokenizer"])  # a run directory needs one
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, eos_token=tok.eos_token).save_pretrained(path)
    if not name_dtype:  # an older folder: config.json names no dtype, its weights say
        config = json.loads((path / "config.json").read_text())
        config.pop("dtype", None)
        config.pop("torch_dtype", None)
        (path / "config.json").write_text(json.dumps(config))
    return load_file(path / "model.safetensors")


def _written(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name_dtype", [True, False])
def test_hf_to_run_to_hf_keeps_the_sources_dtype(tmp_path, dtype, name_dtype):
    source = _hf_folder(tmp_path / "src", dtype, name_dtype=name_dtype)
    run = convert(tmp_path / "src", tmp_path / "run", to="run")
    stored = _written(run)
    assert {v.dtype for v in stored.values()} == {dtype}
    back = convert(run, tmp_path / "back", to="hf")
    assert json.loads((back / "config.json").read_text())["dtype"] == str(dtype).removeprefix("torch.")
    written = _written(back)
    assert set(written) == set(source) and all(torch.equal(written[k], source[k]) for k in source)
    # and transformers' own round trip (from_pretrained, save_pretrained) keeps it too: the oracle for the default
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "src")
    hf.save_pretrained(tmp_path / "hf_again")
    assert {v.dtype for v in _written(tmp_path / "hf_again").values()} == {dtype}


@pytest.mark.parametrize(("name", "want"), [("fp32", torch.float32), ("float16", torch.float16),
                                            (torch.bfloat16, torch.bfloat16)])
def test_dtype_chooses_the_written_dtype(tmp_path, name, want):
    source = _hf_folder(tmp_path / "src", torch.bfloat16)
    out = convert(tmp_path / "src", tmp_path / "out", to="hf", dtype=name)
    written = _written(out)
    assert {v.dtype for v in written.values()} == {want}
    assert json.loads((out / "config.json").read_text())["dtype"] == str(want).removeprefix("torch.")
    assert all(torch.equal(written[k], source[k].to(want)) for k in source)
    run = convert(tmp_path / "src", tmp_path / "run", to="run", dtype=name)
    assert {v.dtype for v in _written(run).values()} == {want}


def test_the_cli_takes_dtype_and_names_a_bad_one(tmp_path):
    _hf_folder(tmp_path / "src", torch.float32)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cli = [sys.executable, "-m", "neurallayers", "convert", str(tmp_path / "src")]
    done = subprocess.run([*cli, str(tmp_path / "out"), "--to", "hf", "--dtype", "bf16"], env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert {v.dtype for v in _written(tmp_path / "out").values()} == {torch.bfloat16}
    bad = subprocess.run([*cli, str(tmp_path / "bad"), "--dtype", "int8"], env=env, capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and "--dtype: invalid choice: 'int8'" in bad.stderr
    with pytest.raises(ValueError, match=r"^dtype='int8': expected a torch.dtype or one of"):
        convert(tmp_path / "src", tmp_path / "bad", dtype="int8")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(("key", "name"), [("dtype", "half"), ("torch_dtype", "bfloat16"), ("dtype", "float32")])
def test_convert_reads_the_config_dtype_as_transformers_does(tmp_path, key, name):
    """The dtype config.json names, read as transformers 5 reads it (getattr(torch, name): "half" is float16), the
    same rule as load(dtype="auto"): convert wrote float32 for "half", where transformers keeps float16."""
    _hf_folder(tmp_path / "src", torch.float16 if name == "half" else torch.bfloat16, name_dtype=False)
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps({**config, key: name}))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "src")
    hf.save_pretrained(tmp_path / "hf_again")
    want = {v.dtype for v in _written(tmp_path / "hf_again").values()}
    out = convert(tmp_path / "src", tmp_path / "out", to="hf")
    assert {v.dtype for v in _written(out).values()} == want
    run = convert(tmp_path / "src", tmp_path / "run", to="run")
    assert {v.dtype for v in _written(run).values()} == want


def test_convert_names_a_config_dtype_transformers_cannot_read(tmp_path):
    """A dtype no torch name (transformers fails on it) is named, as load(dtype="auto") names it, rather than
    converted as float32; --dtype chooses one instead."""
    _hf_folder(tmp_path / "src", torch.bfloat16)
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps({**config, "dtype": "torch.bfloat16"}))
    with pytest.raises(ValueError, match=r"config.json: dtype='torch.bfloat16' is no weight dtype"):
        convert(tmp_path / "src", tmp_path / "out", to="hf")
    assert not (tmp_path / "out").exists()
    out = convert(tmp_path / "src", tmp_path / "out", to="hf", dtype="bf16")
    assert {v.dtype for v in _written(out).values()} == {torch.bfloat16}
