"""Loading options checked as nl.load checks them, on every way in."""

import re

import numpy as np
import pytest

import neurallayers as nl
from neurallayers.interop.hf_files import read_hf_weights


def test_load_minilm_names_a_bad_device():
    # load_hf alone: torch's "Expected one of cpu, cuda, ipu, xpu, mkldnn, ..." RuntimeError
    with pytest.raises(ValueError, match="device"):
        nl.load_minilm(device="tpu")


@pytest.mark.parametrize("value", ["false", "no", 1, None])
def test_allow_pickle_must_be_a_bool(tmp_path, value):
    """allow_pickle="false" is truthy: a folder of pickle weights went on to be unpickled."""
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"allow_pickle=.*: must be True or False"):
        read_hf_weights(tmp_path, allow_pickle=value)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from neurallayers.config import ModelConfig
    from neurallayers.data import Tokenizer
    from neurallayers.interop import convert, save_hf

    tmp = tmp_path_factory.mktemp("run")
    cfg = ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)
    save_hf(nl.build_model(cfg), Tokenizer.train_char(["the quick brown fox"]), tmp / "hf")
    return convert(tmp / "hf", tmp / "run", to="run")


@pytest.mark.parametrize("device", [-1, np.int64(-1)])
def test_load_takes_an_int_device_as_pipeline_and_transformers_do(tiny_run, device):
    """pipeline(device=-1) loads on the CPU (transformers' spelling; N is cuda:N), but nl.load(device=-1), which the
    pipeline's docstring says it loads as, refused it as "device='-1': expected 'auto', 'cpu', ..."."""
    model, _ = nl.load(tiny_run, device=device)
    assert next(model.parameters()).device.type == "cpu"


def test_an_int_gpu_index_is_read_as_cuda_n(tiny_run, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device='cuda:1' but no CUDA device is available; use 'auto' or 'cpu'$"):
        nl.load(tiny_run, device=1)
    with pytest.raises(ValueError, match=r"^device='cuda:0' but no CUDA device is available"):
        nl.pipeline("text-generation", model=str(tiny_run), device=np.int64(0))


@pytest.mark.parametrize("device, kind", [(True, "bool"), (1.0, "float"), (["cpu"], "list")])
def test_a_device_of_another_type_is_named_as_given(tiny_run, device, kind):
    """device=True was read as the name 'True' ("device='True': expected ..."), naming a str that was never given."""
    said = f"device={device!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' (or a GPU index), got {kind}"
    with pytest.raises(ValueError, match=f"^{re.escape(said)}$"):
        nl.load(tiny_run, device=device)
