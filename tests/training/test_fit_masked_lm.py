"""Masked-LM training of encoders: exact resume, learning, and the run as a BERT model for transformers."""

import dataclasses
import re

import pytest
import torch
from nl_train_helpers import ENCODER, read_jsonl, step_losses, tiny_run

from neurallayers import load
from neurallayers.pipelines import pipeline
from neurallayers.training import fit
from neurallayers.weights import read_safetensors


def test_encoder_resume_is_exact(tmp_path):
    """2K steps straight == K steps, stop, resume, K more (dropout, masks and windows all per step)."""
    run = tiny_run(tmp_path, model=ENCODER, max_steps=8, save_interval=4, eval_interval=2, grad_accum=2)
    fit(run, tmp_path / "straight", progress=False)
    assert fit(run, tmp_path / "split", progress=False, until_step=4).stopped_reason == "until_step"
    fit(run, tmp_path / "split", resume=True, progress=False)
    a, b = step_losses(tmp_path / "straight"), step_losses(tmp_path / "split")
    assert sorted(a) == list(range(1, 9)) and a == b and len(set(a.values())) == 8
    val = [r["val_loss"] for r in read_jsonl(tmp_path / "straight/metrics.jsonl") if "val_loss" in r]
    assert len(val) == 4 and val == [r["val_loss"] for r in read_jsonl(tmp_path / "split/metrics.jsonl")
                                     if "val_loss" in r]
    wa = read_safetensors(tmp_path / "straight/checkpoints/step-8/model.safetensors")
    wb = read_safetensors(tmp_path / "split/checkpoints/step-8/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """An encoder trained on a text where every character follows from its neighbours."""
    tmp = tmp_path_factory.mktemp("mlm")
    (tmp / "abc.txt").write_text("abcdefghij\n" * 400)
    model = {**ENCODER, "dropout": 0.0, "n_layer": 1, "n_embd": 64, "n_head": 4, "block_size": 16,
             "tie_embeddings": False}  # untied: the exported BERT then has a decoder weight of its own
    run = tiny_run(tmp, corpus=tmp / "abc.txt", model=model, max_steps=400, eval_interval=100, lr=3e-3,
                   min_lr=3e-4, warmup_steps=10, save_interval=0, batch_size=8, mask_prob=0.2,
                   sample_prompts=["\n", "hij\nabc<mask>efghij\n"])
    result = fit(run, tmp / "run", progress=False)
    return tmp / "run", result


def test_encoder_learns_and_fills_masks(learned):
    run_dir, result = learned
    vals = [r["val_loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r]
    assert vals[0] > vals[-1] and result.final_val_loss < 1.0, vals  # from ln(11 letters) = 2.4
    model, tokenizer = load(run_dir)
    assert model.config.head == "mlm" and model.config.pad_token_id is None  # the tokenizer has no padding
    assert tokenizer.mask_token == "<mask>" and tokenizer.mask_id == tokenizer.vocab_size - 1
    fill = pipeline("fill-mask", model=(model, tokenizer))
    assert fill("abcde<mask>ghij\nabc")[0]["token_str"] == "f"
    assert fill("hij\nabcdefg<mask>ij")[0]["token_str"] == "h"
    samples = (run_dir / "samples.txt").read_text()
    assert samples.count("--- masked\n") == 3 and "<mask>" in samples and "masked tokens filled in right" in samples
    first = samples.splitlines()[:2]  # the prompt without a mask is skipped; the model's top 5 for the other's mask
    assert first[0] == "=== prompt: 'hij\\nabc<mask>efghij\\n'" and first[1].startswith("mask 1: "), first
    assert len(re.findall(r"'[^']+' 0\.\d{3}", first[1])) == 5 and "'d'" in first[1], first


def test_a_trained_encoder_is_bert_for_masked_lm_in_transformers(learned, tmp_path):
    transformers = pytest.importorskip("transformers")
    from neurallayers.interop.convert import convert

    run_dir, _ = learned
    convert(run_dir, tmp_path / "hf")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "BertForMaskedLM"
    model, tokenizer = load(run_dir)
    text = "ghij\nabcd<mask>fghij\n"
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([tokenizer.encode(text)])
    assert hf_tok.mask_token == "<mask>" and hf_tok(text, add_special_tokens=False)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(ids).logits, atol=1e-4, rtol=1e-4)
    top = transformers.pipeline("fill-mask", model=hf, tokenizer=hf_tok)(text)[0]
    assert top["token_str"] == "e"


def test_encoder_config_checks(tmp_path):
    run = tiny_run(tmp_path, model=ENCODER, max_steps=2)
    for head in ("sequence_classification", "token_classification"):
        bad = dataclasses.replace(run, model=dataclasses.replace(run.model, head=head))
        with pytest.raises(ValueError, match=f"head='{head}'.*masked LM"):
            fit(bad, tmp_path / head, progress=False)
    with pytest.raises(ValueError, match="mask_prob.*must be in \\(0, 1\\)"):
        dataclasses.replace(run.train, mask_prob=1.0)


def test_masked_lm_training_steps_equal_transformers_bert():
    """The same weights, masks and AdamW steps in our encoder and transformers' BertForMaskedLM: the same losses."""
    transformers = pytest.importorskip("transformers")
    from neurallayers import ModelConfig
    from neurallayers.data.masking import Masker
    from neurallayers.interop import bert
    from neurallayers.models import build_model

    cfg = ModelConfig(**{**ENCODER, "vocab_size": 40, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32,
                         "dropout": 0.0, "head": "mlm", "pad_token_id": None})
    torch.manual_seed(0)
    ours = build_model(cfg)
    hf = transformers.BertForMaskedLM(transformers.BertConfig(**bert.config_to_hf(cfg)))
    missing, unexpected = hf.load_state_dict(bert.to_hf(ours.state_dict(), cfg), strict=False)
    assert not unexpected and set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    masker = Masker(mask_id=39, vocab_size=40, special_ids=[0], prob=0.15, seed=3)
    opts = [torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.01) for m in (ours, hf)]
    gen = torch.Generator().manual_seed(1)
    for step in range(8):
        inputs, labels = masker(torch.randint(0, 39, (4, 16), generator=gen), step)
        losses = []
        for model, opt in zip((ours, hf), opts, strict=True):
            loss = model(inputs, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], abs=1e-5), step


