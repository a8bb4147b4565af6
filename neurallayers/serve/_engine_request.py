"""The two halves of one engine request: `Request`, the handle a caller iterates (from any thread, or from asyncio),
and `_Sequence`, the decoding state the engine thread keeps for it (processors, sampler, text assembly)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from neurallayers.checks import check_bool
from neurallayers.data.tokenizers import StreamDecoder
from neurallayers.generation.config import GenerationConfig, StreamEvent, TokenLogprob
from neurallayers.generation.generate import _choose, _row_seed
from neurallayers.generation.processors import apply_processors, build_processors, check_some_token_left
from neurallayers.generation.search import stop_ids
from neurallayers.generation.stop_strings import _RowText, stop_search_after
from neurallayers.generation.stream_events import _HeldEvents

_ids = itertools.count(1)


@dataclass(frozen=True)
class TextOptions:
    """How a request's text is written, as vLLM's sampling parameters of these names say.

    Attributes:
        skip_special_tokens: drop special tokens from the text (false: they are written, as vLLM writes them).
        include_stop_str_in_output: a stop string that ends the text is written too (the text after it is not).
        reported_stops: the stop strings `stop_reason` names and include_stop_str_in_output writes (the client's);
            None: all of config.stop. Another (the chat template's own end of a reply) ends the text as eos does.
    """

    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    reported_stops: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("skip_special_tokens", "include_stop_str_in_output"):
            check_bool(getattr(self, name), f"TextOptions.{name}")
        stops = self.reported_stops
        # a string would name every substring of itself (`in` a str), silently
        if stops is not None and (not isinstance(stops, tuple | list) or not all(isinstance(s, str) for s in stops)):
            raise ValueError(f"TextOptions.reported_stops={stops!r}: must be None or a tuple of stop strings")
        if stops is not None:
            object.__setattr__(self, "reported_stops", tuple(stops))


class Request:
    """A submitted generation: iterate it for its StreamEvents (the last one carries finish_reason).

    Events are consumed as they are read, so iterate a request once (with `for` or `async for ... in aiter()`).
    Leaving the iteration early (break, an exception, a cancelled asyncio task) cancels the request, since nobody
    else will read its events. How a request can end:
        finish_reason "stop" / "length": as in `neurallayers.generation.stream`;
        finish_reason "cancelled": `cancel()` was called (the final event has no text);
        the iterator raises EngineClosed: the engine shut down without draining it;
        the iterator raises RuntimeError: the model failed while computing it, or its own choice did (a token without
            text; bans that leave no token, which stream() raises as ValueError); the cause is chained.

    Attributes:
        id: a process-unique integer.
        prompt_tokens: the prompt's length in tokens.
        completion_tokens: tokens the model has chosen so far, as OpenAI and vLLM count them: a final stop token
            (eos) and the tokens of a stop string count, though their text is not returned
            (Generation.completion_tokens).
        token_ids: those tokens (vLLM's return_token_ids): the engine thread appends to it, so read it whole only
            once the request has ended; a token event's token_id comes in this order, and the tokens that send no
            event of their own (a stop token, a stop string's) are the last ones.
        stop_logprob: with config.logprobs, the log-probabilities of the stop token (eos) that ended the request,
            which sends no event of its own (as in stream()); OpenAI's completions list it last.
        finish_reason: None until the request has ended.
        stop_reason: vLLM's: the stop string (of text.reported_stops) or the stop_token_ids id that ended the
            request; None when it ended on eos, on its length, or has not ended. Set before the final event.
    """

    def __init__(self, prompt_ids: list[int], config: GenerationConfig, *, on_cancel: Callable[[], None],
                 text: TextOptions | None = None) -> None:
        self.id = next(_ids)
        self.prompt_ids = prompt_ids
        self.config = config
        self.text = text or TextOptions()
        self.stop_reason: str | int | None = None
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.token_ids: list[int] = []
        self.stop_logprob: TokenLogprob | None = None
        self.finish_reason: str | None = None
        self.cancel_requested = False
        self._on_cancel = on_cancel
        self._cond = threading.Condition()
        self._events: deque[StreamEvent] = deque()
        self._closed = False  # the last event (or the error) has been pushed
        self._error: BaseException | None = None
        self._wakers: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return (f"Request(id={self.id}, prompt_tokens={self.prompt_tokens}, completion_tokens={self.completion_tokens}"
                f", finish_reason={self.finish_reason!r})")

    @property
    def done(self) -> bool:
        """True once the request has ended (its final event or error is queued)."""
        return self._closed

    def cancel(self) -> None:
        """Stop generating (the client is gone): a queued request leaves the queue at once, a running one frees its
        slot before the engine's next step."""
        if not self._closed and not self.cancel_requested:
            self.cancel_requested = True
            self._on_cancel()

    # ----- reading (any thread) -----
    def __iter__(self) -> Iterator[StreamEvent]:
        finished = False
        try:
            while True:
                with self._cond:
                    while not self._events and not self._closed:
                        self._cond.wait()
                    events, closed = self._take()
                yield from events
                if closed:
                    finished = True
                    self._raise_error()
                    return
        finally:
            if not finished:
                self.cancel()

    async def aiter(self) -> AsyncIterator[StreamEvent]:
        """The events for asyncio: waits without blocking the event loop (the engine thread wakes it)."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def waker() -> None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass

        with self._cond:
            self._wakers.append(waker)
        finished = False
        try:
            while True:
                wake.clear()  # before taking, so an event pushed after the take still wakes us
                with self._cond:
                    events, closed = self._take()
                for event in events:
                    yield event
                if closed:
                    finished = True
                    self._raise_error()
                    return
                if not events:
                    await wake.wait()
        finally:
            with self._cond:
                self._wakers.remove(waker)
            if not finished:
                self.cancel()

    def _take(self) -> tuple[list[StreamEvent], bool]:
        events = list(self._events)
        self._events.clear()
        return events, self._closed

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # ----- writing (the engine thread) -----
    def _push(self, event: StreamEvent) -> None:
        with self._cond:
            if self._closed:
                return
            self._events.append(event)
            if event.finish_reason is not None:
                self.finish_reason = event.finish_reason
                self._closed = True
            self._notify()

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            if self._closed:
                return
            self._error, self._closed = error, True
            self._notify()

    def _notify(self) -> None:
        self._cond.notify_all()
        for waker in self._wakers:
            waker()


class _Sequence:
    """The engine thread's decoding state for one request: the same processors, sampler (a generator seeded with
    _row_seed(seed, 0)), log-probabilities, stop tokens and text assembly as stream() applies to a prompt alone.

    pos is the cache column where the next fed token goes: the prompt fills 0..P-1, generated token i is fed at P+i.
    """

    def __init__(self, req: Request, *, eos_ids: list[int], tokenizer, device: torch.device) -> None:
        cfg = req.config
        self.req = req
        self.procs = build_processors(cfg, eos_ids=eos_ids, prompt_lens=req.prompt_tokens)
        self.stops = set(stop_ids(cfg, eos_ids))
        self.eos_ids = set(eos_ids)
        self.budget = cfg.max_new_tokens  # submit() checked that prompt + max_new_tokens fits the context
        self.gens = None
        if not cfg.greedy:
            seed = cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**62, ()))
            self.gens = [torch.Generator(device=device).manual_seed(_row_seed(seed, 0))]
        self.tokens = None  # (1, P + budget) prompt then generated tokens, for the processors that read them
        if self.procs:
            self.tokens = torch.zeros(1, req.prompt_tokens + self.budget, dtype=torch.long, device=device)
            self.tokens[0, :req.prompt_tokens] = torch.tensor(req.prompt_ids, dtype=torch.long, device=device)
        self.text = _RowText(tokenizer, cfg.stop, req.prompt_ids, search_after=stop_search_after(cfg))
        self.text.decoder = StreamDecoder(tokenizer, skip_special_tokens=req.text.skip_special_tokens,
                                          context=req.prompt_ids, skip_padded_ids=True)
        self.held = _HeldEvents(self.text)  # token events wait while their text could be a stop string's
        self.n = 0  # tokens chosen so far
        self.counted = 0  # of them, those the engine's tokens_generated counts
        self.last = -1  # the last chosen token: the input of the next decode step
        self.pos = req.prompt_tokens

    @property
    def plain_greedy(self) -> bool:
        """Greedy without processors or logprobs: the batch argmax is this row's choice."""
        return self.gens is None and not self.procs and self.req.config.logprobs is None

    def step(self, logits: torch.Tensor, argmax: int | None = None) -> bool:
        """Choose the next token from this row's logits (1, V) float32, emit its event; True when finished.

        argmax: the row's argmax when the caller computed it for the whole batch (plain greedy rows only).
        """
        cfg = self.req.config
        if argmax is not None:
            tok = argmax
        else:
            scores = logits if not self.procs else apply_processors(
                self.procs, self.tokens[:, :self.req.prompt_tokens + self.n], logits)
            # bans that leave no token fail the request, as stream() raises (the choice was a banned token, id 0)
            check_some_token_left(cfg, scores, self.n)
            tok = int(_choose(scores, self.gens)[0])
        logprob = None
        if cfg.logprobs is not None:
            logp = F.log_softmax(logits, dim=-1)  # the model's own distribution, before the processors (as stream)
            top = []
            if cfg.logprobs:
                values, ids = torch.topk(logp, cfg.logprobs, dim=-1)
                top = list(zip(ids[0].tolist(), values[0].tolist(), strict=True))
            logprob = TokenLogprob(token_id=tok, logprob=float(logp[0, tok]), top=top)
        if self.tokens is not None:
            self.tokens[0, self.req.prompt_tokens + self.n] = tok
        self.n += 1
        self.req.token_ids.append(tok)
        self.req.completion_tokens = self.n
        self.last = tok
        if tok in self.stops:
            self.req.stop_logprob = logprob  # before the final event, which readers take as the end
            # vLLM's check_stop: eos first (unless ignore_eos), then stop_token_ids, which stop_reason names
            if tok in cfg.stop_token_ids and (cfg.ignore_eos or tok not in self.eos_ids):
                self.req.stop_reason = tok
            # vLLM writes the stop token's text only with include_stop_str_in_output (eos, a special token, is "")
            pending = self.text.push(tok) if self.req.text.include_stop_str_in_output else ""
            return self.finish("stop", pending=pending, stopped_by=tok)
        text = self.text.push(tok)
        if self.text.stopped:  # a stop string's tokens are not output; the text before it is
            stop = self._stop_string()
            if stop is not None and self.req.text.include_stop_str_in_output:
                return self._finish_with_stop_string(text, stop, StreamEvent(text="", token_id=tok, logprob=logprob))
            events, pending = self.held.stopped(text)
            for event in events:
                self.req._push(event)
            return self.finish("stop", pending=pending)
        for event in self.held.push(StreamEvent(text=text, token_id=tok, logprob=logprob)):
            self.req._push(event)
        if self.n == self.budget:
            return self.finish("length")
        return False

    def finish(self, reason: str, *, pending: str = "", stopped_by: int | None = None) -> bool:
        """Push the held events and the final one; stopped_by: the stop token that ended it (a stop string found in
        the text, however late, names itself instead, as in stream())."""
        was_stopped, held = self.text.stopped, list(self.held.held)
        events, text, reason = self.held.finish(reason, pending)
        # a stop string in the text the decoder held to the end (a last word waiting for its spaces)
        if self.text.stopped and not was_stopped and (stop := self._stop_string()) is not None \
                and self.req.text.include_stop_str_in_output:
            events, text = [StreamEvent(text="", token_id=e.token_id, logprob=e.logprob) for e in held], text + stop
        for event in events:
            self.req._push(event)
        if self.text.stopped:
            stopped_by = self.text.stops_at_cut[0]
        self.req._push(StreamEvent(text=text, finish_reason=reason, stopped_by=stopped_by))
        return True

    def _stop_string(self) -> str | None:
        """The client's stop string that the text just met (req.stop_reason is set to it); None for another (the chat
        template's own).

        The text is cut where the earliest stop string starts (several may end in one token's text); of those that
        start there, the first listed is named, as vLLM's stop checker names the first listed that it finds."""
        reported = self.req.text.reported_stops
        stop = next((s for s in self.text.stops_at_cut if reported is None or s in reported), None)
        if stop is not None:
            self.req.stop_reason = stop
        return stop

    def _finish_with_stop_string(self, text: str, stop: str, last: StreamEvent) -> bool:
        """include_stop_str_in_output: the text up to the stop string's end, and every token event (the stop
        string's tokens' log-probabilities too), as vLLM returns them."""
        held, self.held.held = self.held.held, []
        for event in [*held, last]:
            self.req._push(StreamEvent(text="", token_id=event.token_id, logprob=event.logprob))
        self.req._push(StreamEvent(text="".join(e.text for e in held) + text + stop, finish_reason="stop",
                                   stopped_by=self.text.stops_at_cut[0]))
        return True
