"""Metric loggers: metrics.jsonl always; TensorBoard, MLflow and Weights & Biases when asked for.

Each logger has `log(metrics, step)` and `close()`; the trackers also `failed()`, called before `close()` when the
training raised an error. They import their library in `__init__` and name the `neurallayers[track]` extra when it
is missing. A resumed run (`start_step` > 0) continues its history: TensorBoard purges the events a killed session
wrote past the checkpoint, MLflow and W&B log into the run they started (its id is kept in the run directory:
mlflow_run_id, wandb_run_id). A tracker that fails mid-run (its disk full, its server gone) stops training with one
line naming it (TrackerError), as a full disk under metrics.jsonl does.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from neurallayers.files import WriteError

_EXTRA = "pip install 'neurallayers[track]'"
log = logging.getLogger("neurallayers.training")


def _run_id(run_dir: str | os.PathLike, name: str, start_step: int) -> str | None:
    """The tracker run id an earlier session of this run saved, when resuming."""
    path = Path(run_dir) / name
    if start_step == 0 or not path.is_file():
        return None
    return path.read_text().strip() or None


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN/Inf: write them as strings so a line stays valid JSON."""
    out = {}
    for k, v in metrics.items():
        out[k] = str(v) if isinstance(v, float) and not math.isfinite(v) else v
    return out


