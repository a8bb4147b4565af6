"""The server's choice of chat template, as vLLM's OpenAI server makes it, through the real `openai` client
(extra_body) on 127.0.0.1, with transformers' apply_chat_template on the same templates as the oracle of the prompt:
create_app(chat_template=...) (`serve --chat-template`) as the default of the chat routes and /tokenize; a request's
chat_template (or chat_template_kwargs' "chat_template") refused unless the server trusts them, then rendered, within a
time limit; documents; tools shown to the template with tool_choice "none" only (no tool-call parsing, as vLLM
without a parser); and the plain `role: content` lines' "\\nuser:" stop added only where those lines are the template
used."""

from __future__ import annotations

import os

import httpx
import pytest
import torch
from nl_serve_helpers import TEXT, assert_ok_after, serving

from neurallayers import ModelConfig, build_model
from neurallayers.data.tokenizers import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")

DEFAULT = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
           "{% if add_generation_prompt %}<|assistant|>{% endif %}")
TOOL_USE = ("{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools>\n{% endif %}"
            "{% for m in messages %}[{{ m.role }}]{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")
RAG = ("{% if documents %}{% for d in documents %}({{ loop.index }}) {{ d.title }}: {{ d.text }}\n{% endfor %}"
       "{% else %}(no documents)\n{% endif %}{% for m in messages %}{{ m.role | upper }}: {{ m.content }}\n{% endfor %}"
       "{% if add_generation_prompt %}ANSWER:{% endif %}")
INLINE = "{% for m in messages %}{{ m.role }}={{ m.content }};{% endfor %}=>"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
DOCS = [{"title": "Alps", "text": "Zürich lies north of them."}, {"title": "Sea", "text": "Far away."}]
HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo"}]
CYCLE = "\nuser:"  # what the looping model below writes, over and over


def tokenizer(templates: dict | None) -> Tokenizer:
    """A char-level tokenizer that knows every character the templates, tools and messages write (so decode(encode(
    text)) is the text), with `templates` as transformers saves them: "default" and named ones."""
    chars = "".join(map(chr, range(32, 127))) + "\nüéö" + TEXT
    tok = Tokenizer.train_char([chars])
    templates = dict(templates or {})
    tok.chat_template = templates.pop("default", None)
    tok.named_chat_templates = templates
    return tok


def looping_model(tok: Tokenizer):
    """A decoder whose greedy choice depends on the position alone: position p predicts CYCLE[(p + 1) % 6], so any
    reply of 12 tokens or more holds "\\nuser:" (blocks zeroed, wpe one-hot, lm_head reading the position back)."""
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=512, n_layer=1, n_head=2, n_embd=512, tie_embeddings=False,
                      position="learned")
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if name.endswith("norm_f.weight") else 0.0)
        for pos in range(cfg.block_size):
            model.wpe.weight[pos, pos] = 1.0
            model.lm_head.weight[tok.encode(CYCLE[(pos + 1) % len(CYCLE)])[0], pos] = 10.0
    return model.eval()


@pytest.fixture(scope="module")
def tok():
    return tokenizer({"default": DEFAULT, "tool_use": TOOL_USE, "rag": RAG})


@pytest.fixture(scope="module")
def oracle(tok):
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf,
                                                chat_template={"default": DEFAULT, "tool_use": TOOL_USE, "rag": RAG})


@pytest.fixture(scope="module")
def model(tok):
    return looping_model(tok)


@pytest.fixture(scope="module")
def rag_server(model, tok):
    with serving((model, tok), chat_template="rag") as srv:
        yield srv


@pytest.fixture(scope="module")
def trusting(model, tok):
    with serving((model, tok), trust_request_chat_template=True) as srv:
        yield srv


def client(srv):
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)


def prompt_of(srv, tok, messages, **extra) -> str:
    """The prompt /v1/chat/completions reads, as its usage counts it and /tokenize gives its ids (decoded back)."""
    r = httpx.post(f"{srv.url}/tokenize", json={"messages": messages, **extra}, timeout=30)
    assert r.status_code == 200, r.text
    out = client(srv).chat.completions.create(model="model", messages=messages, max_tokens=1, temperature=0,
                                              extra_body=extra)
    assert out.usage.prompt_tokens == r.json()["count"]
    return tok.decode(r.json()["tokens"])


@pytest.mark.parametrize("inputs", [{}, {"documents": DOCS}])
def test_the_servers_template_renders_every_chat_route(rag_server, tok, oracle, inputs):
    want = oracle.apply_chat_template(HI, chat_template="rag", tokenize=False, add_generation_prompt=True, **inputs)
    assert want.endswith("ANSWER:") and ("(1) Alps" in want) == bool(inputs)
    assert prompt_of(rag_server, tok, HI, **inputs) == want


