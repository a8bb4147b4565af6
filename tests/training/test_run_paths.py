"""A run's checkpoint folders as users name them: through symlinks, `..`, a linked checkpoints/ folder; and the verbs
that take one (`train --resume`, `train --init-from`, `info`, `load`)."""

import shutil
from pathlib import Path

import pytest
from nl_train_helpers import step_losses, tiny_run

from neurallayers import load
from neurallayers.__main__ import main
from neurallayers.training import checkpoint as ckpt
from neurallayers.training import fit


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4."""
    tmp = tmp_path_factory.mktemp("trained")
    fit(tiny_run(tmp, max_steps=4, save_interval=2, eval_interval=2), tmp / "run", progress=False)
    return tmp / "run"


@pytest.fixture
def run(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path / "cache"))
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def test_resume_through_a_symlink_to_a_checkpoint(run, tmp_path, capsys):
    """`--resume latest` (a link to checkpoints/step-2) was taken for the run itself ("holds no run"), and with --out
    for a checkpoint of the run two folders above the link ("belongs to run /tmp/...")."""
    before = step_losses(run)
    (tmp_path / "latest").symlink_to(run / "checkpoints/step-2")
    assert main(["train", "--resume", str(tmp_path / "latest"), "--no-progress"]) == 0
    assert f"run: {run}  steps: 4" in capsys.readouterr().out
    assert step_losses(run) == before
    (tmp_path / "latest").unlink()
    (tmp_path / "latest").symlink_to(run / "checkpoints/step-2")
    assert main(["train", "--out", str(run), "--resume", str(tmp_path / "latest"), "--no-progress"]) == 0
    assert step_losses(run) == before and [p.name for p in ckpt.list_checkpoints(run)] == ["step-2", "step-4"]


def test_resume_with_dot_dot_typed_inside_another_checkpoint(run, monkeypatch, capsys):
    monkeypatch.chdir(run / "checkpoints/step-4")
    assert main(["train", "--resume", "../step-2", "--no-progress"]) == 0
    assert f"run: {run}  steps: 4" in capsys.readouterr().out


def test_a_resume_names_the_run_it_belongs_to(run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    assert main(["train", "--out", str(other), "--resume", str(run / "checkpoints/step-2")]) == 2
    assert f"it belongs to run {run}, not {other}" in capsys.readouterr().err
    loose = tmp_path / "loose"
    shutil.copytree(run / "checkpoints/step-2", loose / "step-2")
    assert main(["train", "--out", str(run), "--resume", str(loose / "step-2")]) == 2
    assert "not a run's checkpoints/step-N folder" in capsys.readouterr().err


def test_a_linked_checkpoints_folder_loads_resumes_and_shows(run, tmp_path, capsys):
    """checkpoints/ kept on another disk through a symlink: load and info followed the link and found no run there."""
    (tmp_path / "disk").mkdir()
    shutil.move(run / "checkpoints", tmp_path / "disk/ckpts")
    (run / "checkpoints").symlink_to(tmp_path / "disk/ckpts")
    model, _ = load(run / "checkpoints/step-2")
    assert model.config.n_layer == 2
    assert main(["info", str(run / "checkpoints/step-2")]) == 0
    assert f"step 2 of the run {run}" in capsys.readouterr().out
    assert main(["train", "--resume", str(run / "checkpoints/step-2"), "--no-progress"]) == 0


def test_info_on_a_checkpoint(run, tmp_path, capsys):
    """`info RUN/checkpoints/step-N` was refused ("neither config.yaml nor config.json"), though load, eval, generate
    and serve read such a folder."""
    assert main(["info", str(run / "checkpoints/step-2")]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and f"step 2 of the run {run}\n" in out
    (tmp_path / "link").symlink_to(run / "checkpoints/step-4")
    (run / "checkpoints/step-4/COMPLETE").unlink()
    assert main(["info", str(tmp_path / "link")]) == 0
    assert f"step 4 of the run {run} (incomplete" in capsys.readouterr().out


def test_init_from_a_checkpoint_names_the_default_out_after_its_run(run, tmp_path, monkeypatch):
    import argparse

    from neurallayers.cli.train import default_out
    from neurallayers.training import RunConfig

    cfg = RunConfig.from_dict({"train": {"init_from": str(run / "checkpoints/step-2")}})
    args = argparse.Namespace(preset=None, config=None)
    assert default_out(args, cfg).as_posix() == "runs/run-step-2-ft"


@pytest.mark.parametrize(("given", "name"), [(".", "run"), ("./", "run"), ("../run", "run"), ("checkpoints/..", "run")])
def test_init_from_a_relative_folder_names_the_default_out_after_it(run, monkeypatch, given, name):
    """`train --init-from .` in the source's own folder trained into runs/-ft (`..` into runs/..-ft): the default --out
    is named after the folder the path leads to."""
    import argparse

    from neurallayers.cli.train import default_out
    from neurallayers.training import RunConfig

    monkeypatch.chdir(run)
    cfg = RunConfig.from_dict({"train": {"init_from": given}})
    args = argparse.Namespace(preset=None, config=None)
    assert default_out(args, cfg).as_posix() == f"runs/{name}-ft"


def test_going_back_sets_the_newer_checkpoints_aside_across_file_systems(run, monkeypatch):
    """checkpoints/ linked to another disk: `--resume .../step-2` moved step-4 to abandoned/ with os.replace, which
    fails across file systems ("Invalid cross-device link", a traceback); here every rename into abandoned/ fails so."""
    import errno
    import os

    for name in ("rename", "replace"):
        real = getattr(os, name)

        def cross_device(src, dst, *args, real=real, **kwargs):
            if Path(dst).parent.name == "abandoned":
                raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, name, cross_device)
    assert main(["train", "--resume", str(run / "checkpoints/step-2"), "--no-progress"]) == 0
    assert sorted(p.name for p in (run / "abandoned").iterdir()) == ["model.safetensors", "step-4"]
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-2", "step-4"]


@pytest.mark.parametrize("flags", [["--out=~/runs/x"], ["--out=~/runs/x", "--resume=~/runs/x"]])
def test_train_reads_a_leading_tilde_in_out_and_resume_as_the_home_folder(tmp_path, monkeypatch, flags):
    """`--out=~/x` reaches the CLI unexpanded (the shell expands ~ only as a word of its own): train made a folder
    named "~" in the working folder, where nl.train and a config's paths read ~ as the home folder."""
    import neurallayers.training.trainer as trainer
    from neurallayers.__main__ import main

    home, work = tmp_path / "home", tmp_path / "work"
    (home / "runs/x").mkdir(parents=True)
    (home / "runs/x/config.yaml").write_text("model: {preset: tiny}\n")
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    seen = {}

    def fake_fit(run, out, *, resume, progress):
        seen.update(out=out, resume=resume)
        raise KeyboardInterrupt  # stands for the training; the CLI's arguments are what is checked

    monkeypatch.setattr(trainer, "fit", fake_fit)
    main(["train", "--preset", "tiny", *flags])  # the fake's Ctrl-C: the CLI's exit code, not checked here
    assert seen["out"] == home / "runs/x" and not (work / "~").exists()
    if len(flags) > 1:
        assert seen["resume"] == str(home / "runs/x")
