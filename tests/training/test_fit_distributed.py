"""Resume equivalence under `torchrun --nproc_per_node 2` with gloo, for DDP and FSDP2 (the DDP run stopped by a
SIGTERM that reaches one rank only), for a decoder, a masked-LM encoder and a decoder fine-tuned from a run."""

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nl_train_helpers import ENCODER, child_env, step_losses, tiny_run, val_losses

from neurallayers.training import RunConfig, fit
from neurallayers.weights import read_safetensors

# argv: config.yaml, root, phase. Phase "first": straight runs and the first halves; "second": the resumes.
# The DDP first half is stopped by a SIGTERM that only rank 1 gets, in step 3: every rank must stop after it.
DRIVER = """
import os, signal, sys
from pathlib import Path
import torch.distributed as dist
from neurallayers.training import RunConfig, fit, trainer
root, phase = Path(sys.argv[1]), sys.argv[2]
step = trainer._Fit._train_step
def sigterm_on_rank_1(self):
    if self.step == 2 and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGTERM)
    return step(self)
for kind in ("decoder", "encoder", "finetune"):
    run = RunConfig.from_yaml(root / f"{kind}.yaml")
    for mode in ("ddp", "fsdp"):
        run.train.distributed = mode
        out = root / f"{kind}-{mode}"
        if phase == "first":
            fit(run, f"{out}-straight", progress=False)
            if mode == "ddp":
                trainer._Fit._train_step = sigterm_on_rank_1
                r = fit(run, f"{out}-split", progress=False)
                trainer._Fit._train_step = step
                assert (r.steps, r.stopped_reason) == (3, "terminated"), (r.steps, r.stopped_reason)
            else:
                fit(run, f"{out}-split", progress=False, until_step=3)
        else:
            fit(run, f"{out}-split", resume=True, progress=False)
            if kind == "decoder":  # a checkpoint of the other strategy (and of one process, under FSDP)
                fit(run, f"{out}-cross", resume=True, progress=False)
                if mode == "fsdp":
                    fit(run, root / "decoder-single", resume=True, progress=False)
assert dist.is_initialized()  # the first fit's group, kept for the others (made again after a destroy, torch hangs)
"""


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_torchrun_two_processes_resume_exact(tmp_path):
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("torchrun not installed next to the interpreter")
    # samples at the end: under FSDP every rank must take part in the sharded model's forwards (a hang before)
    run = tiny_run(tmp_path, max_steps=6, save_interval=3, eval_interval=3, batch_size=2, sample_tokens=12,
                   sample_prompts=["the ", "fox"])
    run.to_yaml(tmp_path / "decoder.yaml")
    # with BERT's pooler, which the masked-LM loss leaves without gradients
    encoder = dataclasses.replace(run.model, **ENCODER, pooler=True)
    dataclasses.replace(run, model=encoder).to_yaml(tmp_path / "encoder.yaml")
    fit(dataclasses.replace(run, train=dataclasses.replace(run.train, max_steps=2)), tmp_path / "source",
        progress=False)
    RunConfig.from_dict({"train": {**run.to_dict()["train"], "init_from": str(tmp_path / "source")},
                         "data": {**run.to_dict()["data"], "tokenizer": "bpe"}}).to_yaml(tmp_path / "finetune.yaml")
    (tmp_path / "driver.py").write_text(DRIVER)
    assert fit(run, tmp_path / "decoder-single", progress=False, until_step=3).steps == 3  # one process
    for phase in ("first", "second"):
        if phase == "second":  # each strategy resumes the other's checkpoint too
            shutil.copytree(tmp_path / "decoder-fsdp-split", tmp_path / "decoder-ddp-cross")
            shutil.copytree(tmp_path / "decoder-ddp-split", tmp_path / "decoder-fsdp-cross")
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             str(tmp_path / "driver.py"), str(tmp_path), phase],
            env=child_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for kind in ("decoder", "encoder", "finetune"):
        for mode in ("ddp", "fsdp"):
            straight, split = tmp_path / f"{kind}-{mode}-straight", tmp_path / f"{kind}-{mode}-split"
            a, b = step_losses(straight), step_losses(split)
            assert sorted(a) == [1, 2, 3, 4, 5, 6] and a == b, (kind, mode)
            wa = read_safetensors(straight / "checkpoints/step-6/model.safetensors")
            wb = read_safetensors(split / "checkpoints/step-6/model.safetensors")
            assert all(torch.equal(wa[k], wb[k]) for k in wa), (kind, mode)
            samples = (straight / "samples.txt").read_text()
            expect = ["=== window 2"] if kind == "encoder" else ["=== prompt: 'the '", "=== prompt: 'fox'"]
            assert all(e in samples for e in expect), (kind, mode)
        # Both strategies compute the same global batch: FSDP2's losses match DDP's closely.
        ddp, fsdp = step_losses(tmp_path / f"{kind}-ddp-straight"), step_losses(tmp_path / f"{kind}-fsdp-straight")
        assert all(abs(ddp[s] - fsdp[s]) < 1e-4 for s in ddp), kind
    # A run checkpointed under one strategy goes on under the other, as if it had not changed (optimizer state too)
    straight = step_losses(tmp_path / "decoder-ddp-straight")
    for cross in ("decoder-ddp-cross", "decoder-fsdp-cross"):
        losses = step_losses(tmp_path / cross)
        assert sorted(losses) == [1, 2, 3, 4, 5, 6], cross
        assert all(abs(losses[s] - straight[s]) < 1e-4 for s in straight), (cross, losses, straight)
    assert sorted(step_losses(tmp_path / "decoder-single")) == [1, 2, 3, 4, 5, 6]  # one process, then FSDP
    # 2 processes x batch 2 evaluate as one process with batch 4 does (they split its windows), not each batch 2
    for kind in ("decoder", "encoder"):
        for mode in ("ddp", "fsdp"):
            assert abs(val_losses(tmp_path / f"{kind}-{mode}-straight")[6] - one_process_val_loss(
                tmp_path / f"{kind}-{mode}-straight", batch_size=4)) < 1e-5, (kind, mode)
    assert "the checkpoint's run took batches of 2 sequences (all processes) x 1 accumulation steps and this run " \
        "takes 4 x 1" in proc.stderr
    assert "the optimizer goes on" not in proc.stderr  # FSDP's loader gives betas as a list: no change to log

