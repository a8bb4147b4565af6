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
