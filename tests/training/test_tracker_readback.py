"""A killed and resumed run, read back the way its user reads it: TensorBoard's EventAccumulator on the folder of
event files, MLflow's client on the store the user named, the W&B run as wandb reports it; and under torchrun only
rank 0 writes to the trackers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
from nl_train_helpers import child_env, read_jsonl, tiny_run

from neurallayers.training import fit
from neurallayers.training.loggers import MLflowLogger, TensorBoardLogger, WandbLogger, _prune_store


def _user_store(kind: str, tmp_path) -> str:
    """MLFLOW_TRACKING_URI as users write it: a sqlite database, a file URI, or a plain folder path."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path.resolve() / 'user.db'}"
    folder = tmp_path.resolve() / "user-mlruns"
    return folder.as_uri() if kind == "file" else str(folder)


@pytest.mark.parametrize("kind", ["sqlite", "file", "path"])
def test_a_resume_into_the_users_mlflow_store_logs_each_step_once(tmp_path, monkeypatch, kind):
    """Only the run directory's own store dropped a killed session's tail: with MLFLOW_TRACKING_URI set, a resume from
    step 4 after a session that logged up to 6 left steps 5 and 6 twice in the run's history."""
    mlflow = pytest.importorskip("mlflow")
    uri = _user_store(kind, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    killed = MLflowLogger(run_dir)
    for step in range(1, 7):
        killed.log({"loss": 10.0 - step}, step)
    killed.close()
    resumed = MLflowLogger(run_dir, start_step=4)
    for step in range(5, 9):
        resumed.log({"loss": 10.0 - step + 0.5}, step)  # what a resume logs may differ (other data order)
    resumed.close()
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert resumed._run.info.run_id == run_id  # the same run continued
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
    assert history == [(s, 10.0 - s) for s in range(1, 5)] + [(s, 10.5 - s) for s in range(5, 9)]
    assert client.get_run(run_id).data.metrics["loss"] == 2.5


def test_a_tracking_server_that_cannot_drop_steps_is_named_without_its_password(caplog):
    pytest.importorskip("mlflow")
    _prune_store("https://me:s3cret@mlflow.example.org", "abc", 4)
    assert "mlflow.example.org cannot drop metrics a stopped session logged after step 4" in caplog.text
    assert "s3cret" not in caplog.text

def test_wandb_takes_the_run_name_the_user_set(tmp_path, monkeypatch):
    """WANDB_NAME, W&B's documented way to name a run, was overridden by the run directory's name."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_NAME", "baseline-lr3e-3")
    first = WandbLogger(tmp_path)
    first.log({"loss": 2.0}, 1)
    first.close()
    resumed = WandbLogger(tmp_path, start_step=1)
    resumed.close()
    assert (first._run.name, resumed._run.name) == ("baseline-lr3e-3", "baseline-lr3e-3")
    assert resumed._run.id == first._run.id
    monkeypatch.delenv("WANDB_NAME")
    unnamed = WandbLogger(tmp_path / "other-run")
    unnamed.close()
    assert unnamed._run.name == "other-run"  # the run directory's name otherwise


def test_a_fresh_start_after_an_aborted_one_leaves_one_wandb_offline_run(tmp_path, monkeypatch):
    """The aborted start's offline run stayed beside the new one, and `wandb sync` uploaded both as two runs of one
    training (its metrics.jsonl lines, TensorBoard events and MLflow run are dropped)."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    aborted = WandbLogger(tmp_path)
    aborted.log({"loss": 2.0}, 1)
    aborted.failed()
    aborted.close()
    fresh = WandbLogger(tmp_path)
    fresh.log({"loss": 1.9}, 1)
    fresh.close()
    resumed = WandbLogger(tmp_path, start_step=1)  # a resume keeps the run it continues
    resumed.close()
    assert fresh._run.id != aborted._run.id
    # offline-run-<time>-<id>, with -<n> after the id where wandb opened the run twice within one second
    ids = [re.fullmatch(r"offline-run-[0-9_]+-([^-]+)(-\d+)?", p.name)[1]
           for p in sorted((tmp_path / "wandb").glob("offline-run-*"))]
    assert ids == [fresh._run.id] * 2

def test_a_killed_and_resumed_run_reads_back_as_one_history(tmp_path, monkeypatch):
    """Every scalar of metrics.jsonl, in TensorBoard (the folder of both sessions' event files) and in the user's
    MLflow store: the same steps once each, the same values, wall times increasing."""
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = _user_store("file", tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "run"
    run = tiny_run(tmp_path, max_steps=8, eval_interval=3, save_interval=4, loggers=["tensorboard", "mlflow"])
    fit(run, out, progress=False, until_step=6)
    shutil.rmtree(out / "checkpoints/step-6")  # killed after logging step 6 (and its eval), before its checkpoint
    fit(run, out, resume=True, progress=False)

    rows = read_jsonl(out / "metrics.jsonl")
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                expected.setdefault(key, []).append((row["step"], float(value)))
    assert [s for s, _ in expected["loss"]] == list(range(1, 9)) and [s for s, _ in expected["val_loss"]] == [3, 6, 8]

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert sorted(acc.Tags()["scalars"]) == sorted(expected)
    for key, points in expected.items():
        events = acc.Scalars(key)
        assert [(e.step, e.value) for e in events] == [(s, pytest.approx(v, rel=1e-6)) for s, v in points], key
        assert all(a.wall_time <= b.wall_time for a, b in zip(events, events[1:], strict=False)), key

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run_id = (out / "mlflow_run_id").read_text().strip()
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    for key, points in expected.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(s, pytest.approx(v)) for s, v in points], key


def test_tensorboard_shows_the_settings_of_the_sessions_it_kept(tmp_path):
    """An aborted start's settings stayed in the TEXT tab beside the fresh start's (both at step 0, which the fresh
    start did not purge), and two sessions resumed from one checkpoint left two settings texts. Read with the
    accumulator the TensorBoard app serves from (the plain one never purges text)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    def session(lr: float, start_step: int, steps: range) -> None:
        logger = TensorBoardLogger(tmp_path, start_step=start_step, config={"train": {"lr": lr}})
        for step in steps:
            logger.log({"loss": lr * step}, step)
        logger.close()
        time.sleep(1.1)  # event files are read in name order, which starts with the second they were opened

    session(0.1, 0, range(1, 4))  # aborted before its first checkpoint
    session(0.2, 0, range(1, 7))  # started afresh; checkpoint at 4, killed after 6
    session(0.3, 4, range(5, 7))  # resumed from 4, killed again after 6
    session(0.4, 4, range(5, 9))  # resumed from 4 again, to the end
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    texts = [(e.step, make_ndarray(e.tensor_proto).item().decode()) for e in acc.Tensors("config/text_summary")]
    assert [(step, text.split("lr: ")[1][:3]) for step, text in texts] == [(0, "0.2"), (5, "0.4")]
    assert [(e.step, float(make_ndarray(e.tensor_proto))) for e in acc.Tensors("loss")] == [
        (s, pytest.approx(0.2 * s)) for s in range(1, 5)] + [(s, pytest.approx(0.4 * s)) for s in range(5, 9)]

DRIVER = """
import sys
from neurallayers.training import RunConfig, fit
fit(RunConfig.from_yaml(sys.argv[1]), sys.argv[2], progress=False)
"""


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_only_rank_zero_writes_to_the_trackers_under_torchrun(tmp_path):
    """Two processes (gloo): one TensorBoard event file, one MLflow run, one W&B run, and metrics.jsonl once per
    step; rank 1 opens no tracker."""
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    run = tiny_run(tmp_path, max_steps=4, eval_interval=2, save_interval=2, batch_size=2,
                   loggers=["tensorboard", "mlflow", "wandb"])
    run.train.distributed = "ddp"
    run.to_yaml(tmp_path / "config.yaml")
    (tmp_path / "driver.py").write_text(DRIVER)
    uri = (tmp_path / "mlruns").resolve().as_uri()
    env = {**child_env(tmp_path), "MLFLOW_TRACKING_URI": uri, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "driver.py"), str(tmp_path / "config.yaml"), str(out)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [(out / "mlflow_run_id").read_text().strip()]
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [1, 2, 3, 4]


def test_an_aborted_wandb_run_opened_twice_in_one_second_goes_whole(tmp_path, monkeypatch):
    """wandb names a run's second folder within one second offline-run-<time>-<id>-1: it is the aborted run's too."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    aborted = WandbLogger(tmp_path)
    aborted.failed()
    aborted.close()
    old = aborted._run.id
    for name in (f"offline-run-20261207_000000-{old}-1", f"offline-run-20261207_000000-{old}x"):
        (tmp_path / "wandb" / name).mkdir()
    fresh = WandbLogger(tmp_path)
    fresh.close()
    left = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert f"offline-run-20261207_000000-{old}x" in left and not any(n.endswith((old, f"{old}-1")) for n in left)
