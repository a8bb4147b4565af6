"""Under `torchrun --nproc_per_node 2` (gloo): bf16 with gradient accumulation resumes loss for loss under DDP and
FSDP2; a run with the same global batch goes on under another number of processes (2 -> 1, 1 -> 2) as if it had not
changed, without dropout; with dropout (each process seeds its own masks) the resume says the losses differ."""

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nl_train_helpers import child_env, step_losses, tiny_run

from neurallayers.training import fit

# argv: root, which holds the configs bf16.yaml, plain.yaml (no dropout) and dropout.yaml, and the run one-to-two
# that one process began. The runs stopped at step 2 here go on in one process (the test), and one-to-two here.
DRIVER = """
import sys
from pathlib import Path
import torch.distributed as dist
from neurallayers.training import RunConfig, fit
root = Path(sys.argv[1])
dist.init_process_group("gloo")  # one group for all fits of this launch; fit() leaves a caller's group open
for mode in ("ddp", "fsdp"):  # bf16, grad_accum 2: straight, and stopped at step 3 then resumed
    run = RunConfig.from_yaml(root / "bf16.yaml")
    run.train.distributed = mode
    fit(run, root / f"bf16-{mode}-straight", progress=False)
    fit(run, root / f"bf16-{mode}-split", progress=False, until_step=3)
    fit(run, root / f"bf16-{mode}-split", resume=True, progress=False)
plain = RunConfig.from_yaml(root / "plain.yaml")
fit(plain, root / "two-straight", progress=False)
fit(plain, root / "two-to-one", progress=False, until_step=2)
fit(plain, root / "one-to-two", resume=True, progress=False)  # begun by one process with batch 4
fit(RunConfig.from_yaml(root / "dropout.yaml"), root / "dropout", progress=False, until_step=2)
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_bf16_accumulation_resumes_and_the_process_count_may_change(tmp_path, caplog):
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("torchrun not installed next to the interpreter")
    bf16 = tiny_run(
        tmp_path, max_steps=6, save_interval=3, eval_interval=3, batch_size=2, grad_accum=2, precision="bf16"
    )
    bf16.to_yaml(tmp_path / "bf16.yaml")
    # batch 2 a process (4 in all), no dropout; the one-process halves take batch 4
    plain = tiny_run(
        tmp_path, model={"dropout": 0.0}, max_steps=4, save_interval=2, eval_interval=2, batch_size=2, distributed="ddp"
    )
    plain.to_yaml(tmp_path / "plain.yaml")
    one = dataclasses.replace(plain, train=dataclasses.replace(plain.train, batch_size=4, distributed="none"))
    dataclasses.replace(plain, model=dataclasses.replace(plain.model, dropout=0.1)).to_yaml(tmp_path / "dropout.yaml")
    fit(one, tmp_path / "one-to-two", progress=False, until_step=2)
    (tmp_path / "driver.py").write_text(DRIVER)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(tmp_path / "driver.py"),
            str(tmp_path),
        ],
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for mode in ("ddp", "fsdp"):
        straight, split = step_losses(tmp_path / f"bf16-{mode}-straight"), step_losses(tmp_path / f"bf16-{mode}-split")
        assert sorted(straight) == [1, 2, 3, 4, 5, 6] and straight == split, mode
    fit(one, tmp_path / "two-to-one", resume=True, progress=False)
    straight = step_losses(tmp_path / "two-straight")
    for name in ("two-to-one", "one-to-two"):
        losses = step_losses(tmp_path / name)
        assert sorted(losses) == [1, 2, 3, 4], name
        assert all(abs(losses[s] - straight[s]) < 1e-5 for s in straight), (name, losses, straight)
    with_dropout = dataclasses.replace(one, model=dataclasses.replace(one.model, dropout=0.1))
    with caplog.at_level("INFO", logger="neurallayers"):
        fit(with_dropout, tmp_path / "dropout", resume=True, progress=False)
    assert (
        "the checkpoint was written by 2 processes and this run has 1: the batches are the same 4 sequences, but "
        "dropout draws other masks, so the losses differ from an uninterrupted run" in caplog.text
    )
