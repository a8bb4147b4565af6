"""Masked-LM runs saved while those models still had BERT's (frozen, unused) pooler load and resume."""

import torch
from nl_train_helpers import ENCODER, step_losses, tiny_run

from neurallayers import load
from neurallayers.training import fit
from neurallayers.weights import read_safetensors, save_safetensors


def _add_old_pooler(weights):
    """The run as the older code wrote it: the pooler's weights beside the others."""
    sd = read_safetensors(weights)
    n = sd["encoder.wte.weight"].shape[1]
    sd.update({"encoder.pooler.weight": torch.randn(n, n) * 0.02, "encoder.pooler.bias": torch.zeros(n)})
    save_safetensors(sd, weights)


def test_a_masked_lm_run_saved_with_a_pooler_loads_and_resumes(tmp_path):
    run = tiny_run(
        tmp_path, model={**ENCODER, "pooler": True, "dropout": 0.0}, max_steps=4, save_interval=2, eval_interval=0
    )
    fit(run, tmp_path / "straight", progress=False)
    fit(run, tmp_path / "old", progress=False, until_step=2)
    for weights in [tmp_path / "old/checkpoints/step-2/model.safetensors", tmp_path / "old/model.safetensors"]:
        if weights.exists():
            _add_old_pooler(weights)
    model, _ = load(tmp_path / "old")
    assert model.encoder.pooler is None
    assert load(tmp_path / "old/checkpoints/step-2")[0].encoder.pooler is None  # a checkpoint folder too
    assert fit(run, tmp_path / "old", resume=True, progress=False).steps == 4
    assert step_losses(tmp_path / "old") == step_losses(tmp_path / "straight")
