"""How fit() joins (or refuses) a torchrun launch, checked without starting processes."""

import pytest
import torch
from nl_train_helpers import tiny_run

from neurallayers.training import fit


def test_distributed_none_under_a_multi_process_torchrun_is_refused(tmp_path, monkeypatch):
    """Each process used to train the whole run as rank 0, all of them into the same run directory."""
    for name, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    run = tiny_run(tmp_path, distributed="none")
    with pytest.raises(
        ValueError,
        match=r"TrainConfig.distributed='none', but torchrun started 2 processes, which "
        r"would each train the whole run into the same files; use 'auto'",
    ):
        fit(run, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")  # a one-process torchrun is one process
    monkeypatch.setenv("RANK", "0")
    assert fit(run, tmp_path / "run", progress=False, until_step=1).steps == 1


def test_more_processes_than_gpus_is_refused_on_every_rank(tmp_path, monkeypatch):
    """torchrun --nproc_per_node 2 on a machine with one GPU: rank 1 died in torch.cuda.set_device(1) ("invalid device
    ordinal") while rank 0 waited for it in the rendezvous; every rank now says it in one line, before the group."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: pytest.fail(f"set_device({index})"))
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: pytest.fail("process group"))
    run = tiny_run(tmp_path, device="cuda")
    for rank in ("0", "1"):
        for name, value in {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(
            ValueError,
            match=r"TrainConfig.device: torchrun started 2 processes on this machine, which has 1 CUDA device\(s\), "
            r"one a process; use --nproc_per_node 1 \(or train.device cpu\)",
        ):
            fit(run, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_collective_another_process_broke_off_reads_as_one_line():
    """A dead or hung peer's collective error (gloo's socket closed or reset, its timeouts, NCCL's watchdog) becomes
    one line naming this rank and where the run resumes from; other errors, and any error of one process, stay."""
    from neurallayers.training.distributed import DistInfo, PeerLostError, peer_lost

    two = DistInfo(rank=1, world_size=2, mode="ddp")
    then = "the run resumes from its last checkpoint (step 4)"
    cases = [  # (the backend's message, the part the line quotes)
        (
            "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
            "[127.0.0.1]:49334. This is typically caused by a remote worker crashing.",
            "Connection closed by peer [127.0.0.1]:49334",
        ),
        (
            "[.../pair.cc:537] Read error [127.0.0.1]:51903: Connection reset by peer. This is typically caused by a "
            "remote worker hanging",
            "Connection reset by peer",
        ),
        (
            "[.../unbound_buffer.cc:78] Timed out waiting 300000ms for recv operation to complete",
            "Timed out waiting 300000ms for recv operation to complete",
        ),
        ("Application timeout caused pair closure", "Application timeout caused pair closure"),
        (
            "[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, OpType=ALLREDUCE) ran for "
            "300000 milliseconds before timing out.",
            "Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, OpType=ALLREDUCE) ran for 300000 "
            "milliseconds before timing out",
        ),
    ]
    for message, what in cases:
        lost = peer_lost(RuntimeError(message), two, then)
        assert isinstance(lost, PeerLostError) and str(lost) == (
            f"another process of this 2-process run failed or stopped answering ({what}), its own output says why; "
            f"this is rank 1: {then}"
        ), (message, str(lost))
        assert peer_lost(RuntimeError(message), DistInfo(), then) is None  # one process: no peer to lose
        assert peer_lost(lost, two, then) is None  # already said
    assert peer_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), two, then) is None
    assert peer_lost(ValueError("Connection closed by peer"), two, then) is None
