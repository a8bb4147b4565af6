"""Training arithmetic of real runs against independent oracles: torch's own schedulers (across a resume mid-warmup),
the dtypes of bf16 autocast, and early stopping when no evaluation is finite."""

import pytest
import torch
from nl_train_helpers import read_jsonl, tiny_run

from neurallayers.training import TrainConfig, fit


def torch_rates(cfg: TrainConfig) -> list[float]:
    """The rate of each step from torch.optim.lr_scheduler: LinearLR warmup from lr / W up to lr at step W - 1, then
    CosineAnnealingLR or a linear LambdaLR from lr down to min_lr at max_steps."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    w, decay = cfg.warmup_steps, cfg.max_steps - cfg.warmup_steps
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / w, end_factor=1.0, total_iters=w - 1)
    if cfg.schedule == "cosine":
        rest = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=decay, eta_min=cfg.min_lr)
    else:
        low = cfg.min_lr / cfg.lr
        rest = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - (1 - low) * s / decay)
    scheduler = torch.optim.lr_scheduler.SequentialLR(opt, [warm, rest], milestones=[w])
    rates = []
    for _ in range(cfg.max_steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_fits_logged_rates_equal_torchs_schedulers(tmp_path, schedule):
    """The rate every step of a real run logs, from the first warmup step to the last decay step, in a run stopped
    mid-warmup and resumed (the schedule is rebuilt at the checkpoint's step)."""
    run = tiny_run(tmp_path, max_steps=9, warmup_steps=3, schedule=schedule, lr=3e-3, min_lr=3e-4, eval_interval=0,
                   save_interval=1)
    fit(run, tmp_path / "run", progress=False, until_step=2)
    fit(run, tmp_path / "run", progress=False, resume=True)
    logged = [r["lr"] for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "lr" in r]
    assert logged == pytest.approx(torch_rates(run.train), rel=1e-9)


def test_early_stopping_when_no_evaluation_is_finite(tmp_path):
    """A diverging rate (lr 1e30) makes the first val loss NaN: with patience 1 that evaluation stops the run. The
    stop note formatted the best val loss, None here, and the run died in a TypeError instead of stopping."""
    run = tiny_run(tmp_path, max_steps=6, warmup_steps=0, lr=1e30, min_lr=0.0, eval_interval=1,
                   early_stopping_patience=1, save_interval=0)
    result = fit(run, tmp_path / "run", progress=False)
    assert (result.stopped_reason, result.steps, result.best_val_loss) == ("early_stopping", 1, None)
    rows = read_jsonl(tmp_path / "run/metrics.jsonl")
    assert [r["val_loss"] for r in rows if "val_loss" in r] == ["nan"]
    assert [r["early_stopping"] for r in rows if "early_stopping" in r] == [
        "stopped at step 1: 1 evaluations without a finite val loss (early_stopping_patience=1)"
    ]
    assert (tmp_path / "run/model.safetensors").is_file()  # never a best: the final weights are the model



def test_early_stopping_without_evaluations_during_the_run_is_named(tmp_path, caplog):
    """Patience counts evaluations: with eval_interval 0 (an evaluation at the end only) it can never stop the run,
    which trained on silently."""
    run = tiny_run(tmp_path, max_steps=2, eval_interval=0, early_stopping_patience=3, save_interval=0)
    with caplog.at_level("WARNING", logger="neurallayers"):
        result = fit(run, tmp_path / "run", progress=False)
    assert result.stopped_reason == "max_steps"
    assert "train.early_stopping_patience=3 never stops this run: train.eval_interval is 0" in caplog.text


@pytest.mark.parametrize(("max_steps", "patience", "warned"), [(6, 2, True), (6, 1, False), (8, 2, True)])
def test_early_stopping_with_fewer_evaluations_than_its_patience_is_named(tmp_path, caplog, max_steps, patience,
                                                                          warned):
    """eval_interval 4 in a 6-step run evaluates once before the end: a patience of 2 can never stop it either, and
    it trained on silently. In an 8-step run the evaluation at step 8 is the end, not one that could stop it early."""
    run = tiny_run(tmp_path, max_steps=max_steps, eval_interval=4, early_stopping_patience=patience, save_interval=0)
    with caplog.at_level("WARNING", logger="neurallayers"):
        fit(run, tmp_path / "run", progress=False)
    line = (f"train.early_stopping_patience=2 never stops this run: 1 evaluation before max_steps={max_steps} "
            "(train.eval_interval=4); set --train.eval_interval lower")
    assert (line in caplog.text) == warned, caplog.text
    assert ("never stops this run" in caplog.text) == warned


def test_bf16_autocast_runs_the_matmuls_in_bf16_and_the_loss_in_fp32(tmp_path, monkeypatch):
    """precision bf16 on CPU: in training and evaluation the logits come out of a bf16 matmul, the residual stream
    and norms stay fp32, the loss is taken in fp32, and the weights and their gradients stay fp32."""
    import warnings

    import neurallayers.models
    from neurallayers.weights import torch_load_safe

    real = neurallayers.models.build_model
    seen = {"train": set(), "eval": set()}

    def build(cfg):
        model = real(cfg)

        def record(module, args, kwargs, out):
            mode = "train" if module.training else "eval"
            seen[mode].add(("logits", out.logits.dtype))
            seen[mode].add(("loss", out.loss.dtype))

        model.register_forward_hook(record, with_kwargs=True)
        model.norm_f.register_forward_hook(lambda m, a, out: seen["train" if m.training else "eval"].add(
            ("norm", out.dtype)))
        return model

    monkeypatch.setattr(neurallayers.models, "build_model", build)
    run = tiny_run(tmp_path, max_steps=2, eval_interval=2, save_interval=2, precision="bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU without bf16 dot products warns that bf16 is slow there
        fit(run, tmp_path / "run", progress=False)
    want = {("logits", torch.bfloat16), ("loss", torch.float32), ("norm", torch.float32)}
    assert seen == {"train": want, "eval": want}
    moments = torch_load_safe(tmp_path / "run/checkpoints/step-2/state.pt")["optimizer"]["state"]
    assert {s["exp_avg"].dtype for s in moments.values()} == {torch.float32}


@pytest.mark.parametrize(("name", "family", "hf_class"), [("gpt2", "gpt2", "GPT2LMHeadModel"),
                                                          ("llama-tiny", "llama", "LlamaForCausalLM"),
                                                          ("bert-tiny", "bert", "BertForMaskedLM")])
def test_weight_decay_groups_equal_transformers_trainers(name, family, hf_class):
    """The parameters AdamW decays are the ones transformers' Trainer decays on the same model (it leaves out biases
    and norm weights by module type and name, and decays the embeddings): each of our parameters is marked 1 (decay)
    or 0 in a state dict, which the interop map carries to transformers' names, transposed or split as it is."""
    import importlib

    transformers = pytest.importorskip("transformers")
    from neurallayers import ModelConfig, build_model
    from neurallayers.training.runtime import param_groups

    cfg = ModelConfig.from_name(name).replace(n_layer=2, n_embd=64, n_head=4, n_kv_head=None, vocab_size=100)
    if not cfg.causal:
        cfg = cfg.replace(head="mlm")
    ours = build_model(cfg)
    decay, _ = param_groups(ours, 0.1)
    decayed = {p.data_ptr() for p in decay["params"]}
    marks = {k: torch.full_like(t, float(t.data_ptr() in decayed)) for k, t in ours.state_dict().items()}
    interop = importlib.import_module(f"neurallayers.interop.{family}")
    hf_marks = interop.to_hf(marks, cfg)
    hf = getattr(transformers, hf_class)(transformers.AutoConfig.for_model(**interop.config_to_hf(cfg)))
    # its `self` is not read; it may list a tied weight's second name, which its optimizer never sees
    names = [n for n, _ in hf.named_parameters()]
    want = set(transformers.Trainer.get_decay_parameter_names(None, hf)) & set(names)
    assert set(names) <= hf_marks.keys(), set(names) - hf_marks.keys()
    assert all(hf_marks[n].unique().numel() == 1 for n in names)
    got = {n for n in names if hf_marks[n].flatten()[0] == 1}
    assert got == want and 0 < len(got) < len(names), (got ^ want)
