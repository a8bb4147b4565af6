"""Chat templates render as transformers' apply_chat_template renders them."""

from __future__ import annotations

import pytest

from neurallayers.data.chat import render_chat
from neurallayers.data.tokenizers import Tokenizer

MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "?"}]
TEMPLATES = [
    # transformers passes tools=None and documents=None: "is not none" and "is defined" tell them apart
    "{% if tools is not none %}TOOLS{% endif %}{{ messages[0].content }}",
    "{% if tools is defined %}DEF{% endif %}{% if documents is defined %}DOCS{% endif %}{{ messages[0].content }}",
    "{% if tools is not none %}{{ tools | tojson }}{% endif %}x",
    # transformers' {% generation %} block (assistant masks), as in SmolLM3's template
    "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}"
    "{% else %}{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}>{% endif %}",
    "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}",
]


@pytest.mark.parametrize("template", TEMPLATES)
def test_templates_render_as_in_transformers(template):
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer.train_bpe(["<s> </s> Hi Yo ?"] * 4, vocab_size=300, special_tokens=("<s>", "</s>"),
                              show_progress=False)
    tok.chat_template = template
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, bos_token=tok.bos_token or "<s>",
                                              eos_token=tok.eos_token or "</s>")
    want = hf.apply_chat_template(MESSAGES, chat_template=template, add_generation_prompt=True, tokenize=False)
    tok.bos_token, tok.eos_token = hf.bos_token, hf.eos_token
    assert render_chat(tok, MESSAGES) == want


def test_a_template_that_fails_is_a_value_error_naming_the_template():
    """A template's own error (a type error while rendering, a syntax error) was a TypeError: a 500 from the server
    and a traceback from `chat`; raise_exception() in a template still says it refused the messages."""

    class Tok:
        bos_token = eos_token = ""

    tok = Tok()
    for template, match in (("{{ messages[0]['content'] + 5 }}", r"chat template failed \(TypeError"),
                            ("{% if %}", r"chat template failed \(TemplateSyntaxError"),
                            ("{{ raise_exception('roles must alternate') }}", "refused these messages: roles must")):
        tok.chat_template = template
        with pytest.raises(ValueError, match=match):
            render_chat(tok, MESSAGES)


def test_templates_see_the_pad_unk_and_mask_tokens_as_in_transformers():
    """transformers passes every named special token to a template; only bos and eos were passed (a template using
    pad_token rendered it empty)."""
    transformers = pytest.importorskip("transformers")
    template = "{{ pad_token }}|{{ unk_token }}|{{ mask_token }}|{% for m in messages %}{{ m.content }}{% endfor %}"
    tok = Tokenizer.train_bpe(["<s> </s> Hi Yo ?"] * 4, vocab_size=300, special_tokens=("<s>", "</s>", "<pad>"),
                              show_progress=False).with_mask_token()
    tok.pad_token, tok.chat_template = "<pad>", template
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, pad_token="<pad>", mask_token="<mask>")
    want = hf.apply_chat_template(MESSAGES, chat_template=template, add_generation_prompt=True, tokenize=False)
    assert render_chat(tok, MESSAGES) == want


def test_templates_see_the_sep_and_cls_tokens_a_folder_names_as_in_transformers(tmp_path):
    """sep_token and cls_token were not passed to a template: "{{ cls_token }}...{{ sep_token }}" rendered them empty
    where transformers renders the folder's tokens (here RoBERTa's spellings, <s> and </s>)."""
    transformers = pytest.importorskip("transformers")
    template = "{{ cls_token }}{% for m in messages %}{{ m.content }}{{ sep_token }}{% endfor %}"
    tok = Tokenizer.train_bpe(["<s> </s> Hi Yo ?"] * 4, vocab_size=300, special_tokens=("<s>", "</s>"),
                              show_progress=False)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                         cls_token="<s>", chat_template=template).save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    want = hf.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert want == "<s>Hi</s>Yo</s>?</s>"
    assert render_chat(Tokenizer.load(tmp_path), MESSAGES) == want


def test_messages_reach_a_template_as_transformers_passes_them():
    """transformers drops keys whose value is None (an API's content=None rendered as "None" here) and passes a
    message's reasoning under reasoning_content and thinking whichever name it came by."""
    transformers = pytest.importorskip("transformers")
    template = ("{% for m in messages %}{{ m.role }}:{% if m.content is defined %}{{ m.content }}{% endif %}"
                "[{{ m.reasoning_content }}|{{ m.thinking }}];{% endfor %}")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "reasoning": "hmm"},
                {"role": "user", "content": "?", "name": None}]
    tok = Tokenizer.train_bpe(["<s> </s> Hi Yo ?"] * 4, vocab_size=300, special_tokens=("<s>", "</s>"),
                              show_progress=False)
    tok.chat_template = template
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, bos_token="<s>", eos_token="</s>")
    want = hf.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False)
    assert want == "user:Hi[|];assistant:[hmm|hmm];user:?[|];"
    assert render_chat(tok, messages) == want
    assert messages[1] == {"role": "assistant", "content": None, "reasoning": "hmm"}  # the caller's are left alone


@pytest.mark.parametrize(("messages", "message"), [
    ("hello", r"^messages must be a list of \{'role', 'content'\} dicts, got str"),
    (None, r"^messages must be a list of \{'role', 'content'\} dicts, got NoneType"),
    ([{"content": "hi"}], r"^messages\[0\] must be a dict with a string 'role' \(and a 'content'\), got \{'content'"),
    ([{"role": "user", "content": "hi"}, "hi"], r"^messages\[1\] must be a dict with a string 'role'"),
    ([{"role": None, "content": "hi"}], r"^messages\[0\] must be a dict with a string 'role'")])
