"""generation.fast: a compiled step whose graph froze the weights decodes with the model's current weights after
they change in place (training, load_state_dict), compiling afresh with a warning, instead of the frozen copy."""

from __future__ import annotations

import warnings

import pytest
import torch
from nl_gen_helpers import tiny_lm

from neurallayers.generation import GenerationConfig, generate_ids
from neurallayers.generation.fast import RowLinear, prepare_for_decode

PROMPTS = [[5, 9, 2, 7, 1, 3], [4, 8], [11, 12, 13, 14]]  # a left-padded batch: the batch graph


def _ids(model) -> list[list[int]]:
    cfg = GenerationConfig(max_new_tokens=12, ignore_eos=True, temperature=0.0)
    return [g.token_ids for g in generate_ids(model, PROMPTS, cfg, eos_ids=[])]


@pytest.mark.slow
def test_a_frozen_step_follows_weights_changed_in_place(monkeypatch):
    # batches through inductor's GEMMs (as on a CPU with AVX-512): the batch graph freezes the weights on every host
    monkeypatch.setattr(RowLinear, "batch_dtypes", ())
    plain, fast = tiny_lm(seed=1), prepare_for_decode(tiny_lm(seed=1))
    before = _ids(fast)
    assert before == _ids(plain)
    with torch.no_grad():
        for model in (plain, fast):
            model.blocks[0].mlp.fc.weight.mul_(-1)
    want = _ids(plain)
    assert want != before
    with pytest.warns(UserWarning, match="weights changed since its compiled decode step froze them"):
        assert _ids(fast) == want
    with warnings.catch_warnings():  # unchanged weights: the new graph is kept, no warning, no compile
        warnings.simplefilter("error")
        assert _ids(fast) == want
    # a new state dict loaded in place (as a trainer's checkpoint is) is seen too
    source = tiny_lm(seed=2)
    for model in (plain, fast):
        model.load_state_dict(source.state_dict())
    with pytest.warns(UserWarning, match="weights changed"):
        assert _ids(fast) == _ids(plain) == _ids(source)
    # ordinary weights (made outside inference_mode) count an in-place edit made under torch.inference_mode too: the
    # frozen graph is compiled afresh, as after any other edit (one test: each compile of the step costs seconds)
    with torch.inference_mode():
        for model in (plain, fast):
            model.blocks[0].mlp.fc.weight.mul_(-1)
    with pytest.warns(UserWarning, match="weights changed since its compiled decode step froze them"):
        assert _ids(fast) == _ids(plain)


@pytest.mark.slow
def test_a_batch_step_reads_inference_tensor_weights_as_they_are(monkeypatch):
    """Weights made under torch.inference_mode (a model built, loaded or cast there) have no version counter: an
    in-place edit of them showed nowhere, and the frozen batch graph went on decoding with its stale copy. The step
    now reads such weights live (the unfrozen graph), with a warning once."""
    monkeypatch.setattr(RowLinear, "batch_dtypes", ())
    plain = tiny_lm(seed=1)
    with torch.inference_mode():
        fast = prepare_for_decode(tiny_lm(seed=1))
    assert fast.blocks[0].mlp.fc.weight.is_inference()
    with pytest.warns(UserWarning, match="weights are inference tensors .* cannot be seen"):
        before = _ids(fast)
    assert before == _ids(plain)
    with torch.inference_mode():
        for model in (plain, fast):
            model.blocks[0].mlp.fc.weight.mul_(-1)
    want = _ids(plain)
    assert want != before
    with warnings.catch_warnings():  # warned once; nothing compiles again
        warnings.simplefilter("error")
        assert _ids(fast) == want
