"""metrics.jsonl's `tokens`: the input tokens trained on through each logged step and evaluation (litgpt's "tokens",
transformers' num_input_tokens_seen), counted on across a resume that changes the batch size, and from the settings a
checkpoint written before the count was kept records."""

import shutil

import torch
from nl_train_helpers import read_jsonl, tiny_run

from neurallayers.training import fit
from neurallayers.weights import torch_load_safe


def tokens(run_dir) -> tuple[dict[int, int], dict[int, int]]:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return ({r["step"]: r["tokens"] for r in rows if "loss" in r},
            {r["step"]: r["tokens"] for r in rows if "val_loss" in r})


def test_tokens_count_every_step_across_a_resume_with_another_batch(tmp_path):
    first = tiny_run(tmp_path, max_steps=4, batch_size=4, grad_accum=2, eval_interval=2, save_interval=2)
    fit(first, tmp_path / "run", progress=False, until_step=2)
    shutil.copytree(tmp_path / "run", tmp_path / "old")
    later = tiny_run(tmp_path, max_steps=4, batch_size=2, grad_accum=1, eval_interval=2, save_interval=2)
    fit(later, tmp_path / "run", progress=False, resume=True)
    # 2 steps of 4 x 2 windows of 32 tokens, then 2 of 2 x 1
    want = {s: 256 * min(s, 2) + 64 * max(s - 2, 0) for s in range(1, 5)}
    steps, evals = tokens(tmp_path / "run")
    assert steps == want and evals == {2: want[2], 4: want[4]}
    assert torch_load_safe(tmp_path / "run/checkpoints/step-4/state.pt")["tokens_seen"] == want[4]

    # a checkpoint from before the count was kept: its step x its batch x its accumulation x block_size
    state_path = tmp_path / "old/checkpoints/step-2/state.pt"
    state = torch_load_safe(state_path)
    del state["tokens_seen"]
    torch.save(state, state_path)
    fit(later, tmp_path / "old", progress=False, resume=True)
    assert tokens(tmp_path / "old") == (steps, evals)