def test_a_request_template_is_refused_unless_trusted(rag_server):
    for extra, param in (({"chat_template": "tool_use"}, "chat_template"), ({"chat_template": INLINE}, "chat_template"),
                         ({"chat_template_kwargs": {"chat_template": INLINE}}, "chat_template_kwargs")):
        with pytest.raises(openai.BadRequestError) as e:
            client(rag_server).chat.completions.create(model="model", messages=HI, max_tokens=1, extra_body=extra)
        assert e.value.body["param"] == param and "--trust-request-chat-template" in e.value.body["message"]
        r = httpx.post(f"{rag_server.url}/tokenize", json={"messages": HI, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert_ok_after(rag_server.url)


@pytest.mark.parametrize(("extra", "template", "inputs"), [
    ({"chat_template": "tool_use"}, "tool_use", {}),
    ({"chat_template": "rag", "documents": DOCS}, "rag", {"documents": DOCS}),
    ({"chat_template": INLINE}, INLINE, {}),
    # vLLM passes chat_template_kwargs to apply_chat_template: a template there is used, the chat_template field first
    ({"chat_template_kwargs": {"chat_template": INLINE}}, INLINE, {}),
    ({"chat_template": "rag", "chat_template_kwargs": {"chat_template": INLINE}}, "rag", {}),
    ({"tools": [WEATHER], "tool_choice": "none"}, None, {"tools": [WEATHER]}),  # the tool_use template, as transformers
    ({"chat_template": "default", "tools": [WEATHER], "tool_choice": "none"}, "default", {"tools": [WEATHER]}),
    ({"tools": [], "chat_template": "rag"}, "rag", {}),  # an empty list is no tools (clients send it every time)
])
def test_a_trusted_request_template_renders_as_transformers(trusting, tok, oracle, extra, template, inputs):
    want = oracle.apply_chat_template(HI, chat_template=template, tokenize=False, add_generation_prompt=True, **inputs)
    body = {k: v for k, v in extra.items() if k != "tool_choice"}  # /tokenize has no tool_choice, as in vLLM
    r = httpx.post(f"{trusting.url}/tokenize", json={"messages": HI, **body}, timeout=30)
    assert r.status_code == 200 and tok.decode(r.json()["tokens"]) == want
    out = client(trusting).chat.completions.create(model="model", messages=HI, max_tokens=1, extra_body=extra)
    assert out.usage.prompt_tokens == len(tok.encode(want))


@pytest.mark.parametrize(("extra", "param", "message"), [
    ({"tools": [WEATHER]}, "tool_choice", "tool_choice left out (vLLM's \"auto\") is not supported"),
    ({"tools": [WEATHER], "tool_choice": "auto"}, "tool_choice", "does not parse replies into tool_calls"),
    ({"tools": [WEATHER], "tool_choice": "required"}, "tool_choice", "send tool_choice \"none\""),
    ({"chat_template": "tool-use"}, "chat_template", "neither a chat template of this tokenizer (its templates are "
                                                     "default, rag, tool_use) nor a Jinja template"),
    ({"chat_template_kwargs": {"chat_template": 3}}, "chat_template_kwargs", "must be a template name"),
    ({"chat_template": "{% for %}"}, "chat_template", "does not parse as a Jinja template"),
    ({"documents": [{"title": 1}]}, "documents", ""),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}], "tool_choice": "none"}, "tools", ""),
])
def test_bad_template_inputs_are_a_400_naming_the_field(trusting, extra, param, message):
    with pytest.raises(openai.BadRequestError) as e:
        client(trusting).chat.completions.create(model="model", messages=HI, max_tokens=1, extra_body=extra)
    assert e.value.body["param"].startswith(param) and message in e.value.body["message"]
    assert_ok_after(trusting.url)


def test_a_request_template_that_loops_for_ever_is_cut_off(trusting):
    """Jinja's sandbox caps one range() at 100,000 items, not nested loops (here 10^9 steps over one small list)."""
    endless = ("{% set r = range(1000) | list %}{% for a in r %}{% for b in r %}{% for c in r %}{% endfor %}"
               "{% endfor %}{% endfor %}")
    r = httpx.post(f"{trusting.url}/v1/chat/completions", json={"messages": HI, "chat_template": endless}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template"
    assert "rendering took more than 2 s" in r.json()["error"]["message"]
    assert_ok_after(trusting.url)


@pytest.mark.parametrize("template", ["{{ (7 ** (3 * 10 ** 7)) % 5 }}", "{{ ('ab' * 10 ** 10) | length }}",
                                      "{{ [0] * 10 ** 9 }}"])
def test_a_request_template_that_would_allocate_without_bound_is_refused_before_it_does(trusting, template):
    """One C-level operation runs no line a deadline could stop (7 ** (3 * 10 ** 7) held a worker 74 s): sizes are
    checked before they are allocated."""
    r = httpx.post(f"{trusting.url}/v1/chat/completions", json={"messages": HI, "chat_template": template}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template", r.text
    assert "MAX_TEMPLATE" in r.json()["error"]["message"]
    assert_ok_after(trusting.url)


@pytest.mark.parametrize("stream", [False, True])
def test_the_user_line_stop_follows_the_template_used(stream):
    """A tokenizer without a template: its plain lines' reply ends at the next "\\nuser:" line; a reply under a
    request's (or the server's) Jinja template is not cut there."""
    tok = tokenizer(None)
    model = looping_model(tok)

    def reply(srv, **extra) -> tuple[str, str | None]:
        kw = {"model": "model", "messages": HI, "max_tokens": 20, "temperature": 0, "extra_body": extra}
        if not stream:
            choice = client(srv).chat.completions.create(**kw).choices[0]
            return choice.message.content, choice.finish_reason
        chunks = list(client(srv).chat.completions.create(stream=True, **kw))
        return ("".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason))

    with serving((model, tok), trust_request_chat_template=True) as srv:
        text, finish = reply(srv)
        assert finish == "stop" and CYCLE not in text and len(text) < 20
        text, finish = reply(srv, chat_template=INLINE)
        assert finish == "length" and CYCLE in text and len(text) == 20
    with serving((model, tok), chat_template=INLINE) as srv:
        text, finish = reply(srv)
        assert finish == "length" and CYCLE in text


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"chat_template": "tool-use"}, "--chat-template 'tool-use' is neither a chat template of this tokenizer (its "
                                    "templates are default, rag, tool_use) nor a Jinja template"),
    ({"chat_template": 3}, "--chat-template must be a template name or a Jinja template, got int"),
])
def test_a_bad_server_template_fails_at_start_up_in_one_line(model, tok, kwargs, message):
    from neurallayers.serve.app import create_app

    with pytest.raises(ValueError) as e:
        create_app((model, tok), **kwargs)
    assert str(e.value) == message


