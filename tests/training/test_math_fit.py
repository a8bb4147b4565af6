"""fit()'s optimisation against a plain PyTorch loop written from the formulas: accumulation, clipping, AdamW groups,
the schedule, the NaN guard, bf16 autocast and evaluation.

Loss normalisation: a decoder's micro-batches are all batch_size x block_size targets with none ignored (random
windows of a token stream, no padding), so the mean of the micro-batch means is the mean over every token of the
global batch; a masked LM weighs each selected token alike across micro-batches and processes (transformers'
num_items_in_batch, test_fit_masked_lm.py).
"""

import numpy as np
import pytest
import torch
from nl_train_helpers import ENCODER, read_jsonl, step_losses, tiny_run, val_losses

from neurallayers import ModelConfig, build_model
from neurallayers.data import RandomWindows
from neurallayers.training import fit, load_run
from neurallayers.training.prepare import prepare_data
from neurallayers.training.runtime import param_groups, seed_all
from neurallayers.weights import read_safetensors, torch_load_safe

LLAMA = dict(norm="rmsnorm", mlp="swiglu", position="rope", bias=False, n_kv_head=1, tie_embeddings=False)


def reference_steps(run, steps: int):
    """The run's first `steps` updates by hand: one batch of the grad_accum micro-batches' windows, the global norm
    clipped by hand, AdamW (no fused or foreach kernel) with decay on >= 2-D tensors only, lr from lr_at."""
    _, tokens, run = prepare_data(run, tokenizer=None)
    cfg, k = run.train, run.train.grad_accum
    seed_all(cfg.seed)
    model = build_model(run.model)
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        foreach=False,
    )
    windows = RandomWindows(tokens.train, block_size=run.model.block_size, batch_size=cfg.batch_size, seed=cfg.seed)
    model.train()
    rows = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        xs, ys = zip(*[windows.batch(step * k + i) for i in range(k)], strict=True)
        loss = model(torch.cat(xs), targets=torch.cat(ys)).loss
        loss.backward()
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
        for p in params:
            p.grad.mul_(min(1.0, cfg.grad_clip / (norm + 1e-6)))
        opt.step()
        opt.zero_grad()
        rows.append((loss.item(), norm, cfg.lr_at(step)))
    return rows, model.state_dict()


@pytest.mark.parametrize(("model", "impl"), [({}, "fused"), (LLAMA, "foreach"), (LLAMA, "loop")])
def test_accumulated_steps_equal_one_batch_clipped_by_hand(tmp_path, model, impl):
    """2 x 2 accumulation == one batch of 4, with the global norm clipped (grad_clip below every norm), AdamW's
    betas / eps / weight decay as configured: the same losses, pre-clip norms, rates and weights."""
    run = tiny_run(
        tmp_path,
        model=dict(dropout=0.0, **model),
        max_steps=5,
        grad_accum=2,
        batch_size=2,
        warmup_steps=2,
        grad_clip=0.05,
        weight_decay=0.1,
        beta1=0.8,
        beta2=0.9,
        eps=1e-6,
        optimizer_impl=impl,
        eval_interval=0,
        save_interval=0,
    )
    fit(run, tmp_path / "run", progress=False)
    logged = [(r["loss"], r["grad_norm"], r["lr"]) for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "loss" in r]
    expected, weights = reference_steps(run, 5)
    assert logged[0][2] == run.train.lr / 2  # the first update already uses lr_at(0), not 0
    for (loss, norm, lr), (ref_loss, ref_norm, ref_lr) in zip(logged, expected, strict=True):
        assert loss == pytest.approx(ref_loss, rel=1e-6) and norm == pytest.approx(ref_norm, rel=1e-5)
        assert lr == pytest.approx(ref_lr, rel=1e-12) and norm > run.train.grad_clip  # the norm logged is pre-clip
    ours = read_safetensors(tmp_path / "run/checkpoints/step-5/model.safetensors")
    assert ours.keys() == weights.keys()
    assert all(torch.allclose(ours[name], weights[name], atol=1e-6, rtol=0) for name in ours)


