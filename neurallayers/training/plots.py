"""Loss curves from metrics.jsonl (matplotlib, imported lazily: the `plot` extra)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("neurallayers.training")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file (a torn last line from a crash is skipped)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_losses(metrics_path: str | os.PathLike, out_path: str | os.PathLike) -> Path | None:
    """Train loss (and val loss where evaluated) against step, written as a PNG.

    Returns:
        The PNG path, or None when matplotlib is missing or the file cannot be written (a warning says so), or
        there is nothing to plot.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: skipping the loss plot (pip install 'neurallayers[plot]')")
        return None
    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))]
    val = [(r["step"], r["val_loss"]) for r in rows if isinstance(r.get("val_loss"), (int, float))]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train", linewidth=1)
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
    finally:
        plt.close(fig)
    return out_path
