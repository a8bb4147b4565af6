"""fit()'s steps against the plain PyTorch loop of nanoGPT's train.py on the same tiny model, data and seed: dropout on,
micro-batches of loss / grad_accum, evaluations between steps (the model must be back in train mode after them), and
fp16 autocast with a GradScaler (unscale, clip the whole model's norm, step; an overflowing step skipped by the
scaler). The scaler runs on CPU here: fit() refuses fp16 off CUDA, so the precision resolver is patched."""

import functools
import math

import pytest
import torch
from nl_train_helpers import read_jsonl, tiny_run

from neurallayers import build_model
from neurallayers.data import RandomWindows
from neurallayers.training import fit
from neurallayers.training import startup as startup_module
from neurallayers.training.prepare import prepare_data
from neurallayers.training.runtime import seed_all, step_seed
from neurallayers.weights import read_safetensors


def plain_loop(run, *, fp16: bool, **scaler_kw):
    """(loss, pre-clip grad norm, lr) of each step and the final weights, written as nanoGPT's loop is."""
    _, tokens, run = prepare_data(run, tokenizer=None)
    cfg, k = run.train, run.train.grad_accum
    seed_all(cfg.seed)
    model = build_model(run.model)
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=False)
    scaler = torch.amp.GradScaler("cpu", enabled=fp16, **scaler_kw)
    windows = RandomWindows(tokens.train, block_size=run.model.block_size, batch_size=cfg.batch_size, seed=cfg.seed)
    model.train()
    rows = []
    for step in range(cfg.max_steps):
        torch.manual_seed(step_seed(cfg.seed, step, 0))  # our dropout seed of the step (resumable masks)
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        total = 0.0
        for micro in range(k):
            x, y = windows.batch(step * k + micro)
            with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
                loss = model(x, targets=y).loss / k
            scaler.scale(loss).backward()
            total += loss.item()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip).item()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        rows.append((total, norm, cfg.lr_at(step)))
        if cfg.eval_interval and (step + 1) % cfg.eval_interval == 0:
            model.eval()  # an evaluation in between draws no random numbers and changes no weight
            model.train()
    return rows, model.state_dict()


def assert_same(run_dir, run, expected, weights):
    logged = [(r["loss"], r["grad_norm"], r["lr"]) for r in read_jsonl(run_dir / "metrics.jsonl") if "lr" in r]
    assert len(logged) == len(expected) == run.train.max_steps
    for (loss, norm, lr), (ref_loss, ref_norm, ref_lr) in zip(logged, expected, strict=True):
        assert loss == pytest.approx(ref_loss, rel=1e-6) and lr == pytest.approx(ref_lr, rel=1e-12)
        if math.isfinite(ref_norm):
            assert norm == pytest.approx(ref_norm, rel=1e-5)
        else:  # an overflowing fp16 step: JSON holds "inf" / "nan"
            assert not math.isfinite(float(norm))
    ours = read_safetensors(run_dir / f"checkpoints/step-{run.train.max_steps}/model.safetensors")
    assert ours.keys() == weights.keys()
    assert all(torch.allclose(ours[n], weights[n], atol=1e-6, rtol=0) for n in ours)


def test_dropout_accumulation_and_evaluations_equal_a_plain_loop(tmp_path):
    run = tiny_run(tmp_path, max_steps=4, grad_accum=2, batch_size=2, warmup_steps=2, grad_clip=0.5, eval_interval=2,
                   save_interval=0, optimizer_impl="foreach")
    fit(run, tmp_path / "run", progress=False)
    expected, weights = plain_loop(run, fp16=False)
    assert all(norm > run.train.grad_clip for _, norm, _ in expected)  # every step clipped
    assert_same(tmp_path / "run", run, expected, weights)


def test_fp16_grad_scaler_steps_equal_a_plain_amp_loop(tmp_path, monkeypatch):
    """A scale of 2**40 overflows the first step for certain (skipped by the scaler, which backs off to 2**12); the
    next one unscales before clipping and logs the unscaled, pre-clip norm. One layer, two steps: CPU fp16 matmuls
    are slow."""
    scaler_kw = dict(init_scale=2.0**40, backoff_factor=2.0**-28)
    monkeypatch.setattr(startup_module, "resolve_precision", lambda precision, device: (torch.float16, True))
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, **scaler_kw))
    run = tiny_run(tmp_path, model=dict(dropout=0.0, n_layer=1, block_size=16), max_steps=2, batch_size=1,
                   warmup_steps=2, grad_clip=0.5, eval_interval=0, save_interval=0, optimizer_impl="foreach")
    fit(run, tmp_path / "run", progress=False)
    monkeypatch.undo()
    expected, weights = plain_loop(run, fp16=True, **scaler_kw)
    finite = [math.isfinite(norm) for _, norm, _ in expected]
    assert finite == [False, True]  # both kinds of step are compared
    assert_same(tmp_path / "run", run, expected, weights)


def test_a_device_without_foreach_kernels_clips_and_trains(tmp_path, monkeypatch):
    """torch has no foreach kernels for MPS, and clip_grad_norm_(foreach=True) raises there ("can't use the foreach
    API on mps tensors") at every step. CPU stands in for such a device (torch's support checks patched): the steps
    clip tensor by tensor, to the plain loop's losses, norms and weights."""
    from torch.nn.utils import clip_grad

    no_kernels = lambda device: device.type != "cpu"  # noqa: E731
    monkeypatch.setattr(clip_grad, "_device_has_foreach_support", no_kernels)
    monkeypatch.setattr(clip_grad, "_has_foreach_support", lambda tensors, device: no_kernels(device))
    shape = dict(max_steps=2, batch_size=2, warmup_steps=1, grad_clip=0.5, eval_interval=0, save_interval=0)
    run = tiny_run(tmp_path, optimizer_impl="loop", **shape)
    fit(run, tmp_path / "run", progress=False)
    monkeypatch.undo()
    expected, weights = plain_loop(run, fp16=False)
    assert_same(tmp_path / "run", run, expected, weights)
