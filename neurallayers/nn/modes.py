"""eval_mode: a model in eval mode for inference, and back in its own mode after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(*models: nn.Module | None) -> Iterator[None]:
    """The models in eval mode (no dropout) inside, each back in its own mode after: sampling from or embedding with
    a model in the middle of training must neither run its dropout nor leave it off. Every submodule's own mode
    comes back, not the top one's for all: a frozen backbone a user keeps in eval came back with its dropout on. A
    module the caller puts in training mode meanwhile stays so."""
    models = [m for m in models if m is not None]
    modes = [(sub, sub.training) for m in models for sub in m.modules()]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for sub, was in modes:
            # Only what eval() turned off: a stream left unread holds this until it is closed, maybe after its caller
            # went back to training, which closing it then undid. train(was) would set the submodules below too.
            if was and not sub.training:
                sub.training = True
