"""Loss curves from metrics.jsonl (matplotlib, imported lazily: the `plot` extra)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from neurallayers.training.loggers import read_metrics

log = logging.getLogger("neurallayers.training")


def _points(rows: list[dict], key: str) -> list[tuple[float, float]]:
    """(step, value) of the rows that hold a number under `key` and a step (NaN/Inf are written as strings)."""
    return [
        (r["step"], r[key])
        for r in rows
        if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), (int, float))
    ]


def plot_losses(metrics_path: str | os.PathLike, out_path: str | os.PathLike) -> Path | None:
    """Train loss (and val loss where evaluated) against step, written as a PNG.

    Returns:
        The PNG path, or None when matplotlib is missing or the file cannot be written (a warning says so), or
        there is nothing to plot.
    """
    try:
        # a bare Figure, not pyplot: matplotlib.use("Agg") switched the backend of the whole process, so a notebook
        # that trained a model showed no more plots
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: skipping the loss plot (pip install 'neurallayers[plot]')")
        return None
    rows = read_metrics(metrics_path)
    train, val = _points(rows, "loss"), _points(rows, "val_loss")
    if not train and not val:
        return None
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    if train:
        # a line through one point draws nothing (a one-step run): a marker shows it
        ax.plot(
            *zip(*train, strict=True), label="train", linewidth=1, marker="o" if len(train) == 1 else None, markersize=3
        )
    if val:
        ax.plot(*zip(*val, strict=True), label="val", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_path = Path(out_path)
    # a temp name, then a rename: a kill or a failed write mid-save leaves the previous plot whole
    part = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(part, format=out_path.suffix.lstrip(".") or "png")
        os.replace(part, out_path)
    except OSError as e:  # the plot is a convenience: a finished run must not fail on it
        part.unlink(missing_ok=True)
        log.warning("could not write the loss plot %s (%s)", out_path, e)
        return None
    return out_path
