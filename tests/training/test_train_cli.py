"""`neurallayers train` resume arguments, through the CLI's own entry point."""

from nl_train_helpers import step_losses, tiny_run

from neurallayers.__main__ import main
from neurallayers.training import checkpoint as ckpt
from neurallayers.training import fit


def test_resume_from_a_named_checkpoint_needs_no_out(tmp_path, capsys):
    """README: `--resume runs/x/checkpoints/step-800` goes back to an older checkpoint. Without --out it used to be
    refused as "no model: give --preset NAME ... or --out RUN --resume", though the path names the run."""
    run = tiny_run(tmp_path, max_steps=4, save_interval=2, eval_interval=2)
    out = tmp_path / "run"
    fit(run, out, progress=False)
    before = step_losses(out)
    assert main(["train", "--resume", str(out / "checkpoints" / "step-2"), "--no-progress"]) == 0
    assert f"run: {out}  steps: 4" in capsys.readouterr().out
    assert step_losses(out) == before  # the same steps again, from step 2's checkpoint
    assert [c.name for c in ckpt.list_checkpoints(out)] == ["step-2", "step-4"]
    assert (out / "abandoned").is_dir()
    # a run directory given to --resume is its own --out; a checkpoint that is not there is named
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert main(["train", "--resume", str(out / "checkpoints" / "step-9")]) == 2
    assert "cannot resume: " in capsys.readouterr().err


def test_resume_from_a_checkpoint_named_inside_its_folder(tmp_path, capsys, monkeypatch):
    """`--resume step-2` typed inside runs/x/checkpoints/ took step-2 itself for the run ("holds no run")."""
    run = tiny_run(tmp_path, max_steps=4, save_interval=2, eval_interval=2)
    out = tmp_path / "run"
    fit(run, out, progress=False)
    monkeypatch.chdir(out / "checkpoints")
    assert main(["train", "--resume", "step-2", "--no-progress"]) == 0
    assert "steps: 4" in capsys.readouterr().out
