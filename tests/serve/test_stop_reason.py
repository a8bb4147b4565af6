"""vLLM's stop_reason and include_stop_str_in_output, through the real `openai` client against a real server, on
completions and chat, streamed (the chunk that ends a choice carries it) and not, for every choice of n.

Oracle: vLLM's stop checker (vllm/v1/engine/detokenizer.py, check_stop_strings, and the scheduler's check_stop for
stop_token_ids) run in plain Python over the text the same request makes without a stop, on a char-level model (one
token, one character, so each step adds one character and vLLM's checker sees exactly what ours does)."""

from __future__ import annotations

import pytest
from nl_serve_helpers import assert_ok_after, write_run_dir

openai = pytest.importorskip("openai")

PROMPT, MAX, N = "The quick", 24, 2
SEED = {"completions": 0, "chat": 4}  # seeds whose choices run to max_tokens without eos
MESSAGES = [{"role": "user", "content": "The quick"}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run_dir(tmp_path_factory.mktemp("stop-reason") / "tiny-char")


def vllm_stop(text: str, stops: list[str], stop_chars: str = "", include: bool = False) -> tuple[str, object]:
    """(text, stop_reason) as vLLM ends a char-level choice: after each character, a stop_token_ids character ends
    it (its text written only with include), else the first listed stop string found in the new tail."""
    for k in range(1, len(text) + 1):
        if text[k - 1] in stop_chars:
            return text[:k] if include else text[:k - 1], text[k - 1]
        for s in stops:
            i = text[:k].find(s, max(0, k - len(s)))
            if i >= 0:
                return text[:i + len(s)] if include else text[:i], s
    return text, None


def run(client, route: str, stream: bool, **kw) -> list[tuple[str, str, object]]:
    """(text, finish_reason, stop_reason) of each choice."""
    kw = dict(model="tiny-char", max_tokens=MAX, temperature=1.0, seed=SEED[route], n=N, **kw)
    create = client.completions.create if route == "completions" else client.chat.completions.create
    kw.update(prompt=PROMPT) if route == "completions" else kw.update(messages=MESSAGES)
    if not stream:
        out = create(**kw)
        return [(c.text if route == "completions" else c.message.content, c.finish_reason, c.stop_reason)
                for c in out.choices]
    texts, finish, reason = [""] * N, [None] * N, [None] * N
    for chunk in create(stream=True, **kw):
        for c in chunk.choices:
            texts[c.index] += (c.text if route == "completions" else c.delta.content) or ""
            extra = c.model_extra or {}
            if route == "completions":  # vLLM's completion chunks carry it always, null until the last
                assert "stop_reason" in extra and (extra["stop_reason"] is None or c.finish_reason)
            elif c.finish_reason is None:  # its chat chunks only on the last
                assert "stop_reason" not in extra
            if c.finish_reason:
                finish[c.index], reason[c.index] = c.finish_reason, extra["stop_reason"]
    return list(zip(texts, finish, reason, strict=True))


@pytest.fixture(scope="module")
def unstopped(client):
    """Each route's choices without a stop (the same seeds give the same tokens)."""
    out = {route: [t for t, _, _ in run(client, route, False)] for route in ("completions", "chat")}
    assert all(len(t) == MAX for texts in out.values() for t in texts)  # one character a token, no eos
    return out


ROUTES = ["completions", "chat"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("include", [False, True])
@pytest.mark.parametrize("picks", [[(3, 2)], [(6, 1), (2, 3)], [(20, 3)]], ids=["one", "two", "late"])
def test_stop_reason_names_the_stop_string_as_vllm(client, unstopped, route, stream, include, picks):
    text0 = unstopped[route][0]
    stops = [text0[a:a + b] for a, b in picks]
    got = run(client, route, stream, stop=stops, extra_body={"include_stop_str_in_output": include})
    want = [vllm_stop(t, stops, include=include) for t in unstopped[route]]
    assert got == [(text, "length" if s is None else "stop", s) for text, s in want]
    assert got[0][2] is not None  # choice 0 holds a stop string


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("include", [False, True])
def test_stop_reason_is_the_stop_token_id(client, loaded, unstopped, route, stream, include):
    tok = loaded[1]
    char = unstopped[route][0][5]
    got = run(client, route, stream, extra_body={"stop_token_ids": [tok.encode(char)[0]],
                                                 "include_stop_str_in_output": include})
    for (text, finish, reason), full in zip(got, unstopped[route], strict=True):
        want_text, stopped = vllm_stop(full, [], char, include)
        assert (text, finish) == (want_text, "length" if stopped is None else "stop")
        assert reason == (None if stopped is None else tok.encode(char)[0])  # an id, not its text


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("stream", [False, True])
def test_stop_reason_is_null_on_length_and_on_eos(client, loaded, route, stream):
    assert all(reason is None and finish == "length" for _, finish, reason in run(client, route, stream))
    eos = loaded[1].eos_id
    forced = run(client, route, stream, logit_bias={str(eos): 100})  # eos first: finish "stop", no stop_reason
    assert all((text, finish, reason) == ("", "stop", None) for text, finish, reason in forced)


def test_an_eos_listed_in_stop_token_ids_is_eos_unless_ignore_eos(client, loaded):
    eos = loaded[1].eos_id
    kw = dict(logit_bias={str(eos): 100})
    # vLLM's check_stop looks at eos first; with ignore_eos only stop_token_ids ends it, and names it
    assert run(client, "completions", False, **kw, extra_body={"stop_token_ids": [eos]})[0][1:] == ("stop", None)
    assert run(client, "completions", False, **kw,
               extra_body={"stop_token_ids": [eos], "ignore_eos": True})[0][1:] == ("stop", eos)


def test_two_stop_strings_that_end_on_one_character_cut_at_the_earlier_start(client, unstopped):
    """The documented difference from vLLM: its checker takes the first listed ("b" of ["b", "ab"]) and returns
    the "a" before it; here the text is cut where the earliest stop string starts, whatever the order, so no stop
    string is ever left in the text; stop_reason names the one that starts there."""
    text0 = unstopped["completions"][0]
    longer, shorter = text0[4:7], text0[6]
    for stops in ([shorter, longer], [longer, shorter]):
        got = run(client, "completions", False, stop=stops)[0]
        first = min(i for i in (text0.find(s) for s in stops) if i >= 0)
        assert got == (text0[:first], "stop", next(s for s in stops if text0.startswith(s, first)))


def test_the_chat_templates_own_end_of_reply_is_no_stop_reason(loaded):
    """The default chat template ends a reply at the next "user:" line, a stop string the chat route adds, as eos
    would end it: stop_reason names only the stop strings the client sent (TextOptions.reported_stops)."""
    from neurallayers.generation import GenerationConfig
    from neurallayers.serve._engine_request import Request, TextOptions, _Sequence

    model, tok = loaded
    cfg = GenerationConfig(max_new_tokens=12, stop=["x", "\nuser"])  # (":" is not in this vocabulary)
    for reported, want in (((), None), (("x",), None), (("\nuser",), "\nuser")):
        req = Request(tok.encode("ab"), cfg, on_cancel=lambda: None, text=TextOptions(reported_stops=reported))
        seq = _Sequence(req, eos_ids=tok.eos_ids, tokenizer=tok, device=model.lm_head.weight.device)
        done = [seq.step(None, tok.encode(ch)[0]) for ch in "hi\nuser"]
        assert done == [False] * 6 + [True] and (req.finish_reason, req.stop_reason) == ("stop", want)


def test_stop_reason_is_in_the_schema(server):
    import httpx

    schema = httpx.get(f"{server.url}/openapi.json").json()["components"]["schemas"]
    assert "stop_reason" in schema["CompletionChoice"]["properties"]
    assert "stop_reason" in schema["ChatChoice"]["properties"]
    assert_ok_after(server.url)


def test_include_stop_str_in_output_lists_the_stop_strings_tokens_in_logprobs(client, unstopped):
    text0 = unstopped["completions"][0]
    stop = text0[3:5]
    for include, want in ((False, text0[:3]), (True, text0[:5])):
        out = client.completions.create(model="tiny-char", prompt=PROMPT, max_tokens=MAX, temperature=1.0, n=1,
                                        seed=SEED["completions"], stop=[stop], logprobs=0,
                                        extra_body={"include_stop_str_in_output": include})
        c = out.choices[0]
        assert (c.text, c.stop_reason) == (want, stop)
        # vLLM returns the stop string's tokens with it; one token a character here
        assert "".join(c.logprobs.tokens) == want and c.logprobs.text_offset == list(range(len(want)))
        assert out.usage.completion_tokens == 5  # the tokens chosen, either way


@pytest.fixture(scope="module")
def bpe_client(tmp_path_factory):
    from nl_serve_helpers import serving

    with serving(write_run_dir(tmp_path_factory.mktemp("stop-reason-bpe") / "tiny-bpe", kind="bpe")) as srv:
        yield openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_two_stop_strings_in_one_tokens_text_leave_neither_in_the_text(bpe_client):
    """A byte-level BPE token of several characters: stops [its 2nd character, its 1st]. vLLM's checker finds the
    first listed (the 2nd character) and returns the 1st, itself a stop string; here the text ends before the 1st and
    stop_reason names it. Oracle: the rule, token by token over the tokens' texts (logprobs)."""
    kw = dict(model="tiny-bpe", prompt="The quick", max_tokens=24, temperature=0)
    tokens = bpe_client.completions.create(logprobs=0, **kw).choices[0].logprobs.tokens
    text = "".join(tokens)
    k = next(k for k, t in enumerate(tokens) if len(t) >= 2 and t[0] != t[1] and t[0].isascii() and t[1].isascii()
             and t[0] not in "".join(tokens[:k]) + t[1:] and t[1] not in "".join(tokens[:k]))
    before, stops = len("".join(tokens[:k])), [tokens[k][1], tokens[k][0]]
    got = bpe_client.completions.create(stop=stops, **kw).choices[0]
    assert (got.text, got.finish_reason, got.stop_reason) == (text[:before], "stop", tokens[k][0])
    vllm_text = text[:before + 1]  # vLLM: cut at the first listed found, the 2nd character
    assert any(s in vllm_text for s in stops) and not any(s in got.text for s in stops)
