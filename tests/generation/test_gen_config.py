"""GenerationConfig validation as a Python or JSON caller meets it: numpy scalars, ints past float's range,
from_dict with what is not a mapping of names."""

from __future__ import annotations

import numpy as np
import pytest

from neurallayers.generation.config import GenerationConfig


def test_numpy_scalars_are_python_numbers():
    """np.int64 max_new_tokens and seed were refused as "must be an integer"; np.float32 temperature as "must be a
    finite number"; numpy token ids in stop_token_ids and logit_bias as not token ids."""
    cfg = GenerationConfig(
        max_new_tokens=np.int64(8),
        temperature=np.float32(0.5),
        top_k=np.int32(5),
        seed=np.uint64(7),
        stop_token_ids=list(np.array([3, 4])),
        logit_bias={np.int64(2): np.float64(-1.0)},
    )
    assert (cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.seed) == (8, 0.5, 5, 7)
    assert cfg.stop_token_ids == [3, 4] and cfg.logit_bias == {2: -1.0}
    assert all(type(v) is int for v in (cfg.max_new_tokens, cfg.top_k, cfg.seed, *cfg.stop_token_ids, *cfg.logit_bias))
    with pytest.raises(ValueError, match=r"GenerationConfig.top_k=5.0: must be an integer"):
        GenerationConfig(top_k=np.float64(5.0))


@pytest.mark.parametrize("field", ["temperature", "top_p", "repetition_penalty", "length_penalty", "penalty_alpha"])
def test_an_int_past_floats_range_is_named_not_an_overflow_error(field):
    """math.isfinite(10**400) raised OverflowError, naming no field."""
    with pytest.raises(ValueError, match=rf"^GenerationConfig.{field}=1000+: must be a finite number$"):
        GenerationConfig(**{field: 10**400})
    with pytest.raises(ValueError, match=r"GenerationConfig.logit_bias=.*must map token ids .* to finite numbers"):
        GenerationConfig(logit_bias={1: 10**400})


@pytest.mark.parametrize(
    "data, needle",
    [
        (None, "GenerationConfig.from_dict takes a mapping of fields, got NoneType"),
        ([("temperature", 0)], "GenerationConfig.from_dict takes a mapping of fields, got list"),
        ({1: 2}, "GenerationConfig has no field 1"),
        ({"temprature": 0}, r"GenerationConfig has no field 'temprature' \(did you mean 'temperature'\?\)"),
    ],
)
def test_from_dict_takes_a_mapping_of_names(data, needle):
    """None or a key that is no string was a TypeError (from iterating it, or from difflib)."""
    with pytest.raises(ValueError, match=needle):
        GenerationConfig.from_dict(data)


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            dict(min_new_tokens=5, max_new_tokens=3),
            "GenerationConfig.min_new_tokens=5: must be in [0, max_new_tokens=3]",
        ),
        (dict(num_beams=2, num_return_sequences=3), "GenerationConfig.num_return_sequences=3: must be <= num_beams=2"),
    ],
)
def test_a_bound_set_by_another_field_gives_its_value(fields, message):
    """ "must be <= num_beams" left the reader to find what num_beams was (it may be a default)."""
    with pytest.raises(ValueError) as e:
        GenerationConfig(**fields)
    assert str(e.value) == message


def test_min_p_of_one_keeps_the_most_likely_tokens_only():
    """min_p=1 is a valid setting (transformers' and vLLM's min-p take it: only tokens as likely as the best one
    survive); the config refused it, so a generation_config.json holding it was dropped with a warning."""
    import torch

    from neurallayers.generation.processors import MinPWarper

    assert GenerationConfig(temperature=1.0, min_p=1.0).min_p == 1.0
    scores = torch.tensor([[2.0, 2.0, 1.0, -3.0]])
    kept = MinPWarper(GenerationConfig(min_p=1.0).min_p)(None, scores).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    with pytest.raises(ValueError, match=r"min_p=1.5: must be in \[0, 1\]"):
        GenerationConfig(min_p=1.5)
