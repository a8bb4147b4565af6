"""What the trackers and the loss plot leave behind, read back by the real tools (EventAccumulator, MlflowClient,
matplotlib), including after a crash."""

from __future__ import annotations

import json

import pytest

from neurallayers.training.loggers import MLflowLogger, TensorBoardLogger, build_loggers
from neurallayers.training.plots import plot_losses


def test_tensorboard_events_are_on_disk_after_each_log(tmp_path):
    """The writer's thread flushed only every 2 minutes: a crash or a kill lost every event since, while
    metrics.jsonl held them."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path)
    for step in (1, 2, 3):
        logger.log({"loss": 1.0 / step, "grad_norm": float("nan"), "best": True, "nan_guard": "note"}, step)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()  # before close(): what a crashed process leaves
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    assert sorted(acc.Tags()["scalars"]) == ["grad_norm", "loss"]  # bools and strings are not scalars
    logger.close()


def test_mlflow_run_left_open_by_a_crashed_training_is_ended(tmp_path, monkeypatch):
    """A training that crashed before closing its loggers left its MLflow run active, and every later run in the
    process failed with "Run ... is already active"."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    crashed = MLflowLogger(tmp_path / "a")
    crashed.log({"loss": 2.0}, step=1)  # never closed
    first = crashed._run.info.run_id
    logger = MLflowLogger(tmp_path / "b")
    logger.log({"loss": 1.5}, step=1)
    logger.close()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'a').resolve() / 'mlflow.db'}")
    assert client.get_run(first).info.status == "FAILED"


def test_mlflow_leaves_a_run_the_user_started_alone(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path.resolve() / 'user.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as theirs:
        with pytest.raises(Exception, match="already active"):  # mlflow raises a bare Exception
            MLflowLogger(tmp_path / "run")
        assert mlflow.active_run().info.run_id == theirs.info.run_id


def test_loss_plot_keeps_the_process_matplotlib_backend(tmp_path):
    """plot_losses called matplotlib.use("Agg"): after fit() a notebook's inline backend was gone."""
    matplotlib = pytest.importorskip("matplotlib")
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        (tmp_path / "metrics.jsonl").write_text(
            "".join(
                json.dumps(r) + "\n"
                for r in [
                    {"step": 1, "loss": 2.0},
                    {"step": 2, "loss": "nan"},
                    {"step": 2, "val_loss": 1.5, "best": True},
                ]
            )
        )
        assert plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png") == tmp_path / "loss.png"
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_plot_skips_lines_that_are_not_records(tmp_path):
    """A line that parses as JSON but is no record (a number, a list, a row without a step) crashed the plot at
    the end of a finished run."""
    pytest.importorskip("matplotlib")
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 2.0}\n7\n[1, 2]\n{"loss": 1.0}\n{"step": 2, "loss": 1.8}\n'
    )
    assert plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png") == tmp_path / "loss.png"
    assert plot_losses(tmp_path / "missing.jsonl", tmp_path / "none.png") is None


def test_mlflow_file_store_drops_a_killed_sessions_tail_on_resume(tmp_path, monkeypatch):
    """Under a bare mlflow-skinny (no SQLAlchemy) the run directory's store is mlruns/: a resume from step 4 after a
    session that logged up to 6 showed steps 5 and 6 twice (only the sqlite store was pruned)."""
    mlflow = pytest.importorskip("mlflow")
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sqlalchemy" else find_spec(name, *a)
    )
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    killed = MLflowLogger(tmp_path)
    for step in range(1, 7):
        killed.log({"loss": 10.0 - step}, step)
    killed.close()
    resumed = MLflowLogger(tmp_path, start_step=4)
    for step in range(5, 9):
        resumed.log({"loss": 10.0 - step}, step)
    resumed.close()
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    run_id = (tmp_path / "mlflow_run_id").read_text().strip()
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [
        (s, 10.0 - s) for s in range(1, 9)
    ]
    assert client.get_run(run_id).data.metrics["loss"] == 2.0


def test_mlflow_resume_records_only_settings_that_changed(tmp_path, monkeypatch):
    """MLflow cuts a parameter's value to 6000 characters: long sample prompts read as changed at every resume, and
    the resumed run got a "resumed_at_step_N" tag for a setting nobody changed."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = {"train": {"lr": 0.001, "sample_prompts": ["to be or not " * 600]}}
    MLflowLogger(tmp_path, config=config).close()
    resumed = MLflowLogger(tmp_path, start_step=4, config={"train": {**config["train"], "lr": 0.002}})
    run_id = resumed._run.info.run_id
    resumed.close()
    tags = (
        mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
        .get_run(run_id)
        .data.tags
    )
    assert {k: v for k, v in tags.items() if k.startswith("resumed_at")} == {"resumed_at_step_4.train.lr": "0.002"}


def test_a_misspelt_wandb_mode_is_named(tmp_path, monkeypatch):
    """wandb's own error was "1 validation error for Settings", which names neither the variable nor the values."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(
        ValueError,
        match=r"the wandb logger could not start: WANDB_MODE='ofline': expected one of "
        r"offline, online, disabled",
    ):
        build_loggers(["wandb"], tmp_path)
    assert not (tmp_path / "wandb").exists()