def one_process_val_loss(run_dir: Path, *, batch_size: int) -> float:
    """The val loss of a run's step-6 weights, evaluated here with `batch_size` as its trainer evaluates."""
    from neurallayers.data import load_corpus
    from neurallayers.data.masking import Masker
    from neurallayers.training.checkpoint import load_run
    from neurallayers.training.prepare import tokenize_corpus
    from neurallayers.training.trainer import mean_loss

    final = run_dir.parent / f"{run_dir.name}-final"
    final.mkdir()
    for name in ("config.yaml", "tokenizer.json"):
        shutil.copy(run_dir / name, final / name)
    shutil.copy(run_dir / "checkpoints/step-6/model.safetensors", final / "model.safetensors")
    model, tok, cfg = load_run(final)
    tokens = tokenize_corpus(cfg.data, load_corpus(cfg.data.source), tok, seed=cfg.train.seed,
                             val_fraction=cfg.data.val_fraction, show_progress=False)
    masker = None if model.config.causal else Masker.for_tokenizer(tok, prob=cfg.train.mask_prob, seed=cfg.train.seed)
    return mean_loss(model, tokens.val, block_size=cfg.model.block_size, batch_size=batch_size,
                     max_batches=cfg.train.eval_batches, device=torch.device("cpu"), masker=masker)[0]