@pytest.mark.parametrize("name", ["gpt2", "llama-tiny", "bert-tiny"])
def test_weight_decay_falls_on_matrices_and_embeddings_only(name):
    """nanoGPT's rule (TrainConfig.weight_decay): >= 2-D tensors decay (matmul weights, token / position / type
    embeddings); biases and norm weights do not; a tied embedding is one parameter, in the decay group once."""
    cfg = ModelConfig.from_name(name).replace(n_layer=1, n_embd=64, n_head=2, n_kv_head=None, vocab_size=100)
    model = build_model(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, 0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert "wte.weight" in decayed and all(n.endswith(".weight") for n in decayed)
    assert all(n.endswith(".bias") or ".norm" in n or n.startswith(("norm", "emb_norm")) for n in kept), kept
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])


def test_a_skipped_step_leaves_weights_and_adamw_state_untouched(tmp_path):
    """nan_policy skip: a NaN loss in the second micro-batch of step 3 leaves the step-2 weights and AdamW state
    (moments and step count) as they were; the next step goes on from them."""
    import neurallayers.models

    real = neurallayers.models.build_model
    calls = [0]

    def build(cfg):
        model = real(cfg)

        def hook(module, args, kwargs, out):
            calls[0] += module.training
            if module.training and calls[0] == 6:
                out.loss = out.loss * float("nan")
            return out

        model.register_forward_hook(hook, with_kwargs=True)
        return model

    mp = pytest.MonkeyPatch()
    mp.setattr(neurallayers.models, "build_model", build)
    try:
        run = tiny_run(tmp_path, max_steps=4, grad_accum=2, eval_interval=0, save_interval=1, keep_last=10)
        fit(run, tmp_path / "run", progress=False)
    finally:
        mp.undo()
    ckpts = tmp_path / "run/checkpoints"
    before, after = (read_safetensors(ckpts / f"step-{s}/model.safetensors") for s in (2, 3))
    assert all(torch.equal(before[k], after[k]) for k in before)
    opt2, opt3, opt4 = (torch_load_safe(ckpts / f"step-{s}/state.pt")["optimizer"]["state"] for s in (2, 3, 4))
    for i in opt2:
        assert all(torch.equal(torch.as_tensor(opt2[i][k]), torch.as_tensor(opt3[i][k])) for k in opt2[i])
    assert float(opt3[0]["step"]) == 2 and float(opt4[0]["step"]) == 3
    assert [r["nan_guard"] for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "nan_guard" in r] == [
        "skipped step 3"
    ]


def test_bf16_autocast_losses_stay_near_fp32(tmp_path):
    base = dict(model=dict(dropout=0.0), max_steps=6, eval_interval=3, save_interval=0)
    fit(tiny_run(tmp_path, precision="fp32", **base), tmp_path / "fp32", progress=False)
    fit(tiny_run(tmp_path, precision="bf16", **base), tmp_path / "bf16", progress=False)
    a, b = step_losses(tmp_path / "fp32"), step_losses(tmp_path / "bf16")
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) < 2e-2 for s in a)
    va, vb = val_losses(tmp_path / "fp32"), val_losses(tmp_path / "bf16")
    assert va.keys() == vb.keys() == {3, 6} and all(abs(va[s] - vb[s]) < 2e-2 for s in va)