@pytest.mark.parametrize("store", ["sqlite", "file"])
def test_a_fresh_start_after_a_killed_one_deletes_its_mlflow_run(tmp_path, monkeypatch, store):
    """Killed before its first checkpoint, a run started again without --resume drops the killed start's
    metrics.jsonl lines and weights, but its run stayed in the run directory's MLflow store, RUNNING for ever beside
    the new one."""
    mlflow = pytest.importorskip("mlflow")
    import importlib.util

    if store == "file":  # a bare mlflow-skinny: the store is mlruns/
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == "sqlalchemy" else find_spec(name, *a)
        )
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}" if store == "sqlite" else (tmp_path / "mlruns").as_uri()
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    killed = client.create_run(client.get_experiment_by_name("Default").experiment_id)  # RUNNING, as a kill left it
    client.log_metric(killed.info.run_id, "loss", 2.0, step=1)
    (tmp_path / "mlflow_run_id").write_text(killed.info.run_id + "\n")
    fresh = MLflowLogger(tmp_path)
    fresh.log({"loss": 1.5}, step=1)
    fresh.close()
    assert client.get_run(killed.info.run_id).info.lifecycle_stage == "deleted"
    runs = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    assert [r.info.run_id for r in runs] == [fresh._run.info.run_id] and runs[0].info.status == "FINISHED"


def _tensorboard_failing(monkeypatch, method: str, *, from_step: int = 0) -> None:
    """SummaryWriter.<method> raising a full disk's error (from `from_step` on, for add_scalar)."""
    import errno

    from torch.utils.tensorboard import SummaryWriter

    real = getattr(SummaryWriter, method)

    def failing(self, *args, **kwargs):
        if method != "add_scalar" or args[2] >= from_step:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, method, failing)


def test_a_tracker_failing_mid_run_stops_the_run_in_one_line_and_it_resumes(tmp_path, monkeypatch):
    """A tracker's full disk (or its server gone) mid-run ended training with the tracker library's traceback (the
    CLI prints one line only for the errors it knows): now one line naming the tracker, the step and the checkpoint
    the run resumes from; the resume then logs every step once."""
    pytest.importorskip("tensorboard")
    from nl_train_helpers import read_jsonl, tiny_run

    from neurallayers.cli.common import USER_ERRORS
    from neurallayers.training import fit

    run = tiny_run(tmp_path, max_steps=4, eval_interval=0, save_interval=2, loggers=["tensorboard"])
    _tensorboard_failing(monkeypatch, "add_scalar", from_step=3)
    with pytest.raises(USER_ERRORS) as failure:
        fit(run, tmp_path / "run", progress=False)
    assert str(failure.value) == (
        "the tensorboard logger failed at step 3: [Errno 28] No space left on device; "
        "the run resumes from its last checkpoint (step 2)"
    )
    monkeypatch.undo()
    assert fit(run, tmp_path / "run", resume=True, progress=False).steps == 4
    assert [r["step"] for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]


def test_a_tracker_failing_to_close_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from nl_train_helpers import tiny_run

    from neurallayers.cli.common import USER_ERRORS
    from neurallayers.training import fit

    run = tiny_run(tmp_path, max_steps=2, eval_interval=0, loggers=["tensorboard"])
    _tensorboard_failing(monkeypatch, "close")
    with pytest.raises(USER_ERRORS) as failure:
        fit(run, tmp_path / "run", progress=False)
    assert str(failure.value) == (
        "the tensorboard logger failed to close: [Errno 28] No space left on device; the "
        "run resumes from its last checkpoint (step 2)"
    )


def test_trackers_that_are_not_installed_are_all_named_before_any_work(tmp_path, monkeypatch):
    """A missing tracker was found only once the corpus was tokenized and the run directory written (config.yaml,
    an empty metrics.jsonl), and one at a time: wandb named, then after installing it, mlflow."""
    import sys

    from nl_train_helpers import tiny_run

    from neurallayers.training import fit

    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets where it is not installed
    monkeypatch.setitem(sys.modules, "mlflow", None)
    run = tiny_run(tmp_path, loggers=["tensorboard", "wandb", "mlflow"])
    with pytest.raises(ValueError) as failure:
        fit(run, tmp_path / "run", progress=False)
    assert str(failure.value) == (
        "train.loggers names trackers that are not installed: wandb, mlflow; pip install 'neurallayers[track]'"
    )
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match=r"^loggers names trackers that are not installed: wandb;"):
        fit(run, tmp_path / "run", loggers=["wandb"], progress=False)
