"""load() gives weights the dtype a user expects: a run keeps the dtype its model.safetensors stores, bit for bit (as
transformers 5 keeps a folder's), unless `dtype` names another; a Hugging Face folder loads as float32 (transformers
4's default, documented), whatever its config.json names."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file

from neurallayers import ModelConfig, build_model, load
from neurallayers.data import Tokenizer
from neurallayers.interop import convert, save_hf
from neurallayers.nn import cpu
from neurallayers.weights import read_safetensors, save_safetensors

CFG = ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16, norm="rmsnorm", mlp="swiglu",
                  position="rope", bias=False)


def _hf_folder(path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A tiny decoder saved by save_hf in `dtype`; its stored weights."""
    torch.manual_seed(0)
    model = build_model(CFG).to(dtype)
    save_hf(model, Tokenizer.train_char(["the quick brown fox jumps over a lazy dog"]), path)
    return load_file(path / "model.safetensors")


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    """A run directory (converted from a float32 folder) whose weights tests rewrite in other dtypes."""
    tmp = tmp_path_factory.mktemp("run")
    _hf_folder(tmp / "hf", torch.float32)
    return convert(tmp / "hf", tmp / "run", to="run")


def _run_storing(fp32_run, dest, dtype_of) -> dict[str, torch.Tensor]:
    """A copy of `fp32_run` whose model.safetensors stores each tensor in `dtype_of(name)`; the stored tensors."""
    shutil.copytree(fp32_run, dest)
    stored = {k: v.to(dtype_of(k)) for k, v in read_safetensors(dest / "model.safetensors").items()}
    save_safetensors(stored, dest / "model.safetensors")
    return read_safetensors(dest / "model.safetensors")


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_a_run_loads_in_the_dtype_it_stores_bit_for_bit(fp32_run, tmp_path, dtype):
    stored = _run_storing(fp32_run, tmp_path / "run", lambda _: dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp16 on a CPU warns that it is slow
        model, _ = load(tmp_path / "run")
    loaded = _weights(model)
    assert {v.dtype for v in loaded.values()} == {dtype}
    assert set(loaded) == set(stored) and all(torch.equal(loaded[k], stored[k]) for k in stored)
    assert model.lm_head.weight is model.wte.weight  # still tied


@pytest.mark.parametrize(("pair", "want"), [((torch.bfloat16, torch.float16), torch.float32),
                                            ((torch.bfloat16, torch.float32), torch.float32),
                                            ((torch.float32, torch.float64), torch.float64),
                                            ((torch.float8_e4m3fn, torch.bfloat16), torch.float32)])
def test_a_run_mixing_dtypes_loads_in_the_narrowest_that_holds_each_exactly(fp32_run, tmp_path, pair, want):
    stored = _run_storing(fp32_run, tmp_path / "run", lambda name: pair[int(".attn." in name)])
    assert {v.dtype for v in stored.values()} == set(pair)  # both are there
    loaded = _weights(load(tmp_path / "run")[0])
    assert {v.dtype for v in loaded.values()} == {want}
    assert all(torch.equal(loaded[k], stored[k].to(want)) for k in stored)


def test_dtype_names_another_as_a_plain_cast_would(fp32_run, tmp_path):
    bf16 = _run_storing(fp32_run, tmp_path / "bf16", lambda _: torch.bfloat16)
    up = _weights(load(tmp_path / "bf16", dtype="fp32")[0])
    assert all(up[k].dtype == torch.float32 and torch.equal(up[k], bf16[k].float()) for k in bf16)
    fp32 = read_safetensors(fp32_run / "model.safetensors")
    down = _weights(load(fp32_run, dtype=torch.bfloat16)[0])
    assert all(down[k].dtype == torch.bfloat16 and torch.equal(down[k], fp32[k].to(torch.bfloat16)) for k in fp32)


def test_a_bf16_run_on_a_cpu_without_bf16_dot_products_warns(fp32_run, tmp_path, monkeypatch):
    """The warning read the `dtype` argument only: a run stored in bf16 loaded as bf16 without it."""
    monkeypatch.setattr(cpu, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(cpu, "_WARNED_BF16", set())
    _run_storing(fp32_run, tmp_path / "bf16", lambda _: torch.bfloat16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load(fp32_run)
    assert not [w for w in caught if "bf16" in str(w.message)]
    with pytest.warns(UserWarning, match=r"bf16 weights on a CPU without bf16 dot products"):
        load(tmp_path / "bf16")


@pytest.mark.parametrize("named", ["bfloat16", "float32", None])
def test_an_hf_folder_loads_as_float32_whatever_its_config_names(tmp_path, named):
    stored = _hf_folder(tmp_path, torch.bfloat16)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    config.pop("dtype")
    if named is not None:  # transformers 4 wrote torch_dtype
        config["torch_dtype"] = named
    (tmp_path / "config.json").write_text(json.dumps(config))
    model, _ = load(tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    kept = _weights(load(tmp_path, dtype="bf16")[0])
    assert {v.dtype for v in kept.values()} == {torch.bfloat16}
    # the same values by name: ours, saved as an HF folder again, are the stored tensors bit for bit
    save_hf(load(tmp_path, dtype="bf16")[0], None, tmp_path / "again")
    again = load_file(tmp_path / "again" / "model.safetensors")
    assert set(again) == set(stored) and all(torch.equal(again[k], stored[k]) for k in stored)


@pytest.mark.parametrize("name", ["float64", "fp64", "torch.float64"])
def test_float64_by_name_loads_as_the_torch_dtype_does(fp32_run, name):
    """load(dtype=torch.float64) loaded (an oracle's precision), but its name, as transformers' dtype="float64" takes
    it, was refused: "expected a torch.dtype or one of fp32, float32, bf16, bfloat16, fp16, float16, auto"."""
    want = _weights(load(fp32_run, dtype=torch.float64)[0])
    got = _weights(load(fp32_run, dtype=name)[0])
    assert {v.dtype for v in got.values()} == {torch.float64}
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_the_floating_point_refusal_names_every_dtype_weights_take():
    from neurallayers.weights import weight_dtype

    with pytest.raises(ValueError, match=r"^dtype=torch.int8: weights need a floating-point dtype \(float32, bfloat16, "
                                         r"float16, float64\)$"):
        weight_dtype(torch.int8)
