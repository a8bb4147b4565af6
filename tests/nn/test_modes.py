"""eval_mode: eval inside, each submodule's own mode back after, and a mode set meanwhile is not undone."""

from __future__ import annotations

import torch
from torch import nn

from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.generation import stream
from neurallayers.models.decoder import DecoderLM
from neurallayers.nn.modes import eval_mode


def test_eval_inside_and_each_submodules_mode_after() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    model[0].eval()
    with eval_mode(model, None):
        assert not any(m.training for m in model.modules())
    assert model.training and not model[0].training and model[1].training


def test_a_mode_set_while_a_stream_waits_survives_its_close() -> None:
    """A stream the user stopped reading (a `break`) holds eval_mode until it is closed or collected, maybe much
    later: closing it put the model back in eval mode after the user had switched it to training again, so training
    went on without dropout, silently."""
    tok = Tokenizer.train_char(["abc"])
    torch.manual_seed(0)
    model = DecoderLM(
        ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.1)
    ).eval()
    events = stream(model, tok, "ab", max_new_tokens=4, temperature=0, ignore_eos=True)
    next(events)
    model.train()  # back to training while the stream waits
    events.close()
    assert all(m.training for m in model.modules())
    with eval_mode(model):
        model.blocks[0].train()  # the caller's own switch inside the block stays too
    assert model.training and model.blocks[0].training
