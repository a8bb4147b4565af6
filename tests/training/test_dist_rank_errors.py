"""An error that only rank 0 meets (it alone tokenizes the data, opens the loggers and writes the run's files) ends
every rank of `neurallayers train` with that one line and exit 2: the others used to wait in a collective and die
with gloo's "Connection closed by peer" traceback (without a launcher that kills them: after rank 0 had exited)."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from nl_train_helpers import child_env, step_losses, tiny_run

CLI = "import sys\nfrom neurallayers.__main__ import main\nsys.exit(main(sys.argv[1:]))\n"


def two_ranks(tmp_path, args: list[str], *, prelude: str = "") -> list[tuple[int, str]]:
    """`neurallayers train ARGS` as ranks 0 and 1 of a DDP run (as torchrun starts them): (exit code, stderr) each.
    `prelude` runs first in each (to install a fault)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **child_env(tmp_path),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", prelude + CLI, "train", *args, "--no-progress"],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    try:
        errs = [p.communicate(timeout=120)[1] for p in procs]
        return [(p.returncode, err) for p, err in zip(procs, errs, strict=True)]
    finally:
        for p in procs:
            p.kill()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("fault", ["data", "logger", "checkpoint"])
def test_an_error_on_rank_zero_ends_every_rank_with_its_line(tmp_path, fault):
    run = tiny_run(tmp_path, max_steps=4, save_interval=2, eval_interval=2, batch_size=2, distributed="ddp")
    config = run.to_yaml(tmp_path / "config.yaml")
    out = tmp_path / "run"
    out.mkdir()
    args = ["--config", str(config), "--out", str(out)]
    if fault == "data":
        args += ["--data", str(tmp_path / "missing.txt")]
        expect = "no corpus"
    elif fault == "logger":  # TensorBoard's folder is taken by a file
        (out / "tensorboard").write_text("")
        args += ["--train.loggers", "[tensorboard]"]
        expect = "the tensorboard logger could not start"
    else:  # the first checkpoint (step 2) cannot be written
        (out / "checkpoints").write_text("")
        expect = "could not write checkpoint step-2"
    for rank, (code, err) in enumerate(two_ranks(tmp_path, args)):
        assert code == 2 and "Traceback" not in err, (rank, code, err[-3000:])
        assert f"neurallayers train: error: {expect}" in err.splitlines()[-1], (rank, err[-3000:])


# rank 0's metrics.jsonl on a full disk: its first write fails (the kernel's ENOSPC), or only its close does
FULL_DISK = """
import errno
from neurallayers.training import loggers
opened = loggers.JSONLLogger.__init__
def on_a_full_disk(self, run_dir):
    opened(self, run_dir)
    self._f.close()
    self._f = open("/dev/full", "a", encoding="utf-8")
def close_on_a_full_disk(self):
    self._f.close()
    raise self._write_error(OSError(errno.ENOSPC, "No space left on device"))
if FAULT == "log":
    loggers.JSONLLogger.__init__ = on_a_full_disk
else:
    loggers.JSONLLogger.close = close_on_a_full_disk
"""


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("fault", ["log", "close"])
def test_a_metrics_write_error_on_rank_zero_during_training_ends_every_rank_with_its_line(tmp_path, fault):
    """Rank 0 alone writes metrics.jsonl, in the loop and when it closes it at the end: its write error reached only
    rank 0, and rank 1 died in its next collective with gloo's "Connection closed by peer" traceback."""
    if fault == "log" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    run = tiny_run(tmp_path, max_steps=4, save_interval=2, eval_interval=2, batch_size=2, distributed="ddp")
    config = run.to_yaml(tmp_path / "config.yaml")
    out = tmp_path / "run"
    results = two_ranks(
        tmp_path, ["--config", str(config), "--out", str(out)], prelude=f"FAULT = {fault!r}\n" + FULL_DISK
    )
    for rank, (code, err) in enumerate(results):
        assert code == 2 and "Traceback" not in err, (rank, code, err[-3000:])
        assert f"error: could not write {out / 'metrics.jsonl'}: No space left on device" in err.splitlines()[-1], (
            rank,
            err[-3000:],
        )


# rank 0's own work outlasts the process group's timeout (shrunk here from 300 s to 5): tokenizing a corpus of
# ~200 MB (~600k characters/s on 2 cores), or sampling and plotting at the end
SLOW_RANK_ZERO = """
import os, time
from neurallayers.training import distributed, plots, prepare
distributed.init_distributed.__kwdefaults__["timeout_s"] = 5.0
def slow(fn):
    def wrapper(*args, **kwargs):
        if os.environ["RANK"] == "0":
            time.sleep(7)
        return fn(*args, **kwargs)
    return wrapper
if FAULT == "finish":
    plots.plot_losses = slow(plots.plot_losses)
else:
    prepare.prepare_data = slow(prepare.prepare_data)
"""


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("slow_work", ["data", "finish"])
def test_the_other_ranks_wait_for_rank_zero_work_longer_than_the_group_timeout(tmp_path, slow_work):
    """The other ranks waited for rank 0's data preparation (and its samples and plot) only as long as a collective
    waits for a dead peer, then died with gloo's "Timed out waiting 300000ms for recv" traceback and took rank 0's
    tokenizing with them: every first torchrun launch on a corpus of a few hundred MB."""
    run = tiny_run(tmp_path, max_steps=4, save_interval=2, eval_interval=2, batch_size=2, distributed="ddp")
    config = run.to_yaml(tmp_path / "config.yaml")
    out = tmp_path / "run"
    for rank, (code, err) in enumerate(
        two_ranks(
            tmp_path, ["--config", str(config), "--out", str(out)], prelude=f"FAULT = {slow_work!r}\n" + SLOW_RANK_ZERO
        )
    ):
        assert code == 0, (rank, code, err[-3000:])
    assert sorted(step_losses(out)) == [1, 2, 3, 4]
