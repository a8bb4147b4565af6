"""Dtypes through a run's life: bf16 autocast trains and saves float32 master weights (and optimizer state), a resume
goes on in float32, and a checkpoint's weights load in the dtype they are stored in, bit for bit."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
from nl_train_helpers import tiny_run

from neurallayers import load
from neurallayers.training import fit, list_checkpoints, load_checkpoint, load_run
from neurallayers.weights import read_safetensors, save_safetensors


@pytest.fixture(scope="module")
def autocast_run(tmp_path_factory):
    """A 4-step run under bf16 autocast with checkpoints at steps 2 and 4."""
    tmp = tmp_path_factory.mktemp("bf16")
    run = tiny_run(tmp, max_steps=4, save_interval=2, eval_interval=2, precision="bf16")
    fit(run, tmp / "run", progress=False)
    return run, tmp / "run"


def _dtypes(sd: dict) -> set[torch.dtype]:
    return {v.dtype for v in sd.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}


def test_bf16_autocast_saves_float32_master_weights_and_optimizer_state(autocast_run, tmp_path):
    run, run_dir = autocast_run
    assert _dtypes(read_safetensors(run_dir / "model.safetensors")) == {torch.float32}
    for checkpoint in list_checkpoints(run_dir):
        weights, state = load_checkpoint(checkpoint)
        assert _dtypes(weights) == {torch.float32}
        moments = [v for slots in state["optimizer"]["state"].values() for k, v in slots.items() if k != "step"]
        assert moments and _dtypes(dict(enumerate(moments))) == {torch.float32}  # AdamW's exp_avg, exp_avg_sq
    model, _ = load(run_dir)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # a resume goes on in float32 too
    shutil.copytree(run_dir, tmp_path / "run")
    longer = dataclasses.replace(run, train=dataclasses.replace(run.train, max_steps=6))
    fit(longer, tmp_path / "run", resume=True, progress=False)
    weights, state = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    assert state["step"] == 6 and _dtypes(weights) == {torch.float32}


@pytest.mark.filterwarnings("ignore:fp16 weights on a CPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_checkpoint_loads_in_the_dtype_it_stores(autocast_run, tmp_path, dtype):
    run_dir = shutil.copytree(autocast_run[1], tmp_path / "run")
    step = list_checkpoints(run_dir)[0]
    stored = {k: v.to(dtype) for k, v in read_safetensors(step / "model.safetensors").items()}
    save_safetensors(stored, step / "model.safetensors")
    model, _ = load(step)
    loaded = model.state_dict()
    assert _dtypes(loaded) == {dtype} and all(torch.equal(loaded[k], stored[k]) for k in stored)
    # a run without model.safetensors loads its newest checkpoint's, likewise
    newest = list_checkpoints(run_dir)[-1]
    save_safetensors(stored, newest / "model.safetensors")
    (run_dir / "model.safetensors").unlink()
    model, _, _ = load_run(run_dir)
    loaded = model.state_dict()
    assert _dtypes(loaded) == {dtype} and all(torch.equal(loaded[k], stored[k]) for k in stored)
