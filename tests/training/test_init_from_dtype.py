"""Fine-tuning from a bf16 source (a Hugging Face folder, or a run that stores bf16 and loads as bf16): the run's master
weights are float32, holding the source's values exactly, and AdamW's state is float32 under bf16 autocast, as litgpt
and transformers' Trainer keep them."""

from __future__ import annotations

import pytest
import torch
from nl_train_helpers import write_corpus

from neurallayers import ModelConfig, build_model, load
from neurallayers.data import Tokenizer
from neurallayers.interop import convert, save_hf
from neurallayers.training import RunConfig, fit, list_checkpoints, load_checkpoint
from neurallayers.training.init_from import load_source
from neurallayers.weights import read_safetensors

TEXT = "the quick brown fox jumps over a lazy dog and then runs away to find food in the old forest\n"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A bf16 Hugging Face folder and the run converted from it (which stores bf16)."""
    tmp = tmp_path_factory.mktemp("bf16")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=32, norm="rmsnorm", mlp="swiglu",
                      position="rope", bias=False, dropout=0.0)
    save_hf(build_model(cfg).to(torch.bfloat16), Tokenizer.train_char([TEXT]), tmp / "hf")
    run = convert(tmp / "hf", tmp / "run", to="run")
    return {"hf": tmp / "hf", "run": run}


@pytest.mark.parametrize("kind", ["hf", "run"])
def test_fine_tuning_a_bf16_source_keeps_float32_master_weights(sources, tmp_path, kind):
    src = sources[kind]
    stored = {k: v.detach() for k, v in load(src, dtype="bf16")[0].state_dict().items()}  # our names, bit for bit
    if kind == "run":
        assert {v.dtype for v in read_safetensors(src / "model.safetensors").values()} == {torch.bfloat16}
        assert {p.dtype for p in load(src)[0].parameters()} == {torch.bfloat16}  # the stored dtype
    source = load_source(str(src))
    model = build_model(source.config)
    source.load_into(model)
    weights = model.state_dict()
    assert {v.dtype for v in weights.values()} == {torch.float32}
    assert all(torch.equal(weights[k], stored[k].float()) for k in stored)
    run = RunConfig.from_dict({
        "train": dict(init_from=str(src), max_steps=2, batch_size=2, lr=1e-3, warmup_steps=1, eval_interval=0,
                      log_interval=1, save_interval=2, sample_tokens=0, device="cpu", precision="bf16", seed=3),
        "data": {"source": str(write_corpus(tmp_path / "corpus.txt", n_lines=40)), "cache_dir": str(tmp_path / "c")}})
    fit(run, tmp_path / "ft", progress=False)
    assert {v.dtype for v in read_safetensors(tmp_path / "ft/model.safetensors").values()} == {torch.float32}
    weights, state = load_checkpoint(list_checkpoints(tmp_path / "ft")[-1])
    assert {v.dtype for v in weights.values()} == {torch.float32}
    moments = [v for slots in state["optimizer"]["state"].values() for k, v in slots.items() if k != "step"]
    assert moments and {v.dtype for v in moments} == {torch.float32}
