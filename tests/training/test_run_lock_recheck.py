"""The start-up re-check under the run lock: a session that held the lock until just now changed the run's
checkpoints, so the one read before taking it is no longer the run's."""

import pytest
from nl_train_helpers import tiny_run

import neurallayers.training.trainer as trainer
from neurallayers.training import checkpoint as ckpt
from neurallayers.training import fit


def test_a_checkpoint_saved_again_under_the_same_name_meanwhile_is_refused(tmp_path, monkeypatch):
    """`--resume` read step-4; meanwhile another session resumed from step-2 (setting that step-4 aside) and saved a
    step-4 of its own. The names were the same, so this one went on from the step-4 set aside and wrote step-6 on top
    of the other history."""
    out = tmp_path / "run"
    fit(tiny_run(tmp_path, max_steps=4, save_interval=2, eval_interval=2, keep_last=3), out, progress=False)
    locked = trainer.exclusive

    def other_session_ends_first(lock, busy):
        monkeypatch.setattr(trainer, "exclusive", locked)
        other = tiny_run(tmp_path, max_steps=4, save_interval=2, eval_interval=2, keep_last=3, lr=3e-2)
        fit(other, out, resume=out / "checkpoints/step-2", progress=False)
        return locked(lock, busy)

    monkeypatch.setattr(trainer, "exclusive", other_session_ends_first)
    with pytest.raises(ValueError, match="changed while this run was starting"):
        fit(tiny_run(tmp_path, max_steps=6, save_interval=2, eval_interval=2, keep_last=3), out, resume=True,
            progress=False)
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-2", "step-4"]
