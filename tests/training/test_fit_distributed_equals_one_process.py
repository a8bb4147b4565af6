"""DDP (and FSDP2) on 2 gloo processes against one process on the same global batch and against a plain PyTorch step:
the masked-LM loss weighs every selected token alike when the ranks' slices hold different counts (fp32 and bf16
autocast, with accumulation), the gradient is clipped on the global norm after the whole accumulation, and a
non-finite loss on one rank alone skips the step on every rank (the weights stay equal across ranks). A decoder's
micro-batches are windows without ignored targets: every slice holds batch_size x block_size of them."""

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nl_train_helpers import ENCODER, child_env, read_jsonl, tiny_run

from neurallayers.training import RunConfig, fit
from neurallayers.weights import read_safetensors

NAN_STEP = 2  # rank 1's loss (of its first micro-batch) is NaN in this step; rank 0's is finite

# argv: root, NAN_STEP, the cases. Each rank saves the weights it ends with: both ranks must skip the step alike.
DRIVER = """
import os, sys
from pathlib import Path
import torch
from neurallayers.training import RunConfig, fit, losses, trainer
root, nan_step, rank = Path(sys.argv[1]), int(sys.argv[2]), os.environ["RANK"]
now = {}
step, loss, finish = trainer._Fit._train_step, losses.model_loss, trainer._Fit._finish
def counting_step(self):
    now["step"], now["micro"] = self.step + 1, 0
    return step(self)
def nan_on_rank_1(*args, **kwargs):
    value = loss(*args, **kwargs)
    now["micro"] += 1
    return value * float("nan") if (rank, now["step"], now["micro"]) == ("1", nan_step, 1) else value
def saving_finish(self):
    finish(self)
    if self.info.mode == "ddp":  # (FSDP's ranks hold shards: the checkpoint shows both took their part alike)
        torch.save(self.model.state_dict(), self.out / f"rank{rank}.pt")
trainer._Fit._train_step, losses.model_loss, trainer._Fit._finish = counting_step, nan_on_rank_1, saving_finish
for case in sys.argv[3:]:
    fit(RunConfig.from_yaml(root / f"{case}.yaml"), root / f"{case}-dist", progress=False)
"""

CASES = {"encoder-fp32": (ENCODER, "fp32", "ddp"), "encoder-bf16": (ENCODER, "bf16", "ddp"),
         "decoder-fp32": ({}, "fp32", "ddp"), "decoder-bf16": ({}, "bf16", "ddp"),
         "encoder-fp32-fsdp": (ENCODER, "fp32", "fsdp")}


def _config(tmp_path: Path, model: dict, precision: str, strategy: str) -> RunConfig:
    # grad_clip below every norm: the update depends on which norm is clipped; no dropout: ranks seed their own masks
    return tiny_run(tmp_path, model={**model, "dropout": 0.0}, max_steps=4, batch_size=2, grad_accum=2,
                    grad_clip=0.05, mask_prob=0.1, precision=precision, eval_interval=0, save_interval=1,
                    keep_last=10, nan_policy="skip", distributed=strategy)


def _one_process(run: RunConfig, out: Path, monkeypatch) -> None:
    """The same run in this process on batches of 4 (the two ranks' batch), the step's loss made NaN as rank 1's is."""
    import neurallayers.training.trainer as trainer
    from neurallayers.training import losses

    step, loss, now = trainer._Fit._train_step, losses.model_loss, {}

    def counting_step(self):
        now["step"] = self.step + 1
        return step(self)

    def nan_at_step(*args, **kwargs):
        value = loss(*args, **kwargs)
        return value * float("nan") if now["step"] == NAN_STEP else value

    with monkeypatch.context() as m:
        m.setattr(trainer._Fit, "_train_step", counting_step)
        m.setattr(losses, "model_loss", nan_at_step)
        fit(dataclasses.replace(run, train=dataclasses.replace(run.train, batch_size=4, distributed="none")), out,
            progress=False)


