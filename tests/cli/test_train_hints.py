"""The CLI as the shell calls it, in every hint: train's `continue with:` line named `neurallayers` where the shell
had none on its PATH (.venv/bin/neurallayers run with the environment inactive), and a CLI started from its own
folder (./neurallayers) was named by its bare name, which the shell looks up on PATH only."""

from __future__ import annotations

import sys

from neurallayers.cli.demo import demo_command
from neurallayers.cli.train import _launcher


def script(folder, monkeypatch):
    path = folder / "neurallayers"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(path), "train"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("MAKELEVEL", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return path


def test_train_continues_with_the_cli_the_shell_can_run(tmp_path, monkeypatch):
    script(tmp_path / ".venv" / "bin", monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert _launcher() == ".venv/bin/neurallayers"


def test_a_cli_started_from_its_own_folder_is_named_with_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(script(tmp_path / "bin", monkeypatch).parent)
    assert demo_command("--resume") == "./neurallayers demo --resume"


def test_a_cli_outside_the_current_folder_is_named_by_its_own_path(tmp_path, monkeypatch):
    path = script(tmp_path / "env" / "bin", monkeypatch)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert demo_command("--resume") == f"{path} demo --resume"  # not ../env/bin/neurallayers


def test_a_cli_run_as_a_module_is_named_with_its_interpreter(tmp_path, monkeypatch):
    """`.venv/bin/python -m neurallayers train ...` with no environment active: `neurallayers` is on no PATH."""
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "neurallayers" / "__main__.py"), "train"])
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("MAKELEVEL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert _launcher() == ".venv/bin/python -m neurallayers"
    monkeypatch.setenv("PATH", str(python.parent))  # the environment active: `python` is this one
    assert demo_command("--resume") == "python -m neurallayers demo --resume"
