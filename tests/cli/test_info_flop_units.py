"""How `info` prints FLOPs: three significant figures in the largest unit they fill, never "1e+03" of a unit."""

from __future__ import annotations

import pytest

from neurallayers.cli.info import _flops, describe
from neurallayers.config import ModelConfig


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 FLOP"), (999.4, "999 FLOP"), (999.5, "1 kFLOP"), (999_600, "1 MFLOP"), (999_849_999, "1 GFLOP"),
    (999_950_000_000, "1 TFLOP"), (284_812_800, "285 MFLOP"), (1_680_000_000, "1.68 GFLOP"),
])
def test_flops_round_into_the_next_unit(n, text):
    """999.8 MFLOP rounded to three figures is 1,000 MFLOP: it printed "1e+03 MFLOP"."""
    assert _flops(n) == text


def test_info_of_gpt2_at_a_context_that_rounds_to_a_gflop():
    cfg = ModelConfig.from_name("gpt2")
    assert cfg.flops_per_token(20_420) == 999_826_944  # 247,064,064 + 4 x 12 x 768 x 20,420
    assert "FLOPs per token  forward 1 GFLOP, training 3 GFLOP (context 20,420)" in describe(cfg, context=20_420)
