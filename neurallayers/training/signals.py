"""Stop training cleanly on Ctrl-C or SIGTERM: finish the step in flight, save a checkpoint, return.

SIGTERM is how runs are stopped by `docker stop`, Kubernetes, Slurm (preemption, time limits) and torchrun
(which passes it to every worker when it is itself stopped or one worker fails): without a handler the process
dies at once and everything since the last periodic checkpoint is lost. Stopping at a step boundary, not wherever
the signal lands, keeps the saved state exact, so a resume continues loss for loss.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("neurallayers.training")

EXIT_CODES = {"interrupted": 128 + signal.SIGINT, "terminated": 128 + signal.SIGTERM}  # the shells' convention


class StopRequest:
    """While entered, the first SIGINT or SIGTERM only sets `reason` ("interrupted" / "terminated"); the training
    loop checks it after each step. A second SIGINT raises KeyboardInterrupt at once (a step can be long: the
    first one compiles). Handlers are installed in the main thread only, and only over Python's defaults: an
    ignored SIGINT (a background job of a non-interactive shell) stays ignored, a caller's own handler stays in
    place. The previous handlers come back on exit."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
                if signal.getsignal(sig) is default:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.reason is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return  # a repeated SIGTERM: the checkpoint is on its way
        self.reason = "interrupted" if signum == signal.SIGINT else "terminated"
        again = " (Ctrl-C again to stop at once, without saving)" if signum == signal.SIGINT else ""
        log.warning("%s: stopping after the step in flight and saving a checkpoint%s",
                    "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name, again)
