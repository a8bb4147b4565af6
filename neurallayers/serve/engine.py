"""A continuous-batching inference engine: one background thread owns the model and steps every running request
together, one token per step, while requests join and leave between steps.

Design:
- One static KV cache of `max_batch` rows. The running requests occupy rows 0..n-1 (compacted): a request that
  ends leaves at once and the last row moves into its place (a copy of that row's filled cache columns), so a
  decode step computes exactly the running rows and idle slots cost nothing.
- Newcomers are prefilled into the next free rows (`cache.rows(i, i + k)`) between two decode steps, all in one
  forward (right-padded; see _prefill), which also gives their first tokens; then they join the batched one-token
  decode step. A lone newcomer gets the very computation stream() does for a prompt alone.
- The decode step feeds each row its last token at the row's own cache column (a (B,) `input_pos` tensor); the
  model then uses per-row position ids and a per-row causal mask (key column <= the row's position), so entries
  of a previous occupant of the row, at columns past the current one, are never attended; they are zeroed when
  the row changes hands all the same (see _clear), since a masked NaN still poisons the attention's sum.
- Each request keeps its own processors, seeded generator (`_row_seed(seed, 0)`, as generate() and stream() use
  for a prompt alone), log-probabilities, stop tokens and text assembly (`_RowText`): a request's events equal
  `stream(model, tokenizer, prompt_ids, config)`'s.

Exactness: a lone newcomer's prefill and a decode step with one running row are the same kernels on the same shapes
as stream(), so they agree to the bit. Rows computed together (B > 1) go through matrix products with more rows, whose
CPU kernels block (and so round) differently, and through a masked attention over the longest row: their fp32 logits
differ from stream()'s in the last bits (we measured <= 5e-7 absolute on tiny GPT-2 and Llama models). Token ids are
therefore the same except where two candidates are within that distance (a near-tie of the argmax, or of the
sampling race argmax(p / q)), and log-probabilities agree to ~1e-6. Making them bitwise equal would need batch-
invariant kernels; one row at a time (max_batch=1) is bitwise equal, at one-row speed.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque

import torch
from torch import nn

from neurallayers.checks import is_int
from neurallayers.generation.config import GenerationConfig, StreamEvent
from neurallayers.generation.fast import decode_step_for
from neurallayers.generation.generate import forward_step
from neurallayers.generation.inputs import _check_decoder, _check_ids
from neurallayers.serve._engine_request import Request, TextOptions, _Sequence

log = logging.getLogger("neurallayers.serve")

PREFILL_TOKENS = 512  # padded prompt tokens prefilled between two decode steps (at least one request): bounds the stall
MAX_RETRY_AFTER = 60.0
# seconds shutdown waits for the step in progress once it has ended the requests: a step takes milliseconds to a
# second here; one that never returns (a hung device) cannot be interrupted, and its daemon thread is left behind
STOP_GRACE_S = 2.0


class EngineFull(Exception):
    """The engine holds max_batch running and max_queue waiting requests; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineClosed(Exception):
    """The engine is shutting down (or has stopped) and takes no new requests."""


