"""Running the CLI in this process for the tests of tests/cli: a process costs seconds of imports."""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

from neurallayers.__main__ import main


def in_process(*args: str, cwd: Path, monkeypatch) -> subprocess.CompletedProcess:
    """`neurallayers ARGS` through main() here (a process costs 4 s of imports); argparse's exit is a status too."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(cwd / ".nlcache"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2 with one line on stderr holding every needle, no traceback and no bare OS error."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "[Errno" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20


def tiny_char_run(root: Path, **train) -> Path:
    """A tiny character-level run on TEXT in root/run (root/.nlcache its cache); `train` overrides its steps and the
    rest of its train section (max_steps 2 by default)."""
    import pytest

    import neurallayers as nl

    (root / "text.txt").write_text(TEXT)
    config = {"model": {"preset": "tiny", "block_size": 16, "n_layer": 1},
              "train": {"max_steps": 2, "batch_size": 2, "eval_interval": 2, "eval_batches": 1, "warmup_steps": 0,
                        "sample_tokens": 0, **train},
              "data": {"source": str(root / "text.txt"), "tokenizer": "char"}}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEURALLAYERS_CACHE", str(root / ".nlcache"))
        nl.train(config, root / "run", progress=False)
    return root / "run"
