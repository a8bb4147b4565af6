"""Checkpoint folders in step order and the COMPLETE marker, on the functions themselves. The run-level tests save
checkpoints of one-digit steps only (4 and 8), where the names sort as the numbers do; and an unmarked folder never
reaches load_checkpoint through the trainer, which lists marked folders only."""

from __future__ import annotations

import pytest
import torch

from neurallayers.training import checkpoint as ckpt
from neurallayers.weights import CheckpointError

STATE = {"step": 0, "optimizer": {}, "scheduler": {}, "best_val_loss": float("nan"), "bad_evals": 0, "elapsed": 0.0,
         "rng": ckpt.rng_state()}


def _save(run_dir, step: int, keep_last: int = 10):
    return ckpt.save_checkpoint(run_dir, step=step, model_state={"w": torch.zeros(2)}, state={**STATE, "step": step},
                                keep_last=keep_last)


def test_checkpoints_are_in_step_order_past_one_digit(tmp_path):
    for step in (9, 100, 10, 2):
        _save(tmp_path, step)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-2", "step-9", "step-10", "step-100"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-100"
    assert ckpt.last_checkpoint_before(tmp_path, 100).name == "step-10"
    _save(tmp_path, 1000, keep_last=2)  # prunes the oldest by step, not by name
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-100", "step-1000"]


def test_a_folder_without_its_marker_is_not_loaded(tmp_path):
    path = _save(tmp_path, 3)
    assert ckpt.load_checkpoint(path)[1]["step"] == 3
    (path / ckpt.COMPLETE).unlink()  # as a save killed before its last write leaves it
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        ckpt.load_checkpoint(path)