class Engine:
    """Continuous batching over one model: `submit` requests from any thread, iterate their events.

    Args:
        model: a DecoderLM (put in eval mode; the engine thread owns it once started).
        tokenizer: the model's Tokenizer (turns tokens into event text; its eos_id ends sequences).
        max_batch: requests decoded together (KV cache rows).
        max_queue: requests that may wait for a row; beyond max_batch + max_queue, submit raises EngineFull.
        max_len: context length per request, prompt plus new tokens (default and maximum: model.config.block_size);
            it sets the KV cache size: max_batch * max_len positions.
    """

    def __init__(self, model: nn.Module, tokenizer, *, max_batch: int = 8, max_queue: int = 32,
                 max_len: int | None = None) -> None:
        _check_decoder(model)  # stream()'s check: an encoder or a path failed with an AttributeError
        block = model.config.block_size
        for name, value, low in (("max_batch", max_batch, 1), ("max_queue", max_queue, 0)):
            if not is_int(value) or value < low:
                raise ValueError(f"{name}={value!r}: must be an integer >= {low}")
        max_len = block if max_len is None else max_len
        if not is_int(max_len) or not 2 <= max_len <= block:
            raise ValueError(f"max_len={max_len!r}: must be an integer in [2, {block}] (the model's block_size)")
        if tokenizer is None:
            raise ValueError("the engine needs a tokenizer to turn tokens into text")
        outside = [t for t in tokenizer.eos_ids if not 0 <= t < model.config.vocab_size]
        if outside:
            raise ValueError(f"the tokenizer's eos id {outside[0]} lies outside the model's vocabulary "
                             f"[0, {model.config.vocab_size}): the tokenizer does not belong to this model")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_queue, self.max_len = max_batch, max_queue, max_len
        self._eos_ids = list(tokenizer.eos_ids)
        self._device = next(model.parameters()).device
        self._fast = decode_step_for(model)  # a compiled one-token step, if prepare_for_decode registered one
        self._step = self._fast or functools.partial(forward_step, model)  # as generate() picks its step
        # Inference tensors, as the engine thread makes; and with the fast step one spare row, so that the rows of
        # every batch are a strided view alike (the full, contiguous cache would be another graph).
        with torch.inference_mode():
            self._cache = (self._fast or model).new_cache(max_batch + (self._fast is not None), max_len)
        self._cond = threading.Condition()  # guards everything below and wakes the engine thread
        self._waiting: deque[Request] = deque()
        self._running: list[_Sequence] = []  # row i of the cache belongs to _running[i]
        self._admitting: list[Request] = []  # popped from _waiting, being prefilled: still counts toward capacity
        self._thread: threading.Thread | None = None
        self._closing = False  # no new requests
        self._abort: BaseException | None = None  # end every request with this error and stop
        self._failure: RuntimeError | None = None  # why the engine thread died (a bug in its loop), if it did
        self._left_behind = False  # shutdown gave up waiting for a model step that did not return
        self._step_time = 0.0  # moving average of a decode step, seconds
        self._stats = dict(steps=0, last_batch_size=0, prefills=0, prompt_tokens=0, tokens_generated=0,
                           requests_finished=0, requests_cancelled=0, requests_failed=0)

    # ----- public API -----
    def start(self) -> None:
        """Start the engine thread (once)."""
        with self._cond:
            if self._closing:
                raise EngineClosed("the engine has been shut down")
            if self._thread is not None:
                raise RuntimeError("the engine has already been started")
            self._thread = threading.Thread(target=self._loop, name="neurallayers-engine", daemon=True)
            self._thread.start()

    def warm_up(self) -> None:
        """Compile the fast step (when prepare_for_decode registered one) for this engine's cache before serving, so
        that no request waits for it: one graph for one row, one for every larger batch. The batch graph is traced at
        two rows, a view of the cache with the strides every batch's view shares."""
        if self._fast is None:
            return
        if self._thread is not None:
            raise RuntimeError("warm_up() before start(): the engine thread owns the model once started")
        with torch.inference_mode():
            for rows in (1, 2) if self.max_batch > 1 else (1,):
                tok = torch.zeros(rows, 1, dtype=torch.long, device=self._device)
                pos = 0 if rows == 1 else torch.zeros(rows, dtype=torch.long, device=self._device)
                # the rows' prefill overwrites what this writes; attend=1: a window, as every decode step reads
                self._fast(tok, cache=self._cache.rows(0, rows), input_pos=pos, attend=1)

    def submit(self, prompt_ids: list[int], config: GenerationConfig, *, text: TextOptions | None = None) -> Request:
        """Queue a request; its events stream as soon as it is prefilled. `text`: how its text is written (special
        tokens, stop strings), vLLM's options; default as stream() writes it.

        Raises:
            ValueError: bad prompt or config (empty prompt, ids outside the vocabulary in it or in stop_token_ids /
                logit_bias, more top logprobs than the vocabulary has, prompt + max_new_tokens over the context
                length, beam search / contrastive search / several return sequences).
            EngineFull: max_batch requests run and max_queue wait (see .retry_after).
            EngineClosed: shutdown has started, or the engine thread failed (`failure` says why).
        """
        prompt_ids = self._check(prompt_ids, config)
        if text is not None and not isinstance(text, TextOptions):  # else it failed in the engine thread
            raise ValueError(f"text must be a TextOptions or None, got {type(text).__name__}")
        req = Request(prompt_ids, config, on_cancel=lambda: self._cancelled(req), text=text)
        with self._cond:
            if self._failure is not None:
                raise EngineClosed(f"{self._failure}; it takes no requests until the server restarts or reloads")
            if self._closing:
                raise EngineClosed("the engine is shutting down and takes no new requests")
            if len(self._running) + len(self._admitting) + len(self._waiting) >= self.max_batch + self.max_queue:
                retry = self._retry_after()
                raise EngineFull(f"the engine is at capacity ({len(self._running)} running, {len(self._waiting)} "
                                 f"waiting); retry in {retry:.1f} s", retry)
            self._waiting.append(req)
            self._cond.notify_all()
        return req

    def shutdown(self, *, drain: bool = True, timeout: float | None = None) -> bool:
        """Refuse new requests; with drain, finish the running and waiting ones first (up to `timeout` seconds),
        then end whatever is left: its iterators raise EngineClosed. Returns once the engine thread has stopped, or
        STOP_GRACE_S after ending the requests when it has not (a model step that never returns: it cannot be
        interrupted, so it is left behind, with a warning in the log, rather than hold the server's exit forever);
        True when it stopped. With drain and timeout None it waits for the requests as long as they take."""
        with self._cond:
            self._closing = True
            thread = self._thread
            if not drain or thread is None:
                self._abort = self._abort or EngineClosed("the engine shut down before the request finished")
            self._cond.notify_all()
        if thread is None:
            self._end_all()
            return True
        if drain:
            thread.join(timeout)
        if thread.is_alive():
            with self._cond:
                self._abort = self._abort or EngineClosed("the engine shut down before the request finished "
                                                          f"(drain timeout of {timeout} s)")
                left = [s.req for s in self._running] + self._admitting + list(self._waiting)
                self._cond.notify_all()
            # end them now, not after the step in progress: the server answers them before its own deadline
            for req in left:
                req._fail(self._abort)
            thread.join(STOP_GRACE_S)
            if thread.is_alive():
                with self._cond:  # the SIGTERM timer and the server's exit both get here: say it once
                    first, self._left_behind = not self._left_behind, True
                if first:
                    log.warning("the engine's model step has not returned %.1f s after shutdown ended its requests; "
                                "leaving it behind", STOP_GRACE_S)
                return False
        return True

    @property
    def failure(self) -> RuntimeError | None:
        """The error that stopped the engine thread (a bug in its loop, not a request's), or None: it runs, or it
        was shut down. A failed engine takes no requests (submit raises EngineClosed naming it)."""
        return self._failure

    def stats(self) -> dict:
        """Counters: running, waiting, steps (decode steps), last_batch_size, prefills, prompt_tokens,
        tokens_generated, requests_finished / _cancelled / _failed, step_time_s (moving average), max_batch,
        max_queue, max_len, closed."""
        with self._cond:
            return dict(self._stats, running=len(self._running) + len(self._admitting), waiting=len(self._waiting),
                        step_time_s=self._step_time, max_batch=self.max_batch, max_queue=self.max_queue,
                        max_len=self.max_len, closed=self._closing)

    # ----- checks -----
    def _check(self, prompt_ids: list[int], config: GenerationConfig) -> list[int]:
        if not isinstance(config, GenerationConfig):
            raise ValueError(f"config must be a GenerationConfig, got {type(config).__name__}")
        if config.num_beams > 1 or config.penalty_alpha > 0 or config.num_return_sequences > 1:
            raise ValueError("the engine decodes one sequence per request, greedily or by sampling: num_beams, "
                             "penalty_alpha and num_return_sequences must be left at their defaults (submit n "
                             "requests for n choices)")
        if config.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        prompt_ids = list(prompt_ids) if isinstance(prompt_ids, tuple) else prompt_ids
        _check_ids(self.model, [prompt_ids], [], name="prompt_ids", each_fits=False)  # generate()'s own check
        # stream()'s own check: stop_token_ids and logit_bias ids in the vocabulary, top logprobs at most its size
        config.check_vocab(self.model.config.vocab_size)
        n, new = len(prompt_ids), config.max_new_tokens
        if n >= self.max_len:
            raise ValueError(f"the prompt has {n} tokens but the context length is {self.max_len}: leave room for "
                             "at least one new token")
        if n + new > self.max_len:
            raise ValueError(f"the prompt ({n} tokens) plus max_new_tokens ({new}) is {n + new} tokens, over the "
                             f"context length {self.max_len}: shorten the prompt or ask for at most "
                             f"{self.max_len - n} new tokens")
        return list(prompt_ids)

    def _retry_after(self) -> float:
        """Seconds until a queued request would likely get a row: the (len(waiting) + 1)-th shortest remaining
        budget among the running requests, at the recent step time (stop tokens may free rows sooner)."""
        left = sorted(s.budget - s.n for s in self._running)
        if not left or self._step_time == 0:
            return 1.0
        rounds, k = divmod(len(self._waiting), len(left))
        tokens = left[k] + rounds * max(left)
        return float(min(MAX_RETRY_AFTER, max(0.05, tokens * self._step_time)))

    def _cancelled(self, req: Request) -> None:
        """`req` was cancelled (any thread): still queued, it leaves the queue now, so its place is free for the next
        submit, not only after the step in progress; running, it leaves its row before the next step."""
        with self._cond:
            queued = req in self._waiting
            if queued:
                self._waiting.remove(req)
            self._cond.notify_all()
        if queued:
            self._end(req, "cancelled")

    # ----- the engine thread -----

    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while self._iteration():
                    pass
        except BaseException as e:  # a bug in the loop itself: end every request rather than leave it hanging
            with self._cond:
                self._closing = True
                self._abort = self._failure = RuntimeError(f"the engine stopped: {type(e).__name__}: {e}")
                self._abort.__cause__ = e
            self._end_all()
            raise

    def _iteration(self) -> bool:
        """Admit and prefill newcomers, then one decode step of every running row. False when the engine stops."""
        with self._cond:
            while not (self._waiting or self._running or self._closing or self._abort):
                self._cond.wait()
            stop = self._abort is not None or (self._closing and not self._waiting and not self._running)
            newcomers = [] if stop else self._admit()
            self._admitting = newcomers
        if stop:
            self._end_all()
            return False
        self._drop_cancelled()
        if newcomers:
            self._prefill(newcomers)
        if self._running:
            self._decode()
        return True

    def _admit(self) -> list[Request]:
        """Pop waiting requests into free rows (under the lock), within the prefill token budget (padded)."""
        newcomers, width = [], 0
        while self._waiting and len(self._running) + len(newcomers) < self.max_batch:
            req = self._waiting[0]
            if req.cancel_requested:
                self._waiting.popleft()
                self._end(req, "cancelled")
                continue
            if newcomers and (len(newcomers) + 1) * max(width, req.prompt_tokens) > PREFILL_TOKENS:
                break
            newcomers.append(self._waiting.popleft())
            width = max(width, req.prompt_tokens)
        # Queued requests that were cancelled free their place in the queue now, not when they reach its head.
        for req in [r for r in self._waiting if r.cancel_requested]:
            self._waiting.remove(req)
            self._end(req, "cancelled")
        return newcomers

    def _prefill(self, reqs: list[Request]) -> None:
        """Prefill newcomers into the next free rows, in one forward; their first tokens come from its logits.

        One newcomer takes stream()'s exact prefill. Several are right-padded to one width W: causal attention keeps
        each prompt token from seeing the padding after it, and the padding's cache columns (P..W-1) lie past the
        row's position, where the per-row decode mask never looks until the row's own tokens overwrite them. Each
        row's logits come from the hidden state at its last prompt token.
        """
        seqs = []
        for r in reqs:
            try:
                seqs.append(_Sequence(r, eos_ids=self._eos_ids, tokenizer=self.tokenizer, device=self._device))
            except Exception as e:  # this request fails alone (one admitted with it failed them all)
                self._fail([r], e)
        reqs = [seq.req for seq in seqs]
        row0, k = len(self._running), len(reqs)
        if not reqs:
            with self._cond:
                self._admitting = []
            return
        try:
            self._clear(row0, row0 + k, max(r.prompt_tokens for r in reqs))  # the prefill writes the columns before
            cache = self._cache.rows(row0, row0 + k)
            if k == 1:
                ids = torch.tensor([reqs[0].prompt_ids], dtype=torch.long, device=self._device)
                logits = self.model(ids, cache=cache, logits_to_keep=1).logits[:, -1].float()  # (1, V)
            else:
                width = max(r.prompt_tokens for r in reqs)
                ids = torch.zeros(k, width, dtype=torch.long, device=self._device)  # (k, W) right-padded
                for i, r in enumerate(reqs):
                    ids[i, :r.prompt_tokens] = torch.tensor(r.prompt_ids, dtype=torch.long, device=self._device)
                last = torch.tensor([r.prompt_tokens - 1 for r in reqs], device=self._device)
                # A row's padding repeats its last position: no row's positions run past its own prompt, which
                # dynamic-NTK RoPE would read as a longer sequence (it scales each row by its largest position).
                positions = torch.minimum(torch.arange(width, device=self._device)[None, :], last[:, None])
                hidden = self.model(ids, cache=cache, position_ids=positions, logits_to_keep=1,
                                    output_hidden=True).hidden  # (k, W, C)
                logits = self.model.lm_head(hidden[torch.arange(k, device=self._device), last]).float()  # (k, V)
            with self._cond:
                self._stats["prefills"] += k
                self._stats["prompt_tokens"] += sum(r.prompt_tokens for r in reqs)
                self._running.extend(seqs)
                self._admitting = []
        except Exception as e:  # these requests fail; their rows stay free
            with self._cond:
                self._admitting = []
            self._fail(reqs, e)
            return
        done, failed = [], 0
        for i, seq in enumerate(seqs):
            try:
                if seq.step(logits[i:i + 1]):
                    done.append(row0 + i)
            except Exception as e:  # this request fails alone
                self._fail([seq.req], e)
                done.append(row0 + i)
                failed += 1
        self._count_tokens(seqs)
        self._finished(done, failed=failed)

    def _decode(self) -> None:
        """One token for every running row."""
        seqs = list(self._running)
        b = len(seqs)
        tok = torch.tensor([[s.last] for s in seqs], dtype=torch.long, device=self._device)  # (B, 1)
        # One row: the int position, i.e. the unmasked path stream() takes, to the bit.
        pos = seqs[0].pos if b == 1 else torch.tensor([s.pos for s in seqs], dtype=torch.long, device=self._device)
        t0 = time.perf_counter()
        try:
            # The fast step reads only the cache columns in use (a window up to the longest row), not all max_len.
            window = {} if self._fast is None else {"attend": max(s.pos for s in seqs) + 1}
            logits = self._step(tok, cache=self._cache.rows(0, b), input_pos=pos, position_ids=None,
                                attention_mask=None, **window)  # (B, V) float32
            plain = [s.plain_greedy for s in seqs]
            argmax = logits.max(dim=-1).indices.tolist() if any(plain) else None  # argmax's ids, faster
        except Exception as e:  # the batch is lost: fail its requests, keep serving new ones
            self._fail([s.req for s in seqs], e)
            self._remove(list(range(b)))
            return
        done, failed = [], 0
        for r, s in enumerate(seqs):
            s.pos += 1
            try:
                if s.step(logits[r:r + 1], argmax[r] if plain[r] else None):
                    done.append(r)
            except Exception as e:  # one row's choice (its text, its processors) fails that request alone, as in
                self._fail([s.req], e)  # _prefill; it failed every request of the batch
                done.append(r)
                failed += 1
        dt = time.perf_counter() - t0
        with self._cond:
            self._step_time = dt if self._stats["steps"] == 0 else 0.9 * self._step_time + 0.1 * dt
            self._stats["steps"] += 1
            self._stats["last_batch_size"] = b
        self._count_tokens(seqs)
        self._finished(done, failed=failed)

    def _count_tokens(self, seqs: list[_Sequence]) -> None:
        """Count the tokens these rows chose in this step: not a row whose step failed before choosing one."""
        with self._cond:
            self._stats["tokens_generated"] += sum(s.n > s.counted for s in seqs)
        for s in seqs:
            s.counted = s.n

    def _drop_cancelled(self) -> None:
        rows = [r for r, s in enumerate(self._running) if s.req.cancel_requested]
        for r in rows:
            self._end(self._running[r].req, "cancelled")
        self._remove(rows)

    def _finished(self, rows: list[int], *, failed: int = 0) -> None:
        """Free the rows of ended requests; `failed` of them failed (requests_failed counts those)."""
        with self._cond:
            self._stats["requests_finished"] += len(rows) - failed
        self._remove(rows)

    def _remove(self, rows: list[int]) -> None:
        """Free rows: the last running row moves into each hole (its filled cache columns are copied)."""
        with self._cond:
            for r in sorted(rows, reverse=True):
                last = len(self._running) - 1
                if r != last:
                    moved = self._running[last]
                    n = moved.pos  # columns 0..pos-1 hold its keys and values
                    self._cache.k[:, r, :, :n] = self._cache.k[:, last, :, :n]
                    self._cache.v[:, r, :, :n] = self._cache.v[:, last, :, :n]
                    self._clear(r, r + 1, n)  # the columns past it are the ended request's
                    self._running[r] = moved
                self._running.pop()

    def _clear(self, start: int, stop: int, column: int) -> None:
        """Zero rows start..stop-1 of the cache from `column` on: what an earlier occupant left there. A step of
        several rows reads every row up to the longest row's position and masks the columns past each row's own, but
        a masked column's zero weight times a NaN or Inf value (an overflow of that occupant's) is still NaN."""
        self._cache.k[:, start:stop, :, column:].zero_()
        self._cache.v[:, start:stop, :, column:].zero_()

    def _end(self, req: Request, reason: str) -> None:
        req._push(StreamEvent(text="", finish_reason=reason))
        with self._cond:
            self._stats["requests_cancelled"] += 1

    def _fail(self, reqs: list[Request], error: Exception) -> None:
        err = RuntimeError(f"generation failed: {type(error).__name__}: {error}")
        err.__cause__ = error
        reqs = [r for r in reqs if not r.done]  # those that ended earlier in the step keep their result
        for req in reqs:
            req._fail(err)
        with self._cond:
            self._stats["requests_failed"] += len(reqs)

    def _end_all(self) -> None:
        """End every running, admitted and waiting request with the abort error (EngineClosed unless the loop
        failed)."""
        with self._cond:
            error = self._abort or EngineClosed("the engine shut down before the request finished")
            # the admitted too: the loop may fail between popping them from the queue and prefilling them
            reqs = [r for r in [s.req for s in self._running] + self._admitting + list(self._waiting) if not r.done]
            self._running.clear()
            self._admitting = []
            self._waiting.clear()
            # the loop failed: each of them failed (stats say so); not those a shutdown ended (its abort is no failure)
            if self._failure is not None:
                self._stats["requests_failed"] += len(reqs)
        for req in reqs:
            req._fail(error)
