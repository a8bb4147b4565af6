"""Small helpers shared by the UI tests (imported by the modules beside it)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_playground(model, tokenizer) -> Iterator[str]:
    """The playground over `model` on a free 127.0.0.1 port: its URL, until the block ends (then closed)."""
    pytest.importorskip("gradio", reason="the web playground needs the ui extra (gradio)")
    from neurallayers.ui import build_app, launch

    app = build_app(model, tokenizer, name="tiny")
    try:
        yield launch(app, port=free_port(), block=False, quiet=True)
    finally:
        app.close()


def failing_copy(model, *, fail_at: int):
    """A copy of the DecoderLM `model` whose forward fails from its `fail_at`-th call on, as a GPU out of memory
    mid-generation does."""
    from neurallayers.models.decoder import DecoderLM

    class FailingLM(DecoderLM):
        calls = 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            if self.calls >= fail_at:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (*not* markdown)")
            return super().forward(*args, **kwargs)

    broken = FailingLM(model.config).eval()
    broken.load_state_dict(model.state_dict())
    return broken