class JSONLLogger:
    """One JSON object per line in `run_dir/metrics.jsonl` (appended; flushed after every line)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        try:
            self._f.write(json.dumps({"step": step, **_clean(metrics)}) + "\n")
            self._f.flush()
        except OSError as e:
            raise self._write_error(e) from e

    def close(self) -> None:
        try:
            self._f.close()  # flushes again what a failed write left buffered: the same error
        except OSError as e:
            raise self._write_error(e) from e

    def _write_error(self, e: OSError) -> WriteError:
        """A full disk in the middle of training: one line, not a traceback; no checkpoint can be saved then."""
        return WriteError(e.errno, f"could not write {self.path}: {e.strerror or e}; the run resumes from its last "
                                   "checkpoint")


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows JSONLLogger wrote to a metrics.jsonl, skipping a line cut off by a kill; [] when there is none."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"model.n_layer": "4", ...}: a run config as a tracker's parameters (lists and mappings as JSON)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value and prefix == "":
            out.update(_flat(value, f"{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardLogger:
    """Scalars to a TensorBoard event file under `run_dir/tensorboard/`."""

    def __init__(self, run_dir: str | os.PathLike, *, start_step: int = 0, config: dict | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(f"the tensorboard logger needs the tensorboard package: {_EXTRA}") from None
        self.log_dir = Path(run_dir) / "tensorboard"
        # purge_step: TensorBoard drops the earlier files' events from this step on: a killed session's tail past the
        # checkpoint, or all of an aborted start's (its settings at step 0 included) when the run starts afresh
        first = start_step + 1 if start_step else 0
        self._w = SummaryWriter(log_dir=str(self.log_dir), purge_step=first)
        if config is not None:  # the settings (TEXT tab) at this session's first step: what it purges, it replaces
            import yaml

            self._w.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", first)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for k, v in _scalars(metrics).items():
            self._w.add_scalar(k, v, step)
        # on disk now, as metrics.jsonl's line is: the writer's own thread flushes only every 2 minutes, and a crash
        # or a kill lost everything since
        self._w.flush()

    def close(self) -> None:
        self._w.flush()
        self._w.close()


_URIS_SET_HERE = {""}  # MLflow stores this module chose (in run directories), as opposed to the user's


class MLflowLogger:
    """Metrics to MLflow: the tracking URI from MLFLOW_TRACKING_URI, else a store in the run directory: mlflow.db
    (sqlite; the track extra installs the SQLAlchemy it needs), or mlruns/ (a file store) where SQLAlchemy is
    missing, as under a bare mlflow-skinny, which cannot write sqlite."""

    def __init__(self, run_dir: str | os.PathLike, *, start_step: int = 0, run_name: str | None = None,
                 config: dict | None = None) -> None:
        os.environ.setdefault("DO_NOT_TRACK", "true")  # mlflow ignores the value 1
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            import mlflow
        except ImportError:
            raise ImportError(f"the mlflow logger needs mlflow (or mlflow-skinny): {_EXTRA}") from None
        self._mlflow = mlflow
        _end_abandoned_run(mlflow)
        run_dir = Path(run_dir).resolve()
        own = f"sqlite:///{run_dir / 'mlflow.db'}"
        # mlflow.set_tracking_uri also sets $MLFLOW_TRACKING_URI: a value we set for an earlier run in this process
        # is not the user's (it would send this run into the earlier run's store)
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if uri in _URIS_SET_HERE:
            uri = own if importlib.util.find_spec("sqlalchemy") else (run_dir / "mlruns").as_uri()
            _URIS_SET_HERE.add(uri)
        mlflow.set_tracking_uri(uri)  # the user's too: mlflow keeps the one an earlier run here set over the variable
        self._run = None
        if start_step == 0 and uri in (own, (run_dir / "mlruns").as_uri()):  # the run directory's own store
            _delete_aborted_start(mlflow, run_dir)
        earlier = _run_id(run_dir, "mlflow_run_id", start_step)
        if earlier:
            # the user's local store too (MLFLOW_TRACKING_URI): the run is this run directory's, its killed tail as much
            _prune_store(uri, earlier, start_step)
            try:
                self._run = mlflow.start_run(run_id=earlier)
            except mlflow.exceptions.MlflowException as e:
                log.warning("mlflow: cannot continue run %s (%s); starting a new one", earlier, str(e)[:200])
        if self._run is None:
            self._run = mlflow.start_run(run_name=run_name or run_dir.name)
        _OPEN_HERE.add(self._run.info.run_id)
        (run_dir / "mlflow_run_id").write_text(self._run.info.run_id + "\n")
        if config is not None:
            self._log_params(_flat(config), start_step)

    def _log_params(self, params: dict[str, str], start_step: int) -> None:
        """The run's settings as parameters; a resume that changed some (MLflow keeps a parameter's first value)
        records the new values as tags "resumed_at_step_N.<name>"."""
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        held = self._mlflow.get_run(self._run.info.run_id).data.params
        new = {k: v for k, v in params.items() if k not in held}
        if new:
            self._mlflow.log_params(new)
        # MLflow keeps a long value's first MAX_PARAM_VAL_LENGTH characters: compared whole, it read as a change at
        # every resume
        changed = {f"resumed_at_step_{start_step}.{k}": v for k, v in params.items()
                   if k in held and held[k] != v[:MAX_PARAM_VAL_LENGTH]}
        if changed:
            self._mlflow.set_tags(changed)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._mlflow.log_metrics(_scalars(metrics), step=step)

    def failed(self) -> None:
        self._status = "FAILED"

    def close(self) -> None:
        _OPEN_HERE.discard(self._run.info.run_id)
        self._mlflow.end_run(status=getattr(self, "_status", "FINISHED"))


_OPEN_HERE: set[str] = set()  # ids of the MLflow runs this module started and has not ended


def _end_abandoned_run(mlflow: Any) -> None:
    """Ends, as FAILED, the active MLflow run an earlier training in this process started and never closed (it
    crashed): left active, it made every later run in the process fail with "Run ... is already active". A run the
    user started is theirs: it stays."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id in _OPEN_HERE:
        log.warning("mlflow: ending run %s, which an earlier training in this process left open, as FAILED",
                    active.info.run_id)
        mlflow.end_run(status="FAILED")  # its store is still the tracking URI: nothing changed it since
        _OPEN_HERE.discard(active.info.run_id)


def _delete_aborted_start(mlflow: Any, run_dir: Path) -> None:
    """A fresh start in a run directory that an earlier start left before its first checkpoint (killed, or failed):
    its metrics.jsonl lines and weights go, and so does its run in the directory's own MLflow store, which a kill
    left RUNNING for ever beside the new one."""
    path = run_dir / "mlflow_run_id"
    old = path.read_text().strip() if path.is_file() else ""
    if not old:
        return
    try:
        mlflow.tracking.MlflowClient().delete_run(old)
    except mlflow.exceptions.MlflowException as e:
        log.warning("mlflow: could not delete run %s of the earlier start (%s)", old, str(e)[:200])


