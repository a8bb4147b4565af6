"""How fit() joins (or refuses) a torchrun launch, checked without starting processes."""

import pytest
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
