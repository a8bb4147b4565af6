"""A tiny model and the playground launched once on a free 127.0.0.1 port, shared by the UI tests."""

from __future__ import annotations

import os

import pytest
import torch
from nl_ui_helpers import running_playground

from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.models.decoder import DecoderLM

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
TEXT = "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs!\n"


@pytest.fixture(scope="session")
def tiny():
    """A random char-level GPT (2 layers x 2 heads) and its tokenizer."""
    tok = Tokenizer.train_char([TEXT])
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=2, n_head=2, n_embd=32, init_std=0.3)
    return DecoderLM(cfg).eval(), tok


@pytest.fixture(scope="session")
def playground(tiny):
    """The URL of the running app (closed at the end of the session)."""
    with running_playground(*tiny) as url:
        yield url
