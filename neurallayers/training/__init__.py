"""Training: `fit(run_config, out_dir)` writes a run directory; `load_run(run_dir)` reads one back."""

from neurallayers.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, load_run
from neurallayers.training.config import DataConfig, RunConfig, TrainConfig, apply_overrides
from neurallayers.training.loggers import build_loggers
from neurallayers.training.trainer import TrainResult, fit

__all__ = [
    "DataConfig",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "build_loggers",
    "fit",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_run",
]
