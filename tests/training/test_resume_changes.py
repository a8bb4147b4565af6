"""What a resume under a changed train config says and does, beyond test_fit's schedule, AdamW and batch cases."""

import dataclasses

import torch
from nl_train_helpers import ENCODER, read_jsonl, tiny_run, val_losses, write_corpus

from neurallayers.training import fit


def _resume_with(run, out, caplog, **changes):
    changed = dataclasses.replace(run, train=dataclasses.replace(run.train, **changes))
    with caplog.at_level("INFO", logger="neurallayers"):
        return fit(changed, out, resume=True, progress=False)


def test_another_seed_says_so_and_its_validation_documents_start_the_best_over(tmp_path, caplog):
    """The seed chooses a documents split's validation pieces: a resume under another one validated on documents
    it may have trained on and compared that val loss with the best one, silently."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(10):
        write_corpus(docs / f"d{i}.txt", n_lines=40, seed=i)
    run = tiny_run(tmp_path, corpus=docs, max_steps=8, eval_interval=4, save_interval=4)
    fit(run, tmp_path / "run", progress=False, until_step=4)
    result = _resume_with(run, tmp_path / "run", caplog, seed=run.train.seed + 2)
    assert f"train.seed {run.train.seed} -> {run.train.seed + 2} since the checkpoint" in caplog.text
    assert "the best weights and early stopping start over" in caplog.text
    assert result.best_val_loss == val_losses(tmp_path / "run")[8]


def test_an_encoder_resumed_with_another_mask_prob_starts_the_best_over(tmp_path, caplog):
    """mask_prob (and the seed) choose an encoder's validation masks: other masks, a val loss that does not
    compare with the best one."""
    run = tiny_run(tmp_path, model=ENCODER, max_steps=8, eval_interval=4, save_interval=4)
    fit(run, tmp_path / "run", progress=False, until_step=4)
    result = _resume_with(run, tmp_path / "run", caplog, mask_prob=0.5)
    assert "train.mask_prob 0.15 -> 0.5 since the checkpoint: the batches and their masks differ" in caplog.text
    assert "measured on the validation masks of the checkpoint's settings" in caplog.text
    assert result.best_val_loss == val_losses(tmp_path / "run")[8]


def test_an_encoder_resumed_with_other_evaluation_batches_starts_the_best_over(tmp_path, caplog):
    """An encoder's validation masks are drawn per evaluation batch (batch_size x processes windows): the same 8
    windows in one batch of 8 rather than two of 4 get other masks, so the step-4 weights score another val loss.
    The resume kept the best val loss measured on the old masks (the window count was the same), and a step-8 val
    loss above it on the new masks was not the best, though nothing measured those weights on them."""
    import functools

    import torch

    from neurallayers.data.masking import Masker
    from neurallayers.training import load_run, losses
    from neurallayers.training.prepare import prepare_data

    run = tiny_run(tmp_path, model=ENCODER, max_steps=8, eval_interval=4, eval_batches=2, batch_size=4, save_interval=4)
    fit(run, tmp_path / "run", progress=False, until_step=4)
    model, tokenizer, saved = load_run(tmp_path / "run")
    _, tokens, _ = prepare_data(saved, tokenizer=tokenizer)
    masker = Masker.for_tokenizer(tokenizer, prob=saved.train.mask_prob, seed=saved.train.seed)
    score = functools.partial(losses.mean_loss, model, tokens.val, block_size=saved.model.block_size,
                              device=torch.device("cpu"), masker=masker)
    scored = {b: score(batch_size=b, max_batches=8 // b)[0] for b in (4, 8)}
    assert scored[4] == val_losses(tmp_path / "run")[4] and scored[8] != scored[4]
    result = _resume_with(run, tmp_path / "run", caplog, batch_size=8, eval_batches=1)
    assert "validation masks drawn for batches of 4 windows" in caplog.text
    assert "the best weights and early stopping start over" in caplog.text
    assert result.best_val_loss == val_losses(tmp_path / "run")[8]
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["best"] for r in rows if r.get("step") == 8 and "best" in r] == [True]


def test_an_unchanged_resume_says_nothing_of_seeds(tmp_path, caplog):
    run = tiny_run(tmp_path, max_steps=8, eval_interval=4, save_interval=4)
    fit(run, tmp_path / "run", progress=False, until_step=4)
    _resume_with(run, tmp_path / "run", caplog)
    assert "since the checkpoint" not in caplog.text and "start over" not in caplog.text


def test_a_corpus_file_edited_in_place_says_so_and_starts_the_best_over(tmp_path, caplog):
    """Text added to the run's own file (the same data settings, other tokens): the resume went on silently, and
    kept a best val loss measured on other validation text, so the new data's weights never became the model."""
    corpus = write_corpus(tmp_path / "notes.txt")
    run = tiny_run(tmp_path, corpus=corpus, max_steps=8, eval_interval=4, save_interval=4)
    fit(run, tmp_path / "run", progress=False, until_step=4)
    corpus.touch()  # a new mtime, the same tokens: nothing to say
    _resume_with(run, tmp_path / "run", caplog, max_steps=5)
    assert "differ from the checkpoint's" not in caplog.text and "start over" not in caplog.text
    caplog.clear()
    with corpus.open("a") as f:
        f.write(write_corpus(tmp_path / "more.txt", n_lines=300, seed=1).read_text())
    result = _resume_with(run, tmp_path / "run", caplog)
    assert f"the tokens of {corpus} differ from the checkpoint's (a file edited since?)" in caplog.text
    assert "the best weights and early stopping start over on the new data" in caplog.text
    assert result.best_val_loss == val_losses(tmp_path / "run")[8]


