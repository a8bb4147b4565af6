"""eval_mode: a model in eval mode for inference, and back in its own mode after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(*models: nn.Module | None) -> Iterator[None]:
    """The models in eval mode (no dropout) inside, each back in its own mode after: sampling from or embedding with
    a model in the middle of training must neither run its dropout nor leave it off."""
    modes = [(m, m.training) for m in models if m is not None]
    for m, _ in modes:
        m.eval()
    try:
        yield
    finally:
        for m, was in modes:
            if m.training != was:
                m.train(was)