def _prune_store(uri: str, run_id: str, step: int) -> None:
    """Drops the metrics a killed session logged past `step` from the store at `uri`: a sqlite database or a file
    store on this machine (the run directory's own, or one the user named in MLFLOW_TRACKING_URI). A server's store
    cannot be pruned (MLflow has no API that deletes metric history): a warning says so."""
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri

    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):].split("?")[0])
        if db.is_file():
            _prune_after(db, run_id, step)
    elif is_local_uri(uri):
        root = Path(local_file_uri_to_path(uri))
        if root.is_dir():
            _prune_files_after(root, run_id, step)
    else:
        log.warning("mlflow: the store %s cannot drop metrics a stopped session logged after step %d: any such "
                    "steps show twice", uri.split("@")[-1], step)


def _prune_after(db: Path, run_id: str, step: int) -> None:
    """Drops a killed session's metrics past the resumed `step` from a sqlite MLflow store, so that
    the run's history holds each step once, as TensorBoard's purge_step does (MLflow has no API that deletes metric
    history). A store it cannot read is left as it is, with a warning."""
    import contextlib
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(db)) as con, con:
            con.execute("DELETE FROM metrics WHERE run_uuid = ? AND step > ?", (run_id, step))
            con.execute("DELETE FROM latest_metrics WHERE run_uuid = ? AND step > ?", (run_id, step))
            # a key whose latest value was dropped: its newest remaining one
            con.execute(
                "INSERT OR REPLACE INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                "SELECT m.key, m.value, m.timestamp, m.step, m.is_nan, m.run_uuid FROM metrics m "
                "WHERE m.run_uuid = ? AND m.key NOT IN (SELECT key FROM latest_metrics WHERE run_uuid = ?) "
                "AND (m.step, m.timestamp) = (SELECT step, timestamp FROM metrics WHERE run_uuid = m.run_uuid "
                "AND key = m.key ORDER BY step DESC, timestamp DESC LIMIT 1)", (run_id, run_id))
    except sqlite3.Error as e:
        log.warning("mlflow: could not drop the metrics logged after step %d by the stopped session (%s); the "
                    "run shows those steps twice", step, e)


def _prune_files_after(root: Path, run_id: str, step: int) -> None:
    """_prune_after for the file store (mlruns/): a metric's file holds one "timestamp value step" line per value."""
    for path in root.glob(f"*/{run_id}/metrics/**/*"):
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        keep = [x for x in lines if _line_step(x) is not None and _line_step(x) <= step]  # a torn line goes too
        if len(keep) < len(lines):
            part = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            part.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
            os.replace(part, path)


def _line_step(line: str) -> int | None:
    parts = line.split()
    return int(parts[2]) if len(parts) == 3 and parts[2].lstrip("-").isdigit() else None


_WANDB_MODES = ("offline", "online", "disabled", "shared", "dryrun", "run")  # what wandb.init accepts


class WandbLogger:
    """Metrics to Weights & Biases; the mode (online/offline/disabled) comes from WANDB_MODE, default offline."""

    def __init__(self, run_dir: str | os.PathLike, *, start_step: int = 0, run_name: str | None = None,
                 config: dict | None = None) -> None:
        try:
            import wandb
        except ImportError:
            raise ImportError(f"the wandb logger needs wandb: {_EXTRA}") from None
        mode = os.environ.get("WANDB_MODE") or "offline"
        if mode not in _WANDB_MODES:  # wandb's own error said only "1 validation error for Settings"
            raise ValueError(f"WANDB_MODE={mode!r}: expected one of {', '.join(_WANDB_MODES)}")
        if start_step == 0:
            _delete_aborted_offline_run(Path(run_dir))
        earlier = _run_id(run_dir, "wandb_run_id", start_step)
        # resume="allow": the earlier session's run continues; W&B skips steps it already holds (a killed
        # session's tail, which an exact resume logs again with the same values)
        # WANDB_NAME, where the user set it, names the run (an argument here overrode it)
        name = run_name or os.environ.get("WANDB_NAME") or Path(run_dir).name
        self._run = wandb.init(dir=str(run_dir), name=name, id=earlier,
                               resume="allow" if earlier else None, mode=mode)
        (Path(run_dir) / "wandb_run_id").write_text(self._run.id + "\n")
        if config is not None:  # the run's settings (a resume's changes replace them)
            self._run.config.update(config, allow_val_change=True)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._run.log(_scalars(metrics), step=step)

    def failed(self) -> None:
        self._exit_code = 1

    def close(self) -> None:
        self._run.finish(exit_code=getattr(self, "_exit_code", 0))


