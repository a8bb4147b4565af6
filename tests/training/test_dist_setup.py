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