def test_documents_without_a_template_are_refused(model):
    plain = tokenizer(None)
    with serving((looping_model(plain), plain)) as srv:
        for field, value in (("documents", DOCS), ("tools", [WEATHER])):
            for route, body in (("/v1/chat/completions", {"max_tokens": 1}), ("/tokenize", {})):
                r = httpx.post(f"{srv.url}{route}", json={"messages": HI, field: value, "tool_choice": "none", **body})
                assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
                message = r.json()["error"]["message"]
                assert f"{field} need a chat template" in message and "--chat-template" in message, message
        r = httpx.post(f"{srv.url}/tokenize", json={"prompt": "hi", "documents": DOCS})
        assert r.status_code == 400 and r.json()["error"]["param"] == "documents"


def test_serve_names_a_bad_chat_template_in_one_line(tmp_path, capsys):
    from nl_serve_helpers import write_run_dir

    from neurallayers.__main__ import main

    run = write_run_dir(tmp_path / "run", chat_template=DEFAULT)
    code = main(["serve", str(run), "--port", "0", "--chat-template", "tool_use"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines() == ["neurallayers serve: error: --chat-template 'tool_use' is neither a chat "
                                        "template of this tokenizer (its templates are default) nor a Jinja template"]
    # a template that does not parse is named at start-up, not on every request as "the model's chat template failed"
    code = main(["serve", str(run), "--port", "0", "--chat-template", "{% for m in messages %}{{ m.content }"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == [
        "neurallayers serve: error: --chat-template does not parse as a Jinja template (line 1: unexpected '}')"], err


def test_serve_reads_a_template_file_and_passes_the_trust_flag(tmp_path, monkeypatch):
    """--chat-template FILE gives create_app the file's text (as vLLM's flag takes a file); a name or Jinja text is
    passed as it is."""
    import neurallayers.serve.app as app_module
    from neurallayers.__main__ import main

    seen = []

    def fake_create_app(path, **kwargs):
        seen.append((kwargs["chat_template"], kwargs["trust_request_chat_template"]))
        raise ValueError("stop here")

    monkeypatch.setattr(app_module, "create_app", fake_create_app)
    (tmp_path / "t.jinja").write_text(INLINE, encoding="utf-8")
    assert main(["serve", str(tmp_path), "--port", "0", "--chat-template", str(tmp_path / "t.jinja"),
                 "--trust-request-chat-template"]) == 2
    assert main(["serve", str(tmp_path), "--port", "0", "--chat-template", "rag"]) == 2
    assert main(["serve", str(tmp_path), "--port", "0"]) == 2
    assert seen == [(INLINE, True), ("rag", False), (None, False)]


def test_a_reload_keeps_the_servers_template_or_is_refused(tmp_path, model, tok):
    """The server's --chat-template holds for a reloaded model too: one without that template is not swapped in."""
    from nl_serve_helpers import write_run_dir

    write_run_dir(tmp_path / "plain")
    write_run_dir(tmp_path / "inline", chat_template=INLINE)
    with serving((model, tok), chat_template="rag", model_root=tmp_path) as srv:
        r = httpx.post(f"{srv.url}/reload", json={"model": "plain"}, timeout=60)
        assert r.status_code == 400 and "--chat-template 'rag' is neither" in r.json()["error"]["message"]
        assert httpx.get(f"{srv.url}/health").json()["model"] == "model"
    with serving((model, tok), chat_template=INLINE, model_root=tmp_path) as srv:
        assert httpx.post(f"{srv.url}/reload", json={"model": "plain"}, timeout=60).status_code == 200
        r = httpx.post(f"{srv.url}/tokenize", json={"messages": HI}, timeout=30)
        assert r.json()["count"] == len("system=Be brief.;user=héllo;=>")  # char-level: one token a character
