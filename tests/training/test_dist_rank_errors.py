"""An error that only rank 0 meets (it alone tokenizes the data, opens the loggers and writes the run's files) ends
every rank of `neurallayers train` with that one line and exit 2: the others used to wait in a collective and die
with gloo's "Connection closed by peer" traceback (without a launcher that kills them: after rank 0 had exited)."""

import socket
import subprocess
import sys

import pytest
import torch
from nl_train_helpers import child_env, tiny_run

CLI = "import sys\nfrom neurallayers.__main__ import main\nsys.exit(main(sys.argv[1:]))\n"


def two_ranks(tmp_path, args: list[str]) -> list[tuple[int, str]]:
    """`neurallayers train ARGS` as ranks 0 and 1 of a DDP run (as torchrun starts them): (exit code, stderr) each."""
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
            [sys.executable, "-c", CLI, "train", *args, "--no-progress"],
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