def test_a_moved_token_cache_is_the_same_data(tmp_path, caplog):
    """data.cache_dir only says where the token cache lives: a resume that moved it (a full disk, another machine)
    was told its data differed, and its best weights and early stopping started over."""
    run = tiny_run(tmp_path, max_steps=8, eval_interval=4, save_interval=4, early_stopping_patience=3)
    fit(run, tmp_path / "run", progress=False, until_step=4)
    moved = dataclasses.replace(run, data=dataclasses.replace(run.data, cache_dir=str(tmp_path / "moved")))
    with caplog.at_level("INFO", logger="neurallayers"):
        fit(moved, tmp_path / "run", resume=True, progress=False)
    assert "data settings differ" not in caplog.text and "start over" not in caplog.text
    assert (tmp_path / "moved").is_dir()  # the tokens were read from there


def test_a_resume_asking_for_another_tokenizer_is_refused_and_keeps_the_best_weights(tmp_path):
    """--data.vocab_size (or data.tokenizer) on a resume was set aside with a warning, yet counted as other data: the
    best val loss started over on the same tokens, and a diverging resume's first evaluation replaced the run's best
    weights (model.safetensors)."""
    import pytest

    run = tiny_run(tmp_path, max_steps=8, eval_interval=4, save_interval=4)
    fit(run, tmp_path / "run", progress=False, until_step=4)
    best = (tmp_path / "run" / "model.safetensors").read_bytes()
    for name, value in (("vocab_size", 400), ("tokenizer", "bpe")):
        asked = dataclasses.replace(run, data=dataclasses.replace(run.data, **{name: value}))
        with pytest.raises(ValueError, match=rf"cannot resume .*: data.{name}=.* differs from the run's .*keeps the "
                                             "tokenizer it was trained with"):
            fit(asked, tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == best


def test_a_resume_with_fewer_accumulation_steps_goes_on_from_the_data_position(tmp_path, monkeypatch):
    """Micro-batch i of a step was `RandomWindows.batch(step * grad_accum + i)` under the resumed run's grad_accum:
    4 steps x 2 micro-batches consumed batches 0-7, and a resume with grad_accum 1 (1 process x 2 -> 2 processes x 1,
    the same effective batch) trained steps 5-8 on batches 4-7 again, windows it had already learned from, though the
    checkpoint records its data position (micro-batches consumed)."""
    from neurallayers.data import RandomWindows

    drawn, batch = [], RandomWindows.batch

    def recording(self, index):
        x, y = batch(self, index)
        drawn[-1].update(bytes(row.numpy()) for row in x)
        return x, y

    monkeypatch.setattr(RandomWindows, "batch", recording)
    run = tiny_run(tmp_path, max_steps=8, batch_size=2, grad_accum=2, save_interval=4, eval_interval=0)
    drawn.append(set())
    fit(run, tmp_path / "run", progress=False, until_step=4)
    drawn.append(set())
    result = fit(dataclasses.replace(run, train=dataclasses.replace(run.train, grad_accum=1)), tmp_path / "run",
                 resume=True, progress=False)
    assert result.steps == 8 and len(drawn[0]) == 16 and len(drawn[1]) == 8
    again = len(drawn[0] & drawn[1])
    assert again == 0, f"{again} of the resumed run's windows were trained on before the checkpoint"
    state = torch.load(tmp_path / "run/checkpoints/step-8/state.pt", weights_only=True)
    assert state["data_position"] == 4 * 2 + 4 * 1  # micro-batches consumed by both sessions