DYING_RANK = """
import os, signal, sys
from neurallayers.training import trainer
step = trainer._Fit._train_step
def dying(self):
    if self.step == 3 and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self)
trainer._Fit._train_step = dying
from neurallayers.__main__ import main
sys.exit(main(["train", "--config", sys.argv[1], "--out", sys.argv[2], "--no-progress"]))
"""


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_a_rank_that_dies_fails_the_others_in_one_line_and_keeps_the_checkpoint(tmp_path):
    """RELIABILITY 10, without a launcher that kills the survivors (torchrun does; Slurm's srun, an MPI launcher or
    Kubernetes pods set RANK / WORLD_SIZE themselves): rank 1 is SIGKILLed in step 4; rank 0 exits non-zero well
    within the process-group timeout with one line (it printed gloo's 40-line traceback) naming the checkpoint the
    run resumes from, and the step-2 checkpoint stays complete."""
    import socket

    from neurallayers.training.checkpoint import list_checkpoints

    run = tiny_run(tmp_path, max_steps=8, save_interval=2, eval_interval=0, batch_size=2, distributed="ddp")
    cfg = run.to_yaml(tmp_path / "config.yaml")
    (tmp_path / "driver.py").write_text(DYING_RANK)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(cfg), str(tmp_path / "run")],
                              env={**child_env(tmp_path), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                   "WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": "2"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert procs[1].returncode == -9, outs[1][1][-2000:]
    assert procs[0].returncode == 2, outs[0][1][-2000:]
    assert "Traceback" not in outs[0][1], outs[0][1][-3000:]
    assert re.search(r"neurallayers train: error: another process of this 2-process run failed or stopped answering "
                     r"\(Connection (closed|reset) by peer[^()]*\), its own output says why; this is rank 0: the run "
                     r"resumes from its last checkpoint \(step 2\)\n", outs[0][1]), outs[0][1][-2000:]
    assert [c.name for c in list_checkpoints(tmp_path / "run")] == ["step-2"]


# argv: config.yaml, out, rank, port. The caller makes the process group itself, as torch.multiprocessing.spawn's
# workers do: no RANK / WORLD_SIZE in the environment.
OWN_GROUP = """
import dataclasses, sys
import torch.distributed as dist
from neurallayers.training import RunConfig, fit
config, out, rank, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
run = RunConfig.from_yaml(config)
alone = fit(dataclasses.replace(run, train=dataclasses.replace(run.train, distributed="none")), f"{out}-{rank}",
            progress=False)
print("ALONE", alone.steps)
r = fit(run, out, progress=False)
print("STEPS", r.steps, r.stopped_reason)
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_a_process_group_the_caller_made_trains_as_one_run(tmp_path):
    """Two processes in a gloo group of their own (torch.multiprocessing.spawn's way, no torchrun environment) used
    to train the whole run each, as rank 0 of one: the second failed on the run directory's lock ("another train is
    writing"), or with two output folders both trained alone. They now split each step's batch as under torchrun:
    the losses are a one-process run's on their global batch. distributed "none" still trains each alone (the
    review: refusing it left processes sharing a group no way to train runs of their own)."""
    import socket

    run = tiny_run(tmp_path, model={"dropout": 0.0}, max_steps=3, batch_size=2, eval_interval=0, save_interval=3)
    cfg = run.to_yaml(tmp_path / "config.yaml")
    (tmp_path / "driver.py").write_text(OWN_GROUP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in child_env(tmp_path).items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(cfg), str(tmp_path / "run"), str(r),
                               str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and "STEPS 3 max_steps" in out, out + err[-3000:]
        assert "ALONE 3" in out, out  # distributed "none": each process its own run (a sweep), as before
    one = dataclasses.replace(run, train=dataclasses.replace(run.train, batch_size=4, distributed="none"))
    fit(one, tmp_path / "one", progress=False)
    a, b = step_losses(tmp_path / "run"), step_losses(tmp_path / "one")
    assert sorted(a) == [1, 2, 3] and all(abs(a[s] - b[s]) < 1e-5 for s in b), (a, b)
