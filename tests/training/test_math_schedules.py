"""Learning-rate schedules against transformers' get_*_schedule_with_warmup, step by step, and their defaults.

Our convention (TrainConfig.lr_at, 0-based steps): warmup step s uses lr * (s + 1) / warmup_steps, so the first
update already moves the weights (transformers' first step uses lr 0) and the last warmup step reaches lr; from
step warmup_steps on, the decay is transformers' own at the same step.
"""

import math

import pytest
import torch

from neurallayers.training import RunConfig, TrainConfig

transformers = pytest.importorskip("transformers")

LR, MIN_LR, WARMUP, STEPS = 1.0, 0.1, 4, 14


def hf_rates(make, steps: int, **kwargs) -> list[float]:
    """The rate each of `steps` optimizer steps uses under a transformers scheduler."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = make(opt, **kwargs)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return rates


def ours(schedule: str, *, warmup: int = WARMUP, min_lr: float | None = MIN_LR, steps: int = STEPS) -> list[float]:
    cfg = TrainConfig(schedule=schedule, lr=LR, min_lr=min_lr, warmup_steps=warmup, max_steps=steps)
    return [cfg.lr_at(s) for s in range(steps)]


def test_cosine_and_linear_decay_equal_transformers_at_every_step():
    cos = hf_rates(
        transformers.get_cosine_with_min_lr_schedule_with_warmup,
        STEPS,
        num_warmup_steps=WARMUP,
        num_training_steps=STEPS,
        min_lr=MIN_LR,
    )
    assert ours("cosine")[WARMUP:] == pytest.approx(cos[WARMUP:], abs=1e-12)  # first decay step to the last
    assert ours("cosine")[:WARMUP] == pytest.approx(cos[1 : WARMUP + 1])  # warmup: one step ahead
    lin = hf_rates(
        transformers.get_linear_schedule_with_warmup, STEPS, num_warmup_steps=WARMUP, num_training_steps=STEPS
    )
    assert ours("linear", min_lr=0.0)[WARMUP:] == pytest.approx(lin[WARMUP:], abs=1e-12)
    assert ours("linear", min_lr=0.0)[:WARMUP] == pytest.approx(lin[1 : WARMUP + 1])


def test_constant_and_inverse_sqrt_equal_transformers():
    const = hf_rates(transformers.get_constant_schedule_with_warmup, STEPS, num_warmup_steps=WARMUP)
    assert ours("constant") == pytest.approx(const[1:] + [LR])
    # inverse sqrt (fairseq's, 1-based update numbers): our step s is transformers' step s + 1 throughout
    inv = hf_rates(transformers.get_inverse_sqrt_schedule, STEPS + 1, num_warmup_steps=WARMUP)
    assert ours("inverse_sqrt", min_lr=0.0) == pytest.approx(inv[1:])
    assert ours("inverse_sqrt", min_lr=0.6)[-1] == 0.6  # floored at min_lr (sqrt(4 / 14) = 0.53)
    # no warmup: transformers' (T5's) timescale of 10,000 steps, not one step (which halved the rate by step 3)
    inv = hf_rates(transformers.get_inverse_sqrt_schedule, STEPS + 1, num_warmup_steps=0)
    assert ours("inverse_sqrt", warmup=0, min_lr=0.0) == pytest.approx(inv[1:])
    assert TrainConfig(schedule="inverse_sqrt", lr=1.0, min_lr=0.0, warmup_steps=0).lr_at(9_999) == pytest.approx(
        math.sqrt(0.5))


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_no_warmup_starts_at_lr_and_equals_transformers(schedule):
    make = {
        "cosine": transformers.get_cosine_schedule_with_warmup,
        "linear": transformers.get_linear_schedule_with_warmup,
    }[schedule]
    ref = hf_rates(make, STEPS, num_warmup_steps=0, num_training_steps=STEPS)
    assert ours(schedule, warmup=0, min_lr=0.0) == pytest.approx(ref, abs=1e-12)
    assert ours(schedule, warmup=0)[0] == LR


def test_a_warmup_longer_than_the_run_only_climbs():
    rates = ours("cosine", warmup=20, steps=10)
    assert rates == pytest.approx([LR * (s + 1) / 20 for s in range(10)])


def test_min_lr_defaults_to_a_tenth_of_lr_at_most_the_old_default():
    """The fixed default min_lr=1e-4 refused any lr below it (`--train.lr 5e-5`: "TrainConfig.min_lr=0.0001: must
    be in [0, lr=5e-05]", a field the user never set) and turned the README's fine-tune, `--train.lr 1e-4`, into a
    constant rate where a cosine decay was asked for. None now means lr / 10 (nanoGPT's rule, which every caller
    here passes) up to 1e-4, so a run at lr >= 1e-3 keeps the schedule it had."""
    fine_tune = TrainConfig(lr=1e-4, max_steps=200, warmup_steps=10)
    assert fine_tune.lr_at(10) == pytest.approx(1e-4) and fine_tune.lr_at(200) == pytest.approx(1e-5)
    assert fine_tune.lr_at(199) < 2e-5
    low = TrainConfig(lr=5e-5, max_steps=100, warmup_steps=0, schedule="linear")
    assert low.final_lr == pytest.approx(5e-6) and low.lr_at(100) == pytest.approx(5e-6)
    assert TrainConfig().lr_at(10_000) == pytest.approx(1e-4)  # the default lr's floor is the old default
    assert TrainConfig(lr=3e-3).final_lr == 1e-4 and TrainConfig(lr=5e-4).final_lr == pytest.approx(5e-5)
    explicit = TrainConfig(lr=1e-4, min_lr=1e-4, max_steps=50, warmup_steps=0)
    assert [explicit.lr_at(s) for s in (0, 25, 49)] == [1e-4] * 3  # an explicit min_lr is kept
    with pytest.raises(ValueError, match=r"TrainConfig.min_lr=0.5: must be in \[0, lr=0.001\], or None"):
        TrainConfig(min_lr=0.5)
    with pytest.raises(ValueError, match="TrainConfig.min_lr=nan"):
        TrainConfig(min_lr=math.nan)


def test_a_default_min_lr_round_trips_through_config_yaml(tmp_path):
    from neurallayers import ModelConfig

    run = RunConfig(model=ModelConfig.from_name("tiny"), train=TrainConfig(lr=3e-5))
    again = RunConfig.from_yaml(run.to_yaml(tmp_path / "config.yaml"))
    assert again.train.min_lr is None and again.train.final_lr == pytest.approx(3e-6)


def test_a_seed_outside_torchs_range_names_the_field():
    """It failed in fit with torch's "Overflow when unpacking long long", naming nothing."""
    with pytest.raises(ValueError, match=r"TrainConfig.seed=18446744073709551616: must be < 2\*\*64"):
        TrainConfig(seed=2**64)
    assert TrainConfig(seed=2**64 - 1).seed == 2**64 - 1