def _first_step_by_hand(run: RunConfig, precision: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """Step 1 from the formulas, on each rank's slices as DDP runs them: (loss, pre-clip global grad norm) of the sum
    of every selected (or next-token) loss of the global batch over their count, and the same pair for a per-rank
    mean (each rank's tokens over its own count, the ranks averaged), the weighing the check must tell apart."""
    from neurallayers.data import RandomWindows
    from neurallayers.data.masking import Masker
    from neurallayers.models import build_model
    from neurallayers.training.prepare import prepare_data
    from neurallayers.training.runtime import seed_all

    tok, tokens, run = prepare_data(run)
    seed_all(run.train.seed)
    model = build_model(run.model)
    windows = RandomWindows(tokens.train, block_size=run.model.block_size, batch_size=4, seed=run.train.seed)
    masker = None if run.model.causal else Masker.for_tokenizer(tok, prob=run.train.mask_prob, seed=run.train.seed)
    slices = []  # (rank, x, y) of every micro-batch
    for i in range(run.train.grad_accum):
        x, y = windows.batch(i)
        if masker is not None:
            x, y = masker(x, i)
        slices += [(r, x[r * 2:(r + 1) * 2], y[r * 2:(r + 1) * 2]) for r in (0, 1)]
    count = {r: sum(int((y != -100).sum()) for q, _, y in slices if q == r) for r in (0, 1)}
    if masker is not None:
        assert count[0] != count[1], count  # the ranks hold different counts
    results = []
    for weight in ({r: 1 / (count[0] + count[1]) for r in (0, 1)}, {r: 0.5 / count[r] for r in (0, 1)}):
        model.zero_grad()
        total = 0.0
        for r, x, y in slices:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(x).logits
            part = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
            (part * weight[r]).backward()
            total += part.item() * weight[r]
        grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
        results.append((total, float(torch.linalg.vector_norm(torch.stack(grads)))))
    return results[0], results[1]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_distributed_steps_equal_one_process_and_the_formulas(tmp_path, monkeypatch):
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("torchrun not installed next to the interpreter")
    runs = {}
    for case, (model, precision, strategy) in CASES.items():
        runs[case] = _config(tmp_path, model, precision, strategy)
        runs[case].to_yaml(tmp_path / f"{case}.yaml")
    (tmp_path / "driver.py").write_text(DRIVER)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "driver.py"), str(tmp_path), str(NAN_STEP), *CASES],
        env=child_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for case, (_, precision, strategy) in CASES.items():
        dist, one = tmp_path / f"{case}-dist", tmp_path / f"{case}-one"
        _one_process(runs[case], one, monkeypatch)
        tol = 1e-5 if precision == "fp32" else 5e-4  # bf16: a slice of 2 rows and a batch of 4 round apart
        rows = {p: [r for r in read_jsonl(p / "metrics.jsonl") if "loss" in r] for p in (dist, one)}
        assert [r["step"] for r in rows[dist]] == [r["step"] for r in rows[one]] == [1, 2, 3, 4], case
        # every rank skipped the step rank 1 alone saw a NaN in
        assert [r.get("nan_guard") for r in rows[dist]] == [None, f"skipped step {NAN_STEP}", None, None], case
        for a, b in zip(rows[dist], rows[one], strict=True):
            if "nan_guard" not in a:
                assert a["loss"] == pytest.approx(b["loss"], rel=tol) and a["lr"] == b["lr"], (case, a, b)
                assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=tol), (case, a, b)
        (loss, norm), (rank_loss, rank_norm) = _first_step_by_hand(runs[case], precision)
        first = rows[dist][0]
        # the same slices through the same kernels: close in bf16 too
        assert first["loss"] == pytest.approx(loss, rel=1e-5) and first["grad_norm"] == pytest.approx(norm, rel=1e-5), (
            case, first, loss, norm)
        if not runs[case].model.causal:  # a per-rank mean gives another norm here: the check tells them apart
            assert abs(rank_norm - norm) > 1e-3 * norm and rank_loss != pytest.approx(loss, rel=1e-5), (case, rank_norm)
        assert norm > runs[case].train.grad_clip  # clipped: the weights below depend on the norm being global
        skipped = [read_safetensors(dist / f"checkpoints/step-{s}/model.safetensors") for s in (1, 2)]
        assert all(torch.equal(skipped[0][k], skipped[1][k]) for k in skipped[0]), case
        final = read_safetensors(dist / "checkpoints/step-4/model.safetensors")
        if strategy == "ddp":
            ranks = [torch.load(dist / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
            assert all(torch.equal(ranks[0][k], ranks[1][k]) and torch.equal(ranks[0][k], final[k]) for k in final)
        if precision == "fp32":  # (bf16's rounding apart, AdamW's first steps move each weight by about lr either way)
            ours = read_safetensors(one / "checkpoints/step-4/model.safetensors")
            assert all(torch.allclose(final[k], ours[k], atol=2e-5, rtol=0) for k in final), case
