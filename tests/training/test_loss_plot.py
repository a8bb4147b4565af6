"""loss.png plots exactly metrics.jsonl's numbers: the train loss of every logged step (a NaN guard row's finite loss
too, its "nan" not), the val loss of every evaluation, against their steps."""

import json

import pytest

from neurallayers.training.plots import plot_losses


def test_the_plotted_lines_are_the_metrics_rows(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    rows = [{"step": 1, "loss": 4.0, "lr": 1e-3, "tokens": 64}, {"step": 2, "loss": 3.5},
            {"step": 3, "loss": "nan", "grad_norm": "nan", "nan_guard": "skipped step 3"},
            {"step": 4, "loss": 3.0, "grad_norm": "inf", "nan_guard": "skipped step 4"},
            {"step": 4, "val_loss": 3.2, "perplexity": 24.5, "best": True}, {"step": 5, "loss": 2.5},
            {"step": 6, "val_loss": "nan", "perplexity": "nan", "best": False}, {"step": 6, "early_stopping": "x"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "lo')
    drawn = {}
    save = Figure.savefig

    def record(fig, *args, **kwargs):
        for line in fig.axes[0].get_lines():
            drawn[line.get_label()] = (list(line.get_xdata()), list(line.get_ydata()))
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    assert plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png") == tmp_path / "loss.png"
    assert drawn == {"train": ([1, 2, 4, 5], [4.0, 3.5, 3.0, 2.5]), "val": ([4], [3.2])}
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _drawn_lines(monkeypatch) -> dict:
    """Each line of the figure plot_losses saves: label -> (points, whether a marker shows each point)."""
    from matplotlib.figure import Figure

    drawn = {}
    save = Figure.savefig

    def record(fig, *args, **kwargs):
        for line in fig.axes[0].get_lines():
            drawn[line.get_label()] = (len(line.get_xdata()), line.get_marker() not in (None, "None", "", " "))
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return drawn


def test_a_run_of_one_logged_step_draws_its_point(tmp_path, monkeypatch):
    """A line through one point draws nothing: the loss.png of a one-step run (max_steps=1, or a first session stopped
    at step 1) showed empty axes under a legend."""
    pytest.importorskip("matplotlib")
    drawn = _drawn_lines(monkeypatch)
    rows = [{"step": 1, "loss": 4.0, "lr": 1e-3}, {"step": 1, "val_loss": 3.9, "perplexity": 49.4, "best": True}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png") == tmp_path / "loss.png"
    assert drawn == {"train": (1, True), "val": (1, True)}