@pytest.mark.parametrize("eval_batches", [2, 100])
def test_val_loss_and_perplexity_equal_a_hand_computation(tmp_path, eval_batches):
    """Over every window (the last batch smaller: 43 windows in batches of 3) or the first eval_batches x batch_size
    of them: the mean over all scored tokens, and its exp."""
    run = tiny_run(tmp_path, max_steps=4, eval_interval=4, save_interval=0, batch_size=3, eval_batches=eval_batches)
    result = fit(run, tmp_path / "run", progress=False)
    model, _, _ = load_run(tmp_path / "run")
    _, tokens, _ = prepare_data(run, tokenizer=None)
    val, t = np.asarray(tokens.val, dtype=np.int64), run.model.block_size
    n = min((len(val) - 1) // t, eval_batches * 3)
    starts = np.linspace(0, len(val) - t - 1, n).round().astype(np.int64)
    x = torch.from_numpy(np.stack([val[s : s + t] for s in starts]))
    y = torch.from_numpy(np.stack([val[s + 1 : s + t + 1] for s in starts]))
    with torch.no_grad():
        logits = model.eval()(x).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
    (row,) = [r for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "val_loss" in r]
    assert row["val_loss"] == pytest.approx(expected, rel=1e-6) == result.final_val_loss
    assert row["perplexity"] == pytest.approx(np.exp(expected), rel=1e-6)


def test_an_encoder_weighs_decay_alike(tmp_path):
    """A masked-LM run's optimizer: the frozen pooler is in neither group, the rest split by nanoGPT's rule."""
    run = tiny_run(tmp_path, model=ENCODER, max_steps=1, eval_interval=0, save_interval=0)
    fit(run, tmp_path / "run", progress=False)
    state = torch_load_safe(tmp_path / "run/checkpoints/step-1/state.pt")["optimizer"]
    decay, no_decay = state["param_groups"]
    model, _, _ = load_run(tmp_path / "run")
    trainable = [p for n, p in model.named_parameters() if "pooler" not in n]
    assert len(decay["params"]) == sum(p.ndim >= 2 for p in trainable)
    assert len(no_decay["params"]) == sum(p.ndim < 2 for p in trainable)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)


def test_patience_counts_evaluations_and_a_run_out_of_steps_did_not_stop_early(tmp_path, monkeypatch, caplog):
    """Patience 2: evaluations at steps 3 (best), 6 and the final one at 7 (worse) end the run at max_steps with two
    bad evaluations; its resume said "the run stopped early ... stops it again". Trained on, an improvement resets
    the count and two worse evaluations after it stop the run."""
    from neurallayers.training import losses

    vals = iter([5.0, 6.0, 7.0, 4.0, 6.0, 6.0])
    monkeypatch.setattr(losses, "mean_loss", lambda *a, **k: (next(vals), 1))
    run = tiny_run(tmp_path, max_steps=7, eval_interval=3, early_stopping_patience=2, save_interval=0)
    assert fit(run, tmp_path / "run", progress=False).stopped_reason == "max_steps"
    longer = tiny_run(tmp_path, max_steps=20, eval_interval=3, early_stopping_patience=2, save_interval=0)
    with caplog.at_level("INFO", logger="neurallayers"):
        result = fit(longer, tmp_path / "run", resume=True, progress=False)
    assert "stopped early" not in caplog.text
    assert (
        "the run's last 2 evaluations found no better val loss (early_stopping_patience=2): the next evaluation "
        "stops it unless the val loss improves" in caplog.text
    )
    evals = [(r["step"], r["best"]) for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "val_loss" in r]
    assert evals == [(3, True), (6, False), (7, False), (9, True), (12, False), (15, False)]
    assert (result.stopped_reason, result.steps, result.best_val_loss) == ("early_stopping", 15, 4.0)


def test_tokens_per_second_is_the_batch_tokens_over_the_step_time(tmp_path, monkeypatch):
    """With a clock that moves 0.25 s a reading, every step takes 0.25 s: tokens_per_sec (metrics.jsonl, the bar, the
    result) is batch_size x grad_accum x block_size / 0.25, this session's steps only, evaluation time left out."""
    import types

    import neurallayers.training.trainer as trainer

    ticks = iter(range(10**6))
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(monotonic=lambda: 0.25 * next(ticks)))
    run = tiny_run(tmp_path, max_steps=4, batch_size=4, grad_accum=2, eval_interval=2, save_interval=2)
    result = fit(run, tmp_path / "run", progress=False)
    rows = [r for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "loss" in r]
    assert [r["tokens_per_sec"] for r in rows] == [4 * 2 * 32 / 0.25] * 4
    assert result.tokens_per_second == 4 * 2 * 32 / 0.25 and result.median_step_seconds == 0.25
    assert all(b["elapsed"] > a["elapsed"] for a, b in zip(rows, rows[1:], strict=False))
