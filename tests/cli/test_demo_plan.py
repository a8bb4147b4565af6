"""`neurallayers demo` plans its steps (and, on a slow CPU, a smaller batch) from a measured step time."""

from __future__ import annotations

import pytest

from neurallayers.cli import demo


@pytest.mark.parametrize(("ms_per_sequence", "batch_size", "steps"), [
    (9.0, 16, 1416),   # Zen 5 with bf16: 144 ms a step of 16
    (35.0, 8, 728),    # Zen 3, fp32: 560 ms a step of 16 would be 364 steps; 280 ms a step of 8
    (200.0, 8, 127),   # slower still: batch 8, fewer steps
    (1000.0, 8, 100),  # never fewer than 100 steps
])
def test_plan_fills_the_minutes_and_halves_the_batch_on_a_slow_cpu(monkeypatch, ms_per_sequence, batch_size,
                                                                   steps):
    def measure(run_cfg):
        return run_cfg.train.batch_size * ms_per_sequence / 1000

    monkeypatch.setattr(demo, "measure_step_seconds", measure)
    assert demo.plan(4.0) == (batch_size, steps, pytest.approx(batch_size * ms_per_sequence / 1000))