def test_logits_at_labels_gives_the_full_heads_loss_and_gradients():
    from neurallayers import ModelConfig
    from neurallayers.data.masking import Masker
    from neurallayers.models import build_model

    cfg = ModelConfig(**{**ENCODER, "vocab_size": 50, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16,
                         "dropout": 0.0, "head": "mlm"})
    model = build_model(cfg)
    inputs, labels = Masker(mask_id=49, vocab_size=50, seed=0)(torch.randint(0, 49, (3, 16)), 0)
    sparse = model(inputs, labels=labels, logits_at_labels=True)
    sparse.loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    full = model(inputs, labels=labels)
    full.loss.backward()
    where = labels != -100
    assert sparse.logits.shape == (int(where.sum()), 50)
    torch.testing.assert_close(sparse.logits, full.logits[where])
    torch.testing.assert_close(sparse.loss, full.loss)
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


def test_accumulated_masked_lm_steps_weigh_every_predicted_token_alike(tmp_path, monkeypatch):
    """Micro-batches predict different numbers of tokens: 2 x 4 accumulation steps take the gradient of the mean
    over all of them, as one batch of 8 does (a mean of per-micro-batch means weighed a token of a micro-batch with
    few masks several times one with many): the loss logged, the gradient clipping sees, parameter by parameter, and
    the norm logged (before clipping)."""
    from neurallayers.data import RandomWindows
    from neurallayers.data.masking import Masker
    from neurallayers.models import build_model
    from neurallayers.training.prepare import prepare_data
    from neurallayers.training.runtime import seed_all

    seen = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, **kwargs):
        params = list(params)
        seen.extend(p.grad.clone() for p in params if p.grad is not None)
        return clip(params, max_norm, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    run = tiny_run(tmp_path, model={**ENCODER, "dropout": 0.0}, max_steps=1, batch_size=2, grad_accum=4,
                   grad_clip=0.5, eval_interval=0, save_interval=0, mask_prob=0.1)
    fit(run, tmp_path / "run", progress=False)
    tok, tokens, run = prepare_data(run)
    seed_all(run.train.seed)
    model = build_model(run.model)  # the trainer's initial weights
    windows = RandomWindows(tokens.train, block_size=run.model.block_size, batch_size=2, seed=run.train.seed)
    masker = Masker.for_tokenizer(tok, prob=run.train.mask_prob, seed=run.train.seed)
    batches = [masker(windows.batch(i)[0], i) for i in range(4)]
    counts = {int((y != -100).sum()) for _, y in batches}
    assert len(counts) > 1, counts  # else the weighing would not show
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    with torch.no_grad():  # the step's loss, whose gradient it takes: the mean over the 8 windows' masked tokens
        want = model(x, labels=y).loss.item()
        mean_of_means = sum(model(bx, labels=by).loss.item() for bx, by in batches) / 4
    assert abs(mean_of_means - want) > 1e-3  # the two weighings tell apart here
    assert step_losses(tmp_path / "run")[1] == pytest.approx(want, abs=1e-5)
    model(x, labels=y).loss.backward()
    expected = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(seen) == len(expected)
    for got, grad in zip(seen, expected, strict=True):
        torch.testing.assert_close(got, grad, atol=1e-6, rtol=1e-5)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in expected])).item()
    (row,) = [r for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "grad_norm" in r]
    assert row["grad_norm"] == pytest.approx(norm, rel=1e-5) and norm > run.train.grad_clip  # pre-clip


def test_a_micro_batch_of_only_special_tokens_weighs_nothing_rather_than_losing_the_step():
    """A micro-batch whose windows hold only special tokens (no token to predict) made the step's loss NaN, so the NaN
    guard skipped the whole step (or stopped the run); transformers' sum over num_items_in_batch gives it no weight,
    and the step is one batch's of the other windows: its loss and gradients."""
    from types import SimpleNamespace

    from neurallayers.config import ModelConfig
    from neurallayers.models import build_model
    from neurallayers.training.distributed import DistInfo
    from neurallayers.training.step import StepMixin

    cfg = ModelConfig(**{**ENCODER, "dropout": 0.0, "vocab_size": 40, "block_size": 8, "head": "mlm"})
    torch.manual_seed(0)
    model = build_model(cfg).train()
    x = torch.randint(3, 40, (4, 8))
    y = torch.where(torch.rand(4, 8) < 0.3, x, -100)
    y[:, 0] = x[:, 0]
    empty = (torch.zeros(2, 8, dtype=torch.long), torch.full((2, 8), -100))  # windows of one special id
    step = SimpleNamespace(cfg=SimpleNamespace(batch_size=2, grad_accum=3), info=DistInfo(), device=torch.device("cpu"),
                           forward=model, masker=object(), scaler=torch.amp.GradScaler("cpu", enabled=False),
                           amp_dtype=None, wrapped=model)
    total = StepMixin._backward(step, [(x[:2], y[:2]), empty, (x[2:], y[2:])])
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want = model(x, labels=y).loss
    want.backward()
    torch.testing.assert_close(total, want.detach())
    for g, p in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)
