"""The commands `neurallayers demo` suggests run in the shell that started it: `make demo` runs .venv/bin/neurallayers
with the environment inactive, and takes the demo's flags through DEMO_ARGS."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from neurallayers.cli import demo


@pytest.fixture
def venv_script(tmp_path, monkeypatch) -> Path:
    """argv[0] as `make demo` gives it: .venv/bin/neurallayers, run from the project folder."""
    script = tmp_path / ".venv" / "bin" / "neurallayers"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    monkeypatch.delenv("MAKELEVEL", raising=False)
    return script


def finished_demo(out: Path, monkeypatch) -> argparse.Namespace:
    from neurallayers import api, generation
    from neurallayers.training import trainer

    result = SimpleNamespace(run_dir=str(out), steps=5, final_val_loss=3.0, best_val_loss=3.0, tokens_per_second=1.0,
                             wall_seconds=1.0, stopped_reason="max_steps", first_step_seconds=0.1,
                             median_step_seconds=0.1)
    monkeypatch.setattr(trainer, "fit", lambda run_cfg, out_dir, *, resume: result)
    monkeypatch.setattr(api, "load", lambda path: (None, None))
    monkeypatch.setattr(generation, "generate",
                        lambda model, tok, prompts, **kw: [SimpleNamespace(text=" x") for _ in prompts])
    return argparse.Namespace(out=str(out), minutes=4.0, max_steps=5, resume=False)


@pytest.mark.parametrize("active", [False, True])
def test_the_closing_hint_names_the_cli_the_shell_can_run(venv_script, tmp_path, monkeypatch, capsys, active):
    # after `make demo` the hint `neurallayers generate runs/demo 'JULIET:' --stream` was "command not found"
    monkeypatch.setenv("PATH", f"{venv_script.parent}:/usr/bin:/bin" if active else "/usr/bin:/bin")
    assert demo.run(finished_demo(Path("runs/demo"), monkeypatch)) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    cli = "neurallayers" if active else ".venv/bin/neurallayers"
    assert last.endswith(f"(try: {cli} generate runs/demo 'JULIET:' --stream)"), last


@pytest.mark.parametrize(("makelevel", "command"), [
    (None, ".venv/bin/neurallayers demo --out runs/demo --resume"),
    ("1", 'make demo DEMO_ARGS="--out runs/demo --resume"'),  # `make demo --resume` is an error of make's own
])
def test_a_second_demo_is_refused_naming_how_to_continue_it(venv_script, monkeypatch, makelevel, command):
    from neurallayers.training.checkpoint import COMPLETE

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if makelevel:
        monkeypatch.setenv("MAKELEVEL", makelevel)
    step = Path("runs/demo/checkpoints/step-5")
    step.mkdir(parents=True)
    (step / COMPLETE).write_text("")
    with pytest.raises(ValueError, match="already holds a run") as refusal:
        demo.run(argparse.Namespace(out="runs/demo", minutes=4.0, max_steps=5, resume=False))
    assert f"continue it ({command})" in str(refusal.value)


@pytest.mark.parametrize(("makelevel", "command"), [
    (None, ".venv/bin/neurallayers demo --out runs/demo"),
    ("1", 'make demo DEMO_ARGS="--out runs/demo"'),
])
def test_a_resume_without_a_run_names_how_to_start_one(venv_script, monkeypatch, makelevel, command):
    # `make demo DEMO_ARGS=--resume` with no run yet still said "run `neurallayers demo --out runs/demo`"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if makelevel:
        monkeypatch.setenv("MAKELEVEL", makelevel)
    with pytest.raises(FileNotFoundError, match="holds no demo run") as refusal:
        demo.run(argparse.Namespace(out="runs/demo", minutes=4.0, max_steps=None, resume=True))
    assert f"run `{command}` to start one" in str(refusal.value)


def test_the_hints_quote_a_folder_name_the_shell_would_split(venv_script, monkeypatch, capsys):
    # `demo --out "my runs/demo"` was told to continue with `... --out my runs/demo --resume`: two arguments
    import shlex

    from neurallayers.training.checkpoint import COMPLETE

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    out = Path("my runs/demo")
    (out / "checkpoints" / "step-5").mkdir(parents=True)
    (out / "checkpoints" / "step-5" / COMPLETE).write_text("")
    with pytest.raises(ValueError, match="already holds a run") as refusal:
        demo.run(argparse.Namespace(out=str(out), minutes=4.0, max_steps=5, resume=False))
    hint = str(refusal.value).split("continue it (", 1)[1].split(") or", 1)[0]
    assert shlex.split(hint) == [".venv/bin/neurallayers", "demo", "--out", "my runs/demo", "--resume"]
    assert demo.run(finished_demo(Path("my runs/demo2"), monkeypatch)) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert shlex.split(last.split("(try: ", 1)[1].removesuffix(")"))[:3] == [".venv/bin/neurallayers", "generate",
                                                                               "my runs/demo2"]


@pytest.mark.parametrize("name", ["it's", "r$x", 'a"b\\c`d'])
def test_the_make_hint_passes_any_folder_name_through_the_shell_and_make(venv_script, monkeypatch, name):
    # under make the hint put the quoted name between double quotes: "it's" was a shell syntax error, and make and
    # the shell expanded "r$x" to "r"
    import subprocess

    from neurallayers.training.checkpoint import COMPLETE

    monkeypatch.setenv("MAKELEVEL", "1")
    (Path(name) / "checkpoints" / "step-5").mkdir(parents=True)
    (Path(name) / "checkpoints" / "step-5" / COMPLETE).write_text("")
    with pytest.raises(ValueError, match="already holds a run") as refusal:
        demo.run(argparse.Namespace(out=name, minutes=4.0, max_steps=5, resume=False))
    hint = str(refusal.value).split("continue it (", 1)[1].removesuffix(") or choose another --out")
    assert hint.startswith("make demo DEMO_ARGS=")

    def shell_words(line: str) -> list[str]:  # the words sh makes of a command line's arguments
        return subprocess.run(["sh", "-c", f"printf '%s\\n' {line}"], capture_output=True, text=True,
                              check=True).stdout.splitlines()

    (assignment,) = shell_words(hint.removeprefix("make demo "))
    value = assignment.removeprefix("DEMO_ARGS=").replace("$$", "$")  # as make expands it into the recipe
    assert shell_words(value) == ["--out", name, "--resume"]