def _delete_aborted_offline_run(run_dir: Path) -> None:
    """A fresh start after an aborted one (see _delete_aborted_start): the aborted start's offline run goes, or
    `wandb sync` uploaded it as a second run of the same training. A run it sent online stays on the server."""
    import re
    import shutil

    path = run_dir / "wandb_run_id"
    old = path.read_text().strip() if path.is_file() else ""
    if old:
        # offline-run-<time>-<id>, or -<id>-<n> where wandb opened that run twice within one second
        for folder in (run_dir / "wandb").glob("offline-run-*"):
            if re.fullmatch(rf"offline-run-[0-9_]+-{re.escape(old)}(-\d+)?", folder.name):
                shutil.rmtree(folder, ignore_errors=True)


LOGGERS = {"jsonl": JSONLLogger, "tensorboard": TensorBoardLogger, "mlflow": MLflowLogger, "wandb": WandbLogger}


# the module each tracker's library installs (mlflow-skinny's too is mlflow)
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def check_installed(names: list[str], field: str) -> None:
    """Names, in one line, every tracker in `names` whose package is missing: build_loggers found them one at a time,
    once the corpus was tokenized and the run directory written. A package that is there but fails to import is
    still build_loggers' to name."""
    missing = [n for n in dict.fromkeys(names) if n in _PACKAGES and not _installed(_PACKAGES[n])]
    if missing:
        raise ValueError(f"{field} names trackers that are not installed: {', '.join(missing)}; {_EXTRA}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # imported already, without a __spec__: it is there
        return True


class TrackerError(WriteError):
    """A logger that failed during training (its disk full, its server gone): one line naming it, not the tracker
    library's traceback. Training stops there, as on a full disk under metrics.jsonl."""


def tracker_error(logger: object, e: Exception, what: str, then: str) -> WriteError:
    """`e`, which `logger` raised, as "the NAME logger WHAT: <e's first line>; THEN". metrics.jsonl's WriteError is
    one line already."""
    if isinstance(e, WriteError):
        return e
    name = next((n for n, cls in LOGGERS.items() if type(logger) is cls), type(logger).__name__)
    return TrackerError(getattr(e, "errno", None), f"the {name} logger {what}: {_first_line(e)}; {then}")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def build_loggers(names: list[str], run_dir: str | os.PathLike, *, start_step: int = 0,
                  config: dict | None = None) -> list:
    """JSONL plus the named trackers ("tensorboard", "mlflow", "wandb"), each writing under `run_dir`; a run resumed
    after `start_step` optimizer steps continues the trackers' history from there. `config` (the run config as a
    dict) is recorded by each tracker: TensorBoard text, MLflow parameters, W&B config."""
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"unknown logger(s) {unknown}; allowed: {', '.join(LOGGERS)}")
    ordered = ["jsonl"] + [n for n in dict.fromkeys(names) if n != "jsonl"]
    opened = []
    for name in ordered:
        try:
            opened.append(LOGGERS[name](run_dir) if name == "jsonl" else
                          LOGGERS[name](run_dir, start_step=start_step, config=config))
        except Exception as e:  # a missing extra, no W&B login, an unreachable MLflow server: one clear line
            for logger in opened:
                logger.close()
            raise ValueError(f"the {name} logger could not start: {_first_line(e)}") from e
    return opened
