"""Resume equivalence under `torchrun --nproc_per_node 2` with gloo, for DDP and FSDP2."""

import shutil
import subprocess
import sys

import pytest
import torch
from nl_train_helpers import child_env, step_losses, tiny_run

from neurallayers.weights import read_safetensors

# argv: config.yaml, root, phase. Phase "first": straight runs and the first halves; "second": the resumes.
DRIVER = """
import sys
from pathlib import Path
import torch.distributed as dist
from neurallayers.training import RunConfig, fit
run, root, phase = RunConfig.from_yaml(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo")  # one group for all fits of this launch; fit() leaves a caller's group open
for mode in ("ddp", "fsdp"):
    run.train.distributed = mode
    if phase == "first":
        fit(run, root / f"{mode}-straight", progress=False)
        fit(run, root / f"{mode}-split", progress=False, until_step=3)
    else:
        fit(run, root / f"{mode}-split", resume=True, progress=False)
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_torchrun_two_processes_resume_exact(tmp_path):
    if shutil.which("torchrun", path=str(__import__("pathlib").Path(sys.executable).parent)) is None:
        pytest.skip("torchrun not installed next to the interpreter")
    # samples at the end: under FSDP every rank must take part in the sharded model's forwards (a hang before)
    run = tiny_run(tmp_path, max_steps=6, save_interval=3, eval_interval=3, batch_size=2, sample_tokens=12,
                   sample_prompts=["the ", "fox"])
    cfg = run.to_yaml(tmp_path / "config.yaml")
    (tmp_path / "driver.py").write_text(DRIVER)
    for phase in ("first", "second"):
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             str(tmp_path / "driver.py"), str(cfg), str(tmp_path), phase],
            env=child_env(tmp_path), capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for mode in ("ddp", "fsdp"):
        a, b = step_losses(tmp_path / f"{mode}-straight"), step_losses(tmp_path / f"{mode}-split")
        assert sorted(a) == [1, 2, 3, 4, 5, 6] and a == b, mode
        wa = read_safetensors(tmp_path / f"{mode}-straight/checkpoints/step-6/model.safetensors")
        wb = read_safetensors(tmp_path / f"{mode}-split/checkpoints/step-6/model.safetensors")
        assert all(torch.equal(wa[k], wb[k]) for k in wa), mode
        samples = (tmp_path / f"{mode}-straight/samples.txt").read_text()
        assert "=== prompt: 'the '" in samples and "=== prompt: 'fox'" in samples, mode
    # Both strategies compute the same global batch: FSDP2's losses match DDP's closely.
    ddp, fsdp = step_losses(tmp_path / "ddp-straight"), step_losses(tmp_path / "fsdp-straight")
    assert all(abs(ddp[s] - fsdp[s]) < 1e-4 for s in ddp)
