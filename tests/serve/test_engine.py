"""The continuous-batching engine: every request's events equal stream() for that prompt alone, however requests
join and leave the batch; cancel, capacity, shutdown, failures and bad input.

A `Gate` holds the engine thread before each model forward until the test lets it through, so the order of
prefills and decode steps (who joins when) is fixed, not left to thread timing.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import threading
import time

import pytest
import torch
from torch._dynamo.utils import counters

from neurallayers.config import ModelConfig
from neurallayers.generation import GenerationConfig, generate, stream
from neurallayers.generation.fast import decode_step_for, prepare_for_decode
from neurallayers.models.decoder import DecoderLM
from neurallayers.serve.engine import Engine, EngineClosed, EngineFull
from neurallayers.serve.state import Limits, build_served

TEXT = "héllo wörld 🙂 naïve café 🎉 日本語 ok. ünïcödé 🚀 fin ∑ done. "
LOGPROB_TOL = 1e-5  # batched fp32 logits differ from one-row logits in the last bits (see engine.py)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is faster than two, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    from neurallayers.data.tokenizers import Tokenizer

    return Tokenizer.train_bpe([TEXT] * 4, vocab_size=290, show_progress=False)  # multi-byte characters split


def random_lm(kind: str = "gpt2", *, seed: int = 0, block_size: int = 96) -> DecoderLM:
    """A random model whose large init_std makes next-token distributions peaked (no near-ties)."""
    torch.manual_seed(seed)
    extra = {} if kind == "gpt2" else dict(norm="rmsnorm", mlp="swiglu", position="rope", n_kv_head=2, bias=False,
                                          tie_embeddings=False)
    if kind == "mistral":  # a window far shorter than prompt + output: rows at different positions see their own
        extra["sliding_window"] = 6
    cfg = ModelConfig(vocab_size=290, block_size=block_size, n_layer=2, n_head=4, n_embd=32, init_std=0.3, **extra)
    return DecoderLM(cfg).eval()


@functools.lru_cache(maxsize=3)
def trained_lm(kind: str) -> DecoderLM:
    """random_lm(kind) fitted to TEXT for a few steps: it writes real (multi-byte) characters, so stop strings
    can be picked from its output."""
    from neurallayers.data.tokenizers import Tokenizer

    tok = Tokenizer.train_bpe([TEXT] * 4, vocab_size=290, show_progress=False)
    model = random_lm(kind).train()
    torch.manual_seed(0)
    for p in model.parameters():  # back to a usual init scale, so it trains
        torch.nn.init.normal_(p, std=0.02) if p.ndim > 1 else None
    ids = tok.encode(TEXT * 2)
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    for _ in range(40):
        loss = model(x, targets=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


class Gate:
    """Holds the engine before every model forward until `let` lets it through; records input shapes."""

    def __init__(self, model: DecoderLM) -> None:
        self.cond = threading.Condition()
        self.allowed = self.arrived = 0
        self.opened = False
        self.shapes: list[tuple[int, int]] = []
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        with self.cond:
            self.arrived += 1
            self.shapes.append(tuple(args[0].shape))
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.opened or self.allowed >= self.arrived, timeout=30)

    def let(self, n: int) -> None:
        """Let n forwards pass, then wait until the engine stands before the next one."""
        with self.cond:
            self.allowed += n
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: self.arrived > self.allowed, timeout=30), "the engine never came back"

    def open(self) -> None:
        with self.cond:
            self.opened = True
            self.cond.notify_all()
        self.handle.remove()


def wait_until(check, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


def assert_same_events(got: list, ref: list, *, exact_logprobs: bool = False) -> None:
    """Same text per event, token ids and finish reason; log-probabilities to LOGPROB_TOL (or to the bit)."""
    assert [(e.text, e.token_id, e.finish_reason) for e in got] == [(e.text, e.token_id, e.finish_reason)
                                                                    for e in ref]
    for a, b in zip(got, ref, strict=True):
        assert (a.logprob is None) == (b.logprob is None)
        if a.logprob is None:
            continue
        if exact_logprobs:
            assert a.logprob == b.logprob
        else:
            assert a.logprob.token_id == b.logprob.token_id
            assert a.logprob.logprob == pytest.approx(b.logprob.logprob, abs=LOGPROB_TOL)
            assert [t for t, _ in a.logprob.top] == [t for t, _ in b.logprob.top]
            assert [v for _, v in a.logprob.top] == pytest.approx([v for _, v in b.logprob.top], abs=LOGPROB_TOL)


def stop_string_in(events: list) -> str:
    """Two characters from the second half of the events' text (U+FFFD stands for bytes that form no character)."""
    text = "".join(e.text for e in events)
    return next(text[i:i + 2] for i in range(len(text) // 2, len(text)) if "\ufffd" not in text[i:i + 2])


def configs(model: DecoderLM, tok, prompts: list[list[int]]) -> tuple[list[GenerationConfig], list[str | None]]:
    """One config per prompt: greedy, sampling, processors, logprobs, stop strings, a stop token and eos; and the
    finish reason each must reach (None: either)."""
    def run(i: int, **kw) -> list:
        return list(stream(model, tok, prompts[i], GenerationConfig(max_new_tokens=30, ignore_eos=True, **kw)))

    sampled = dict(temperature=1.5, seed=2, no_repeat_ngram_size=2)
    cfgs = [
        GenerationConfig(temperature=0, max_new_tokens=30, logprobs=3, ignore_eos=True),
        GenerationConfig(temperature=1.5, seed=11, max_new_tokens=40, top_k=50, top_p=0.95),
        GenerationConfig(temperature=0, max_new_tokens=30, stop=[stop_string_in(run(2, temperature=0)), "never"]),
        GenerationConfig(temperature=1.2, seed=5, max_new_tokens=8, repetition_penalty=1.3, frequency_penalty=0.5,
                         logprobs=0),
        GenerationConfig(temperature=0, max_new_tokens=30, stop_token_ids=[run(4, temperature=0)[12].token_id]),
        GenerationConfig(temperature=0, max_new_tokens=30, min_new_tokens=3, logit_bias={tok.eos_id: 30.0}),
        GenerationConfig(max_new_tokens=30, stop=[stop_string_in(run(6, **sampled))], **sampled),
    ]
    return cfgs, ["length", None, "stop", None, "stop", "stop", "stop"]


@pytest.mark.parametrize("kind", ["gpt2", "llama", "mistral"])
def test_staggered_requests_equal_stream(tok, kind: str) -> None:
    """Requests join mid-decode, queue for a row, and leave at different times (rows are compacted); each one's
    events still equal stream() alone."""
    model = trained_lm(kind)
    prompts = [tok.encode(p) for p in ["héllo", "wörld 🙂 na", "日本", "ok. ünï", "fin ∑", "caf", "🚀 🎉 x"]]
    cfgs, reasons = configs(model, tok, prompts)
    refs = [list(stream(model, tok, p, c)) for p, c in zip(prompts, cfgs, strict=True)]
    for ref, why in zip(refs, reasons, strict=True):
        assert ref[-1].finish_reason == (why or ref[-1].finish_reason)
    assert len(refs[5]) == 4  # eos (forced by logit_bias) right after min_new_tokens
    reseeded = list(stream(model, tok, prompts[1], cfgs[1].replace(seed=12)))
    assert [e.token_id for e in reseeded] != [e.token_id for e in refs[1]]  # the sampled outputs depend on the seed

    gate = Gate(model)
    engine = Engine(model, tok, max_batch=3, max_queue=8)
    reqs = [engine.submit(prompts[i], cfgs[i]) for i in range(2)]
    engine.start()
    gate.let(1 + 4)  # their joint prefill, four decode steps of both
    reqs.append(engine.submit(prompts[2], cfgs[2]))  # joins mid-decode
    gate.let(4)
    reqs += [engine.submit(p, c) for p, c in zip(prompts[3:], cfgs[3:], strict=True)]  # wait for free rows
    gate.open()
    for req, ref in zip(reqs, refs, strict=True):
        assert_same_events(list(req), ref)
        assert req.finish_reason == ref[-1].finish_reason
        assert req.prompt_tokens == len(req.prompt_ids)
    # usage counts every token chosen (a stop token, a stop string's), as generate() does, and OpenAI and vLLM
    assert [r.completion_tokens for r in reqs] == [
        generate(model, tok, [p], c)[0].completion_tokens for p, c in zip(prompts, cfgs, strict=True)]
    assert [r.completion_tokens for r in reqs] != [len(ref) - 1 for ref in refs]  # the stops are counted
    engine.shutdown()

    decode_sizes = [b for b, t in gate.shapes if t == 1 and b > 1]
    assert max(decode_sizes) == 3
    first_batched = next(i for i, (b, _) in enumerate(gate.shapes) if b > 1)
    assert any(t > 1 for _, t in gate.shapes[first_batched:])  # a prefill after batched decoding began
    assert gate.shapes[0] == (2, max(len(p) for p in prompts[:2]))  # the first two were prefilled together
    stats = engine.stats()
    assert stats["requests_finished"] == len(prompts) and stats["running"] == stats["waiting"] == 0
    assert stats["tokens_generated"] >= sum(len(r) - 1 for r in refs)


def test_the_last_event_names_what_stopped_it_as_streams_does(tok) -> None:
    """stream()'s last event names the eos id, stop token or stop string that ended it (stopped_by, as
    Generation.stopped_by); the engine's said None for every request."""
    model = trained_lm("gpt2")
    prompts = [tok.encode(p) for p in ["héllo", "wörld 🙂 na", "日本", "ok. ünï", "fin ∑", "caf", "🚀 🎉 x"]]
    cfgs, _ = configs(model, tok, prompts)
    refs = [list(stream(model, tok, p, c))[-1] for p, c in zip(prompts, cfgs, strict=True)]
    assert {type(r.stopped_by) for r in refs} == {int, str, type(None)}  # a stop id, a stop string, a length
    engine = Engine(model, tok, max_batch=3, max_queue=8)
    reqs = [engine.submit(p, c) for p, c in zip(prompts, cfgs, strict=True)]
    engine.start()
    assert [list(r)[-1].stopped_by for r in reqs] == [r.stopped_by for r in refs]
    engine.shutdown()


def test_joint_prefill_of_a_dynamic_ntk_model_equals_stream(tok) -> None:
    """Right-padded prompts prefilled together: the padding repeats each row's last position, so dynamic-NTK RoPE
    (scaled by a row's largest position) sees each prompt's own length."""
    torch.manual_seed(1)
    model = DecoderLM(ModelConfig(vocab_size=290, block_size=96, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                                  init_std=0.3, position="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                                  rope_scaling={"type": "dynamic", "factor": 2.0,
                                                "original_max_position_embeddings": 16})).eval()
    prompts = [list(range(5, 25)), [4, 8], [11, 12, 13, 14]]
    cfg = GenerationConfig(temperature=0, max_new_tokens=24, ignore_eos=True)
    refs = [list(stream(model, tok, p, cfg)) for p in prompts]
    gate = Gate(model)
    engine = Engine(model, tok, max_batch=3, max_queue=8)
    reqs = [engine.submit(p, cfg) for p in prompts]
    engine.start()
    gate.let(1)
    assert gate.shapes[0] == (3, 20)  # one joint prefill
    gate.open()
    for req, ref in zip(reqs, refs, strict=True):
        assert_same_events(list(req), ref)
    engine.shutdown()


def test_alone_equals_stream_to_the_bit(tok) -> None:
    """One running request takes stream()'s kernels on stream()'s shapes: log-probabilities agree exactly."""
    model = random_lm("llama", seed=1)
    engine = Engine(model, tok, max_batch=4)
    engine.start()
    prompt = tok.encode("naïve café")
    sampled = GenerationConfig(temperature=2.0, seed=9, max_new_tokens=20, logprobs=2, top_p=0.9)
    for cfg in (GenerationConfig(temperature=0, max_new_tokens=20, logprobs=4), sampled):
        assert_same_events(list(engine.submit(prompt, cfg)), list(stream(model, tok, prompt, cfg)),
                           exact_logprobs=True)
    tokens = [[e.token_id for e in stream(model, tok, prompt, sampled, seed=s)] for s in (9, 10)]
    assert tokens[0] != tokens[1]  # the sample depends on the seed
    engine.shutdown()


def test_threads_and_asyncio(tok) -> None:
    """Submit and read from several threads and from asyncio tasks at once; the event loop keeps running."""
    model = random_lm("gpt2", seed=2)
    prompts = [tok.encode(p) for p in ["héllo", "wörld", "日本語", "café 🎉", "ok", "done."]]
    cfgs = [GenerationConfig(temperature=0 if i % 2 else 2.0, seed=i, max_new_tokens=15 + i) for i in range(6)]
    refs = [list(stream(model, tok, p, c)) for p, c in zip(prompts, cfgs, strict=True)]
    assert [e.token_id for e in stream(model, tok, prompts[0], cfgs[0], seed=99)] != [e.token_id for e in refs[0]]
    engine = Engine(model, tok, max_batch=4, max_queue=4)
    engine.start()

    results: dict[int, list] = {}

    def client(i: int) -> None:
        results[i] = list(engine.submit(prompts[i], cfgs[i]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        async def aclient(i: int) -> None:
            results[i] = [e async for e in engine.submit(prompts[i], cfgs[i]).aiter()]

        task = asyncio.create_task(ticker())
        await asyncio.gather(*(aclient(i) for i in range(3, 6)))
        task.cancel()
        return ticks

    ticks = asyncio.run(main())
    for t in threads:
        t.join(30)
    assert ticks > 10  # the loop ran while the clients waited for events
    for i, ref in enumerate(refs):
        assert_same_events(results[i], ref)
    engine.shutdown()


def _one_running_one_queued(tok):
    """An engine of one slot and one queue place, both taken: (model, gate, engine, running a, queued b, config)."""
    model = random_lm("gpt2", seed=3)
    gate = Gate(model)
    engine = Engine(model, tok, max_batch=1, max_queue=1)
    engine.start()
    long = GenerationConfig(temperature=0, max_new_tokens=80)
    a = engine.submit(tok.encode("héllo"), long)
    gate.let(3)  # a is running; the engine thread stands in its next step
    b = engine.submit(tok.encode("wörld"), long)  # waits in the queue
    return model, gate, engine, a, b, long


def test_cancel_frees_the_slot_and_full_engine(tok) -> None:
    model, gate, engine, a, b, long = _one_running_one_queued(tok)
    with pytest.raises(EngineFull) as full:
        engine.submit(tok.encode("ok"), long)
    assert full.value.retry_after > 0 and "capacity" in str(full.value)
    b.cancel()  # a queued request gives its place back
    a.cancel()
    gate.open()
    events = list(a)
    assert a.finish_reason == "cancelled" == events[-1].finish_reason and 1 <= a.completion_tokens < 80
    assert list(b)[-1].finish_reason == "cancelled" and b.completion_tokens == 0
    wait_until(lambda: engine.stats()["running"] == 0)
    assert engine.stats()["requests_cancelled"] == 2

    prompt, short = tok.encode("日本"), GenerationConfig(temperature=0, max_new_tokens=10)
    assert_same_events(list(engine.submit(prompt, short)), list(stream(model, tok, prompt, short)))
    c = engine.submit(prompt, long)
    for _ in c:  # leaving the iteration early cancels the request
        break
    wait_until(lambda: c.finish_reason == "cancelled")
    engine.shutdown()


def test_a_cancelled_queued_request_gives_its_place_back_at_once(tok) -> None:
    """A queued request that is cancelled (its client left, or it was a choice of a request refused for the rest)
    frees its place at once: it held it until the engine thread's next admission, after the step in progress (a
    long prefill), and a submit meanwhile got EngineFull, a 429, with the queue empty."""
    _, gate, engine, a, b, long = _one_running_one_queued(tok)
    b.cancel()
    c = engine.submit(tok.encode("ok"), long)  # takes the place b left, the engine thread still in its step
    assert engine.stats()["waiting"] == 1 and engine.stats()["requests_cancelled"] == 1
    assert b.done and [e.finish_reason for e in b] == ["cancelled"]
    a.cancel()
    c.cancel()
    gate.open()
    wait_until(lambda: engine.stats()["running"] == engine.stats()["waiting"] == 0)
    assert engine.stats()["requests_cancelled"] == 3
    engine.shutdown()


def test_shutdown_drains_then_refuses(tok) -> None:
    model = random_lm("gpt2", seed=4)
    gate = Gate(model)
    engine = Engine(model, tok, max_batch=2, max_queue=4)
    engine.start()
    prompts = [tok.encode(p) for p in ["héllo", "wörld", "café"]]
    cfg = GenerationConfig(temperature=0, max_new_tokens=12)
    reqs = [engine.submit(p, cfg) for p in prompts]  # two run, one waits
    gate.let(3)
    closer = threading.Thread(target=engine.shutdown, kwargs=dict(drain=True, timeout=30))
    closer.start()
    wait_until(lambda: engine.stats()["closed"])
    with pytest.raises(EngineClosed):
        engine.submit(prompts[0], cfg)
    gate.open()
    closer.join(30)
    assert not closer.is_alive()
    for p, req in zip(prompts, reqs, strict=True):
        assert_same_events(list(req), list(stream(model, tok, p, cfg)))


def test_shutdown_without_drain_ends_requests(tok) -> None:
    model = random_lm("gpt2", seed=5)
    gate = Gate(model)
    engine = Engine(model, tok, max_batch=1, max_queue=2)
    engine.start()
    cfg = GenerationConfig(temperature=0, max_new_tokens=50)
    running, queued = engine.submit(tok.encode("héllo"), cfg), engine.submit(tok.encode("ok"), cfg)
    gate.let(2)
    closer = threading.Thread(target=engine.shutdown, kwargs=dict(drain=False))
    closer.start()
    wait_until(lambda: engine.stats()["closed"])
    gate.open()
    closer.join(30)
    for req in (running, queued):
        with pytest.raises(EngineClosed):
            list(req)
    with pytest.raises(EngineClosed):
        engine.submit(tok.encode("ok"), cfg)


def test_requests_a_shutdown_ends_are_not_counted_as_failed(tok) -> None:
    """Shut down before start(): the queued requests end with EngineClosed, as a running engine's do, and no failure
    is counted for them (requests_failed said 2: the model failed nothing)."""
    engine = Engine(random_lm(), tok, max_batch=1, max_queue=2)
    reqs = [engine.submit([1, 2], GenerationConfig(max_new_tokens=4)) for _ in range(2)]
    assert engine.shutdown(drain=False)
    for req in reqs:
        with pytest.raises(EngineClosed):
            list(req)
    stats = engine.stats()
    assert (stats["requests_failed"], stats["requests_finished"], stats["waiting"]) == (0, 0, 0)


def test_shutdown_without_drain_ends_a_request_in_its_prefill_at_once(tok) -> None:
    """The server's --shutdown-timeout cut ends what is left at once, so that its 503 goes out before uvicorn cancels
    the handler (a plain-text 500): a request popped from the queue and still in its prefill was ended only after
    that prefill and one more decode step."""
    model = random_lm("gpt2", seed=5)
    gate = Gate(model)
    engine = Engine(model, tok, max_batch=1, max_queue=2)
    engine.start()
    req = engine.submit(tok.encode("héllo"), GenerationConfig(temperature=0, max_new_tokens=50))
    wait_until(lambda: gate.arrived == 1)  # held before its prefill forward
    closer = threading.Thread(target=engine.shutdown, kwargs=dict(drain=False))
    closer.start()
    try:
        wait_until(lambda: req.done)
    finally:
        gate.open()
        closer.join(30)
    with pytest.raises(EngineClosed):
        list(req)


def test_a_failing_forward_fails_its_requests_only(tok) -> None:
    """A model error ends the requests of that step with RuntimeError; the engine keeps serving."""
    model = random_lm("gpt2", seed=6)
    calls = {"n": 0}

    def boom(module, args) -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # a decode step of the first request
            raise RuntimeError("simulated device failure")

    handle = model.register_forward_pre_hook(boom)
    engine = Engine(model, tok, max_batch=2)
    engine.start()
    cfg = GenerationConfig(temperature=0, max_new_tokens=10)
    with pytest.raises(RuntimeError, match="simulated device failure"):
        list(engine.submit(tok.encode("héllo"), cfg))
    prompt = tok.encode("wörld")
    assert_same_events(list(engine.submit(prompt, cfg)), list(stream(model, tok, prompt, cfg)))
    assert engine.stats()["requests_failed"] == 1
    handle.remove()
    engine.shutdown()


@pytest.mark.parametrize("prompt, cfg, match", [
    ([], GenerationConfig(), "empty"),
    ([1, 290], GenerationConfig(), r"outside the vocabulary \[0, 290\): \[290\]"),
    ([1, -1], GenerationConfig(), "outside the vocabulary"),
    ([1, True], GenerationConfig(), r"^prompt_ids holds bool values, not token ids \(Python ints\): \[True\]$"),
    ([1, 2.0], GenerationConfig(), r"^prompt_ids holds float values, not token ids"),
    ("hello", GenerationConfig(), "prompt_ids"),
    ([1] * 60, GenerationConfig(max_new_tokens=40), r"prompt \(60 tokens\) plus max_new_tokens \(40\) is 100"),
    ([1] * 96, GenerationConfig(max_new_tokens=1), "prompt has 96 tokens but the context length is 96"),
    ([1], GenerationConfig(num_beams=2), "num_beams"),
    ([1], GenerationConfig(num_return_sequences=2, temperature=1.0), "num_return_sequences"),
    ([1], GenerationConfig(penalty_alpha=0.5, top_k=4), "penalty_alpha"),
    ([1], GenerationConfig(logit_bias={999: 1.0}), "logit_bias"),
    # stream() refuses these too; the engine took them and never stopped on the id
    ([1], GenerationConfig(stop_token_ids=[5, 290]), r"stop_token_ids holds token ids outside .*\[290\]$"),
    ([1], {"temperature": 0}, "GenerationConfig"),
])
def test_bad_requests(tok, prompt, cfg, match: str) -> None:
    engine = Engine(random_lm(), tok, max_batch=1)
    with pytest.raises(ValueError, match=match):
        engine.submit(prompt, cfg)


def test_more_top_logprobs_than_the_vocabulary_has_are_refused_at_submit() -> None:
    """As stream() refuses them; the engine took the request and failed it in its thread ("selected index k out of
    range")."""
    model, chars = char_lm()
    cfg = GenerationConfig(max_new_tokens=3, logprobs=chars.vocab_size + 1)
    with pytest.raises(ValueError, match="logprobs") as streamed:
        stream(model, chars, [1, 2], cfg)
    engine = Engine(model, chars, max_batch=1)
    with pytest.raises(ValueError, match="logprobs") as submitted:
        engine.submit([1, 2], cfg)
    assert str(submitted.value) == str(streamed.value)


def char_lm():
    """A character tokenizer (11 tokens) and a random model of its vocabulary."""
    from neurallayers.data.tokenizers import Tokenizer

    chars = Tokenizer.train_char(["abcde fgh"])
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=chars.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    return DecoderLM(cfg).eval(), chars


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_bans_that_leave_no_token_fail_the_request_as_stream_raises(temperature: float) -> None:
    """no_repeat_ngram_size on a small vocabulary, with min_new_tokens holding eos back, bans every token: stream()
    raises after the tokens it could choose; the engine went on choosing a banned token (id 0) silently."""
    model, chars = char_lm()
    cfg = GenerationConfig(max_new_tokens=20, min_new_tokens=20, no_repeat_ngram_size=1, temperature=temperature,
                           seed=1)
    events = []
    with pytest.raises(ValueError, match="bans every token") as streamed:
        events.extend(stream(model, chars, [3, 4], cfg))
    engine = Engine(model, chars, max_batch=2)
    engine.start()
    other = engine.submit([5], GenerationConfig(temperature=0, max_new_tokens=12))  # decoded beside it, unharmed
    req = engine.submit([3, 4], cfg)
    got = []
    with pytest.raises(RuntimeError, match="bans every token") as failed:
        got.extend(req)
    assert str(failed.value) == f"generation failed: ValueError: {streamed.value}"
    assert [e.token_id for e in got] == [e.token_id for e in events] and len(got) == 8
    assert_same_events(list(other), list(stream(model, chars, [5], other.config)))
    engine.shutdown()
    stats = engine.stats()
    assert stats["requests_failed"] == 1
    assert stats["tokens_generated"] == req.completion_tokens + other.completion_tokens == 8 + 12  # none for the ban


def test_bad_text_options_are_refused_at_submit(tok) -> None:
    """A dict for `text` failed the request in the engine thread (an AttributeError); a string of reported stops
    named any substring of itself as the stop string."""
    from neurallayers.serve._engine_request import TextOptions

    engine = Engine(random_lm(), tok, max_batch=1)
    with pytest.raises(ValueError, match=r"^text must be a TextOptions or None, got dict$"):
        engine.submit([1, 2], GenerationConfig(max_new_tokens=4), text={"skip_special_tokens": False})
    with pytest.raises(ValueError, match=r"^TextOptions.reported_stops='ab': must be None or a tuple"):
        TextOptions(reported_stops="ab")
    with pytest.raises(ValueError, match=r"^TextOptions.skip_special_tokens='no': must be True or False$"):
        TextOptions(skip_special_tokens="no")
    assert TextOptions(reported_stops=["ab"]).reported_stops == ("ab",)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_batch=0), "max_batch"),
    (dict(max_queue=-1), "max_queue"),
    (dict(max_len=97), r"max_len=97: must be an integer in \[2, 96\]"),
    (dict(max_batch=2.5), "max_batch"),
])
def test_bad_engine_arguments(tok, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Engine(random_lm(), tok, **kwargs)
    with pytest.raises(ValueError, match="tokenizer"):
        Engine(random_lm(), None)


def test_an_encoder_or_a_path_is_refused_as_stream_refuses_it(tok) -> None:
    """Engine(encoder) failed with "'EncoderModel' object has no attribute 'new_cache'", Engine(path) with another
    AttributeError; stream() says what generation needs in one line."""
    from neurallayers.models import build_model

    encoder = build_model(ModelConfig(vocab_size=290, block_size=32, n_layer=1, n_head=2, n_embd=16, causal=False))
    for model, match in ((encoder, "is an encoder"), ("runs/gpt", r"got str \(a path: load the model first")):
        with pytest.raises(ValueError, match=match) as streamed:
            stream(model, tok, [1, 2])
        with pytest.raises(ValueError, match=match) as refused:
            Engine(model, tok)
        assert str(refused.value) == str(streamed.value)


def test_max_len_bounds_requests_and_cache(tok) -> None:
    engine = Engine(random_lm(), tok, max_batch=2, max_len=16)
    assert engine._cache.max_len == 16
    with pytest.raises(ValueError, match="context length 16"):
        engine.submit([1] * 10, GenerationConfig(max_new_tokens=7))
    engine.start()
    events = list(engine.submit([1] * 10, GenerationConfig(temperature=0, max_new_tokens=6)))
    assert events[-1].finish_reason in ("stop", "length") and len(events) <= 7
    engine.shutdown()
    with pytest.raises(EngineClosed):
        engine.start()


def test_a_request_being_prefilled_counts_toward_capacity(tok) -> None:
    model = random_lm("gpt2", seed=5)
    gate = Gate(model)
    engine = Engine(model, tok, max_batch=1, max_queue=0)
    engine.start()
    cfg = GenerationConfig(temperature=0, max_new_tokens=4)
    a = engine.submit(tok.encode("héllo"), cfg)
    with gate.cond:  # the engine stands before a's prefill forward: a left the queue but is not running yet
        assert gate.cond.wait_for(lambda: gate.arrived >= 1, timeout=30)
    assert engine.stats()["running"] == 1
    with pytest.raises(EngineFull):
        engine.submit(tok.encode("wörld"), cfg)
    gate.open()
    assert list(a)[-1].finish_reason in ("length", "stop")
    engine.shutdown()


def test_a_compiled_decode_step_serves_the_same_events(tok) -> None:
    """With generation.fast's compiled step registered, warm_up() compiles it for the engine's cache, and serving
    compiles nothing more, however the batch grows and shrinks; each request's events equal stream()'s with that
    step (a lone request's to the bit)."""
    model = prepare_for_decode(copy.deepcopy(trained_lm("llama")))
    prompts = [tok.encode(p) for p in ["héllo", "wörld 🙂 na", "日本", "ok. ünï", "fin ∑"]]
    cfgs = [GenerationConfig(temperature=0, max_new_tokens=12 + 3 * i, logprobs=2, ignore_eos=True)
            for i in range(len(prompts))]
    cfgs[1] = GenerationConfig(temperature=1.5, seed=3, max_new_tokens=20, top_k=40, ignore_eos=True)
    refs = [list(stream(model, tok, p, c)) for p, c in zip(prompts, cfgs, strict=True)]
    engine = Engine(model, tok, max_batch=3, max_queue=8)
    graphs = counters["stats"]["unique_graphs"]
    engine.warm_up()
    assert counters["stats"]["unique_graphs"] - graphs == 2  # one row; every batch of 2..max_batch rows
    graphs = counters["stats"]["unique_graphs"]
    engine.start()
    assert_same_events(list(engine.submit(prompts[0], cfgs[0])), refs[0], exact_logprobs=True)
    reqs = [engine.submit(p, c) for p, c in zip(prompts, cfgs, strict=True)]  # 3 rows, then rows leave and join
    for req, ref in zip(reqs, refs, strict=True):
        assert_same_events(list(req), ref)
    engine.shutdown()
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_server_built_with_compile_decodes_through_the_warmed_step(tok) -> None:
    """Limits(compile=True) (`neurallayers serve --compile`): the model gets the fast step, compiled before serving."""
    # the model of the test above, so its graphs come from inductor's caches (a cold compile is ~20 s a graph)
    model = copy.deepcopy(trained_lm("llama"))
    served = build_served(model, tok, "m", Limits(max_batch=2, compile=True))
    assert decode_step_for(model) is not None
    graphs = counters["stats"]["unique_graphs"]
    served.start()
    prompt, cfg = tok.encode("日本"), GenerationConfig(temperature=0, max_new_tokens=10, ignore_eos=True)
    got = list(served.engine.submit(prompt, cfg))
    served.shutdown()
    assert counters["stats"]["unique_graphs"] == graphs
    assert_same_events(got, list(stream(model, tok, prompt, cfg)), exact_logprobs=True)


@pytest.mark.parametrize("joins", ["into the freed row", "moved into the freed row"])
def test_nan_an_ended_request_left_in_its_row_poisons_no_later_one(tok, joins: str) -> None:
    """A request whose values overflowed leaves NaN in its cache row. A short request that then takes that row
    (a newcomer, or the last row moved into the hole) decodes beside a longer one, so the step's window spans its
    stale columns: masked, but a zero weight times NaN is NaN. It must still equal stream() alone."""
    model = random_lm("gpt2")
    poison = 7  # a prompt with this id overflows: its row's keys and values (and its padding's) are NaN

    def overflow(module, args, out):
        return out.masked_fill((args[0] == poison)[..., None], float("nan")) if args[0].shape[1] > 1 else out

    model.wte.register_forward_hook(overflow)
    long, short, poisoned = list(range(10, 40)), [11, 12, 13], [5, poison] + list(range(50, 68))
    cfg = GenerationConfig(temperature=0, max_new_tokens=30, ignore_eos=True)
    refs = [list(stream(model, tok, p, cfg)) for p in (long, short)]
    gate = Gate(model)
    engine = Engine(model, tok, max_batch=3)
    first = [long, poisoned] if joins == "into the freed row" else [long, poisoned, short]
    reqs = [engine.submit(p, cfg.replace(max_new_tokens=2) if p is poisoned else cfg) for p in first]
    engine.start()
    gate.let(1 + 1)  # the joint prefill, then the decode step that ends the poisoned request
    assert reqs[1].done
    if joins == "into the freed row":
        reqs.append(engine.submit(short, cfg))
    gate.open()
    for req, ref in zip([reqs[0], reqs[-1]], refs, strict=True):
        assert_same_events(list(req), ref)
    engine.shutdown()