@pytest.mark.parametrize("template", [None, "{% for m in messages %}{{ m.role }}{{ m.content }}{% endfor %}"])
def test_messages_that_are_not_a_conversation_are_one_clear_error(messages, message, template):
    # The plain lines raised KeyError 'role' or "string indices must be integers"; a template rendered them blank.
    tok = Tokenizer.train_char(["hi user"])
    with pytest.raises(ValueError, match=message):
        render_chat(tok, messages, chat_template=template)


@pytest.mark.parametrize(("template", "line"), [
    ("{% for m in messages %}\n{{ m.content }}\n{% endfor %}\n{{ messages[0]['content'] + 5 }}", 4),
    ("a\nb\n{% for m in messages %}{{ m.content.foo.bar }}{% endfor %}", 3),
    ("a\n{% macro f(x) %}\n{{ x + 1 }}\n{% endmacro %}\n{{ f('a') }}", 3),  # inside the macro, not at its call
    ("line 1\n\n{% if %}", 3),  # the tokenizer's own template: its syntax error shows when it renders
])
def test_a_template_that_fails_names_its_line(template, line):
    """A published template runs to hundreds of lines: its error named no line ("failed (TypeError: can only
    concatenate str ...)"), so finding the expression that broke meant bisecting the template by hand."""

    class Tok:
        bos_token = eos_token = ""
        chat_template = template

    with pytest.raises(ValueError, match=rf"^the model's chat template failed \(\w+: .*\) on its line {line}$"):
        render_chat(Tok(), MESSAGES)


@pytest.mark.parametrize("template", [
    "{% set ns = namespace(_last=1) %}{{ ns._last }}",
    "{% set ns = namespace(found=false) %}{% set ns._found = true %}{{ ns.found }}",
    "{% set ns = namespace(**{'__init__': 1}) %}x",
    "{% set ns = namespace({'_x': 1}) %}x",
])
def test_a_namespace_refuses_underscored_names_as_in_transformers(template):
    """transformers' namespace() refuses a name starting with "_" (SecurityError: a sandbox hardening); here it was
    taken, and reading it back rendered nothing (the sandbox hides such attributes): a template tried here rendered a
    wrong prompt, then failed in transformers and vLLM."""
    transformers = pytest.importorskip("transformers")
    from jinja2.exceptions import SecurityError

    tok = Tokenizer.train_bpe(["<s> </s> Hi Yo ?"] * 4, vocab_size=300, special_tokens=("<s>", "</s>"),
                              show_progress=False)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, bos_token="<s>", eos_token="</s>")
    with pytest.raises(SecurityError, match="underscore"):
        hf.apply_chat_template(MESSAGES, chat_template=template, tokenize=False)
    with pytest.raises(ValueError, match=r"failed \(SecurityError: .*underscore.*'_?_\w+'.*\) on its line 1$"):
        render_chat(tok, MESSAGES, chat_template=template)


def test_a_namespace_with_plain_names_renders_as_in_transformers():
    transformers = pytest.importorskip("transformers")
    template = ("{% set ns = namespace(n=0, self=1) %}{% set ns2 = namespace({'k': 2}, j=3) %}{% for m in messages %}"
                "{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}{{ ns.self }}{{ ns2.k }}{{ ns2.j }}")
    tok = Tokenizer.train_bpe(["<s> </s> Hi Yo ?"] * 4, vocab_size=300, special_tokens=("<s>", "</s>"),
                              show_progress=False)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, bos_token="<s>", eos_token="</s>")
    want = hf.apply_chat_template(MESSAGES, chat_template=template, tokenize=False)
    assert render_chat(tok, MESSAGES, chat_template=template) == want == "3123"


def test_a_template_sees_only_plain_data_as_in_transformers(tmp_path):
    """transformers hands a template plain JSON values only: an object in a message, a tool, a document or a template
    variable becomes "<TypeName>", since the sandbox does not know which of its methods are unsafe. Here it reached
    the template as it was, so a template (a hub folder's, anyone's) wrote a file through a Path's write_text; an
    enum role rendered as "Role.USER", and tojson failed on a numpy bool."""
    import enum

    import numpy as np

    transformers = pytest.importorskip("transformers")

    class Role(str, enum.Enum):
        USER = "user"

    target = tmp_path / "written_by_template.txt"
    messages = [{"role": Role.USER, "content": [{"type": "text", "text": "Hi"}, {"type": "image", "image": target}],
                 "n": np.int64(3)}]
    template = ("{% for m in messages %}{{ m.role }}:{{ m.n }}:{{ m.content[1].image }}"
                "{% if m.content[1].image.write_text is defined %}{{ m.content[1].image.write_text('pwned') }}"
                "{% endif %}{% endfor %}|{{ tools[0].f }}|{{ documents[0].d }}|"
                "{{ flag | tojson }}|{{ pair }}")
    extra = {"tools": [{"f": target}], "documents": [{"d": (np.float32(0.5), "x")}]}
    kwargs = {"flag": np.bool_(False), "pair": (1, Role.USER)}
    tok = Tokenizer.train_bpe(["<s> </s> Hi Yo ?"] * 4, vocab_size=300, special_tokens=("<s>", "</s>"),
                              show_progress=False)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, bos_token="<s>", eos_token="</s>")
    want = hf.apply_chat_template(messages, chat_template=template, tokenize=False, **extra, **kwargs)
    assert not target.exists()
    got = render_chat(tok, messages, chat_template=template, add_generation_prompt=False, template_kwargs=kwargs,
                      **extra)
    assert not target.exists()
    assert got == want == "user:3:<PosixPath>|<PosixPath>|(0.5, 'x')|false|(1, 'user')"
    assert messages[0]["role"] is Role.USER and messages[0]["content"][1]["image"] == target  # the caller's kept
