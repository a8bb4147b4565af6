"""`neurallayers train` resume arguments, through the CLI's own entry point."""

from pathlib import Path
from types import SimpleNamespace

import pytest
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
    # not "step-9 holds no run (no config.yaml)", as a path no checkpoint has was read as a run of its own
    assert f"cannot resume: {out / 'checkpoints' / 'step-9'} does not exist" in capsys.readouterr().err


def test_resume_from_a_checkpoint_named_inside_its_folder(tmp_path, capsys, monkeypatch):
    """`--resume step-2` typed inside runs/x/checkpoints/ took step-2 itself for the run ("holds no run")."""
    run = tiny_run(tmp_path, max_steps=4, save_interval=2, eval_interval=2)
    out = tmp_path / "run"
    fit(run, out, progress=False)
    monkeypatch.chdir(out / "checkpoints")
    assert main(["train", "--resume", "step-2", "--no-progress"]) == 0
    assert "steps: 4" in capsys.readouterr().out


def test_the_resume_command_after_a_signal_quotes_the_run_directory(tmp_path, capsys, monkeypatch):
    """The line a SIGTERM / Ctrl-C leaves is a command to paste: an --out with a space (or a shell character) was
    printed bare, and pasting it resumed another folder or none."""
    import shlex

    import neurallayers.training.trainer as trainer
    from neurallayers.training.trainer import TrainResult

    out = tmp_path / "my runs" / "a&b"

    def stopped(run, out_dir, **kwargs):
        return TrainResult(run_dir=out_dir, steps=3, best_val_loss=None, final_val_loss=None, tokens_per_second=1.0,
                           wall_seconds=1.0, median_step_seconds=0.1, first_step_seconds=0.1,
                           stopped_reason="terminated")
    monkeypatch.setattr(trainer, "fit", stopped)
    assert main(["train", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 143
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("continue with: ")
    assert shlex.split(line.removeprefix("continue with: ")) == ["neurallayers", "train", "--out", str(out), "--resume"]


def test_preset_keeps_the_config_files_model_fields_as_model_preset_does(tmp_path) -> None:
    """`--preset` is documented as a shortcut for `--model.preset`: with --config it threw the file's whole model
    section away (n_layer 2, the preset's, instead of the file's 1)."""
    import argparse

    from neurallayers.cli.train import build_run_config

    path = tmp_path / "r.yaml"
    path.write_text("model:\n  n_layer: 1\ntrain:\n  max_steps: 3\n")
    args = dict(config=str(path), data=None, init_from=None)
    by_flag = build_run_config(argparse.Namespace(preset="tiny", overrides=[], **args))
    by_override = build_run_config(argparse.Namespace(preset=None, overrides=["--model.preset", "tiny"], **args))
    assert by_flag.model == by_override.model and by_flag.model.n_layer == 1


def test_preset_with_a_saved_runs_whole_model_section_is_refused_not_ignored(tmp_path) -> None:
    """`train --config runs/a/config.yaml --preset demo` (a saved run's config, re-loadable as a run config) trained
    runs/a's model under the demo's name, silently: every field the file gives overrode the preset's."""
    import argparse

    import yaml

    from neurallayers.cli.train import build_run_config
    from neurallayers.config import ModelConfig
    from neurallayers.training.config import RunConfig

    path = tmp_path / "config.yaml"
    RunConfig(model=ModelConfig.from_name("tiny")).to_yaml(path)
    assert "preset" not in yaml.safe_load(path.read_text())["model"]  # every field, as train writes it
    args = dict(config=str(path), data=None, init_from=None)
    for preset, overrides in (("demo", []), (None, ["--model.preset", "demo"])):
        with pytest.raises(ValueError, match="model.preset='demo': the model section already gives every field"):
            build_run_config(argparse.Namespace(preset=preset, overrides=overrides, **args))


def _snapshot(out):
    return (out / "metrics.jsonl").read_bytes(), [c.name for c in ckpt.list_checkpoints(out)]


def test_a_second_train_into_a_run_being_written_is_refused_before_it_writes(tmp_path):
    """The same `train --resume` run twice (a second terminal, a job requeued while the first still ran) went on side
    by side: the second truncated the first's metrics.jsonl and set its newer checkpoints aside under it, and the
    first still reported success, leaving checkpoints to step 700 with metrics lines to step 300."""
    import fcntl
    import subprocess
    import sys

    from nl_train_helpers import child_env

    run = tiny_run(tmp_path, max_steps=4, save_interval=2, eval_interval=2)
    out = tmp_path / "run"
    fit(run, out, progress=False)
    before = _snapshot(out)
    lock = out / ".train.lock"
    with lock.open("a") as held:  # what the session in progress holds
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.run([sys.executable, "-m", "neurallayers", "train", "--out", str(out), "--resume",
                               "--train.max_steps", "6", "--no-progress"], env=child_env(tmp_path),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == (f"neurallayers train: error: another train is writing {out}; "
                                                        "wait for it to end or choose another output directory (--out)")
        assert _snapshot(out) == before
    longer = tiny_run(tmp_path, max_steps=6, save_interval=2, eval_interval=2)
    assert fit(longer, out, resume=True, progress=False).steps == 6
    assert not lock.exists()


def test_a_run_that_another_train_changed_while_this_one_started_is_refused(tmp_path, monkeypatch):
    """A session that held the lock until just now wrote newer checkpoints: going on from the one read before
    would set them aside as an abandoned history."""
    import shutil

    import neurallayers.training.trainer as trainer

    run = tiny_run(tmp_path, max_steps=4, save_interval=2, eval_interval=2)
    out = tmp_path / "run"
    fit(run, out, progress=False)
    locked = trainer.exclusive

    def other_session_ends_first(lock, busy):
        shutil.copytree(out / "checkpoints/step-4", out / "checkpoints/step-6")  # its newer checkpoint
        return locked(lock, busy)

    monkeypatch.setattr(trainer, "exclusive", other_session_ends_first)
    metrics = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(ValueError, match="changed while this run was starting"):
        fit(tiny_run(tmp_path, max_steps=8, save_interval=2, eval_interval=2), out, resume=True, progress=False)
    assert _snapshot(out) == (metrics, ["step-2", "step-4", "step-6"]) and not (out / "abandoned").exists()


def test_a_resume_from_an_older_checkpoint_is_refused_when_another_train_wrote_meanwhile(tmp_path, monkeypatch):
    """Resuming step-2 of a run at step-4, it sets aside the newer checkpoints it read: a step-6 written meanwhile by
    the session that held the lock stayed in checkpoints/, where the next --resume went on from that other history."""
    import shutil

    import neurallayers.training.trainer as trainer

    run = tiny_run(tmp_path, max_steps=4, save_interval=2, eval_interval=2, keep_last=3)
    out = tmp_path / "run"
    fit(run, out, progress=False)
    locked = trainer.exclusive

    def other_session_ends_first(lock, busy):
        shutil.copytree(out / "checkpoints/step-4", out / "checkpoints/step-6")
        return locked(lock, busy)

    monkeypatch.setattr(trainer, "exclusive", other_session_ends_first)
    metrics = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(ValueError, match="changed while this run was starting"):
        fit(run, out, resume=out / "checkpoints/step-2", progress=False)
    assert _snapshot(out) == (metrics, ["step-2", "step-4", "step-6"]) and not (out / "abandoned").exists()


@pytest.mark.parametrize(
    ("words", "out"),
    [
        (["--preset", "tiny"], "runs/tiny"),
        (["--model.preset", "tiny"], "runs/tiny"),
        (["--model.preset=llama-tiny", "--model.n_layer", "1"], "runs/llama-tiny"),
        (["--preset", "tiny", "--model.preset", "llama-tiny"], "runs/llama-tiny"),  # the override wins, as in the model
        (["--config", "my.yaml"], "runs/my"),
        (["--config", "my.yaml", "--model.preset", "tiny"], "runs/tiny"),
    ],
)
def test_the_default_out_is_named_after_the_preset_or_config(words, out, tmp_path, monkeypatch):
    """`train --help`: "--out: run directory to write (default: runs/<preset or config name>)". A preset named by
    `--model.preset`, which the "no model" error offers beside `--preset`, wrote runs/run, where the next run of any
    other preset was then refused ("runs/run already holds a run")."""
    import neurallayers.training.trainer as trainer

    written = []

    def fake_fit(run, run_dir, **kwargs):
        written.append((Path(run_dir).as_posix(), run.model.name))
        return SimpleNamespace(run_dir=run_dir, steps=1, final_val_loss=1.0, best_val_loss=1.0, tokens_per_second=1.0,
                               wall_seconds=1.0, stopped_reason="max_steps", first_step_seconds=0.1,
                               median_step_seconds=0.1)

    monkeypatch.setattr(trainer, "fit", fake_fit)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.yaml").write_text("model:\n  preset: demo\n")
    assert main(["train", *words]) == 0
    assert [path for path, _ in written] == [out]
