"""Dropout draws new masks every step. Resume equivalence (test_fit.py) holds just as well when every step reseeds
its generator alike, and the losses still change (the weights do): only the masks themselves show the repeat."""

from __future__ import annotations

import torch
from nl_train_helpers import tiny_run

from neurallayers.training import fit


def test_every_training_dropout_draws_a_mask_of_its_own(tmp_path, monkeypatch):
    masks = []
    dropout = torch.nn.functional.dropout

    def recording(x, p=0.5, training=True, inplace=False):
        out = dropout(x, p, training, inplace)
        if training and p > 0:
            masks.append((out == 0).flatten().tolist())
        return out

    monkeypatch.setattr(torch.nn.functional, "dropout", recording)
    run = tiny_run(tmp_path, max_steps=3, eval_interval=0, save_interval=0)
    fit(run, tmp_path / "run", progress=False)
    steps = 3
    assert len(masks) >= 2 * steps and len(masks) % steps == 0, len(masks)
    per_step = len(masks) // steps
    for i in range(per_step):  # the same dropout call at steps 1, 2 and 3
        same_call = [tuple(masks[s * per_step + i]) for s in range(steps)]
        assert len(set(same_call)) == steps, f"dropout call {i} drew the same mask at two steps"
