"""Chat templates render within bounds: a template (the tokenizer's, a hub folder's, a request's) that would make a huge
value or text is refused with a ValueError naming the limit, before it allocates; real templates render exactly as
transformers' apply_chat_template renders them, large conversations included."""

from __future__ import annotations

import tracemalloc

import pytest

from neurallayers.data import chat
from neurallayers.data.chat import render_chat

MESSAGES = [{"role": "user", "content": "Hi"}]


class Tok:
    bos_token, eos_token, chat_template = "<s>", "</s>", None


# DeepSeek V3 (0324): namespace accumulation, `+` on every part, tool calls and outputs
DEEPSEEK_V3 = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true, "
    "is_last_user=false) %}{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}"
    "{% set ns.is_first_sp = false %}{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + "
    "message['content'] %}{%- endif %}{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}"
    "{%- set ns.is_first = false -%}{%- set ns.is_last_user = true -%}"
    "{{'<｜User｜>' + message['content'] + '<｜Assistant｜>'}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['tool_calls'] is defined and "
    "message['tool_calls'] is not none %}"
    "{%- set ns.is_last_user = false -%}{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{%- endif %}"
    "{%- set ns.is_first = false %}{%- set ns.is_tool = false -%}{%- set ns.is_output_first = true %}"
    "{%- for tool in message['tool_calls'] %}{%- if not ns.is_first %}{%- if message['content'] is none %}"
    "{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + "
    "'\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- else %}{{message['content'] + '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + "
    "'<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + "
    "'\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- endif %}{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + "
    "'```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- endif %}"
    "{%- endfor %}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and (message['tool_calls'] is not defined or message['tool_calls'] is none)"
    "%}{%- set ns.is_last_user = false -%}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}{{content + '<｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_last_user = false -%}{%- set ns.is_tool = true -%}"
    "{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + "
    "'<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}{{'\\n<｜tool▁output▁begin｜>' + "
    "message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}"
    "{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_last_user and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}")

# ChatML with tools as Qwen2.5 writes them: tojson of each tool, tool calls as JSON, tool responses grouped
CHATML_TOOLS = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- \"\\n\\n# Tools\\n\\n<tools>\" }}{%- for tool in tools %}{{- \"\\n\" }}{{- tool | tojson }}{%- endfor %}"
    "{{- \"\\n</tools><|im_end|>\\n\" }}{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role }}{%- if message.content %}"
    "{{- '\\n' + message.content }}{%- endif %}{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}"
    "{{- '<|im_start|>user' }}{%- endif %}{{- '\\n<tool_response>\\n' }}{{- message.content }}"
    "{{- '\\n</tool_response>' }}{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

# every operation the limits watch, used as templates use them
WATCHED = (
    "{% macro turn(m) %}[{{ m.role | upper }}]{{ m.content | trim | replace('  ', ' ') }}{% endmacro %}"
    "{% set ns = namespace(text='') %}{% for m in messages[-4:] %}{% set ns.text = ns.text ~ m.role[:1] %}"
    "{{ turn(m) }}{{ '%-6s|%3d' % (m.role, loop.index) }}{{ '{}:{:>4}'.format(m.role, loop.index0) }}"
    "{{ m.role.center(11, '*') }}{{ '=' * 3 }}{{ loop.cycle('a', 'b') }}\n{% endfor %}{{ ns.text }}"
    "{{ messages | map(attribute='role') | unique | join(', ') }}|{{ messages | selectattr('role', 'eq', 'user') "
    "| list | length }}|{{ (messages | last).content.split() | join('_') }}|{{ 2 ** 10 }}|{{ [1, 2] * 2 }}"
    "{{ tools | tojson(indent=2) if tools else '' }}{{ {'b': 1, 'a': [1, 2]} | tojson(sort_keys=true) }}"
    "{{ messages[0].content | indent(2) | wordwrap(40) }}{{ messages[0] | dictsort | first }}"
    "{{ 'x'.ljust(3) ~ 'y'.zfill(3) }}{% set block %}{{ messages | length }}{% endset %}{{ block }}")

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string", "description": "the city"}},
                                               "required": ["city"]}}}]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
CHATS = {
    "one turn": [{"role": "user", "content": "Hello there"}],
    "system, multi-turn": [{"role": "system", "content": "Be  nice"}, {"role": "user", "content": "Hi 🙂"},
                           {"role": "assistant", "content": "<think>hm</think>Yo"}, {"role": "user", "content": "?"}],
    "tool call": [{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": "", "tool_calls": [CALL, CALL]},
                  {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "22 C"}],
    # about 2 MB in all, each message distinct: the limits leave a large conversation alone
    "large": [{"role": ("user", "assistant")[i % 2], "content": f"{i} " + "word " * 5000} for i in range(80)],
}


def transformers_render(template, messages, tools):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=HFTokenizer(models.WordLevel({"<unk>": 0}, "<unk>")),
                                              bos_token="<s>", eos_token="</s>")
    return hf.apply_chat_template(messages, chat_template=template, tools=tools, add_generation_prompt=True,
                                  tokenize=False)


@pytest.mark.parametrize("template", [DEEPSEEK_V3, CHATML_TOOLS, WATCHED], ids=["deepseek-v3", "chatml-tools",
                                                                               "watched-operations"])
@pytest.mark.parametrize("chat_name", CHATS)
def test_templates_render_as_transformers_renders_them(template, chat_name):
    messages = CHATS[chat_name]
    for tools in (None, TOOLS):
        want = transformers_render(template, messages, tools)
        assert render_chat(Tok(), messages, chat_template=template, tools=tools) == want
        assert render_chat(Tok(), messages, chat_template=template, tools=tools, max_seconds=60) == want


SHARED = "{% set a = ['x' * 1000] %}" + "{% set a = [a, a] %}" * 14  # 16 M characters written out, 14 small lists
# each makes a value or a text just past the limit (so without the limits it renders, slowly, rather than failing)
N = 9_000_000  # MAX_TEMPLATE_CHARS is 8_388_608
TOO_LARGE = {
    "str * n": f'{{{{ "x" * {N} }}}}',
    "list * n": f"{{{{ [0] * {N} }}}}",
    "n * str": f'{{{{ {N} * "x" }}}}',
    "a joined list times n": f'{{{{ ("ab" | join) * {N // 2} }}}}',
    "join with a long separator": '{{ ([0] * 3000) | join("y" * 3000) }}',
    "str.join with a long separator": '{{ ("y" * 3000).join(["x"] * 3000) }}',
    "center filter": f'{{{{ "x" | center({N}) }}}}',
    "str.center": f'{{{{ "x".center({N}) }}}}',
    "str.ljust": f'{{{{ "x".ljust({N}) }}}}',
    "str.zfill": f'{{{{ "1".zfill({N}) }}}}',
    "str.format width": f'{{{{ "{{:>{N}}}".format(1) }}}}',
    "% width": f'{{{{ "%{N}s" % 1 }}}}',
    "% width from an argument": f'{{{{ "%*s" % ({N}, 1) }}}}',
    "format filter": f'{{{{ "%{N}s" | format(1) }}}}',
    "** on ints": "{{ 7 ** 100000 }}",
    "* on ints squared in a loop": "{% set ns = namespace(x=3) %}{% for i in range(16) %}{% set ns.x = ns.x * ns.x %}"
                                   "{% endfor %}",
    "~ doubled in a loop": '{% set ns = namespace(x="x") %}{% for i in range(24) %}{% set ns.x = ns.x ~ ns.x %}'
                           '{% endfor %}',
    "+ doubled in a loop": '{% set ns = namespace(x="x") %}{% for i in range(24) %}{% set ns.x = ns.x + ns.x %}'
                           '{% endfor %}',
    "~ doubled through macro arguments": '{% macro f(x, n) %}{% if n %}{{ f(x ~ x, n - 1) }}{% endif %}{% endmacro %}'
                                         '{{ f("x", 24) }}',
    "nested ranges": "{% for i in range(3000) %}{% for j in range(3000) %}x{% endfor %}{% endfor %}",
    "a macro's output": "{% macro m() %}{% for i in range(3000) %}{{ 'x' * 3000 }}{% endfor %}{% endmacro %}{{ m() }}",
    "a set block": "{% set b %}{% for i in range(3000) %}{{ 'x' * 3000 }}{% endfor %}{% endset %}",
    "replace filter with an empty pattern": '{{ ("x" * 3000) | replace("", "y" * 3000) }}',
    "str.replace with an empty pattern": '{{ ("x" * 3000).replace("", "y" * 3000) }}',
    "indent filter": '{{ ("\\n" * 3000) | indent(3000) }}',
    "wordwrap with a long wrapstring": '{{ ("x " * 3000) | wordwrap(1, true, "y" * 3000) }}',
    "str.expandtabs": '{{ ("\\t" * 3000).expandtabs(3000) }}',
    "tojson with a wide indent": "{{ ([[[0]]] * 3000) | tojson(indent=3000) }}",
    "a list of shared lists written out": SHARED + "{{ a }}",
    "... through tojson": SHARED + "{{ a | tojson }}",
    "... through ~": SHARED + "{{ 'a' ~ a }}",
    "... through a string filter": SHARED + "{{ a | upper }}",
    "sum of lists": "{% set x = [0] * 300000 %}{{ ([x] * 30) | sum(start=[]) | length }}",
    "join of a generator of one long text": '{{ range(3000) | map(attribute="q") | map("default", "x" * 3000) '
                                            '| join }}',
    "int.to_bytes": f'{{{{ (1).to_bytes({N}, "big") | length }}}}',
    "lipsum": "{{ lipsum(20000) }}",
    "list of a long text's characters": '{{ ("x" * 3000000) | list | length }}',
    "slice filter into many lists": "{{ [1] | slice(2000000) | list | length }}",
    "batch filter with many fill items": "{{ [1] | batch(2000000, 0) | list | length }}",
    "str.join of a generator with a long separator": '{{ ("y" * 3000).join(range(3000) | map("string")) }}',
}


@pytest.mark.parametrize("template", TOO_LARGE.values(), ids=TOO_LARGE.keys())
def test_a_template_making_a_value_past_the_limit_is_refused_naming_it(template):
    with pytest.raises(ValueError, match=r"chat template: .*MAX_TEMPLATE_(CHARS|TOTAL|INT_DIGITS)=\d+"):
        render_chat(Tok(), MESSAGES, chat_template=template)


def test_the_tokenizers_own_template_is_bounded_too():
    """A hub folder's template is as untrusted as a request's."""
    tok = Tok()
    tok.chat_template = f'{{{{ "x" * {N} }}}}'
    with pytest.raises(ValueError, match="MAX_TEMPLATE_CHARS"):
        render_chat(tok, MESSAGES)


def test_many_values_each_within_the_limit_are_bounded_together():
    """Each `set` keeps a value alive: 40 of 4 M characters is 160 M characters, past MAX_TEMPLATE_TOTAL."""
    each = 4_000_000
    template = "".join(f'{{% set a{i} = "x" * {each} %}}{{% set b{i} = a{i}[1:] %}}' for i in range(20))
    with pytest.raises(ValueError, match="MAX_TEMPLATE_TOTAL"):
        render_chat(Tok(), MESSAGES, chat_template=template)


HUGE = {  # each would take gigabytes or more, or hours
    "str * n": '{{ "x" * 10**10 }}',
    "list * n": "{{ [0] * 10**9 }}",
    "str.center": '{{ "x".center(10**10) }}',
    "** on ints": "{{ 2 ** (10**10) }}",
    "join of shared lists": "{% set a = ['x' * 1000] %}" + "{% set a = [a, a] %}" * 40 + "{{ a | join }}",
    "output of nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'abcdefgh' * 1000 }}"
                              "{% endfor %}{% endfor %}",
    "format width": '{{ "{:>10000000000}".format(1) }}',
    "slice filter into many lists": "{{ [1] | slice(8000000) | list | length }}",
}


@pytest.mark.parametrize("template", HUGE.values(), ids=HUGE.keys())
def test_a_huge_value_is_refused_before_it_is_allocated(template):
    chat.compile_template(template)  # compiling is not what is measured
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="MAX_TEMPLATE"):
            render_chat(Tok(), MESSAGES, chat_template=template)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 48 << 20  # a value at the limit takes up to 32 MiB (4 bytes a character)


def test_a_value_at_the_limit_still_renders():
    text = render_chat(Tok(), MESSAGES, chat_template='{{ "x" * 8_000_000 }}')
    assert len(text) == 8_000_000


def test_a_template_running_past_max_seconds_stops_with_a_value_error():
    """Loops over a list run no other check: the deadline is checked on each of their steps (10**10 of them here)."""
    template = "{% set x = range(100000) | list %}{% for i in x %}{% for j in x %}{% endfor %}{% endfor %}"
    with pytest.raises(ValueError, match=r"chat template: rendering took more than 0.2 s"):
        render_chat(Tok(), MESSAGES, chat_template=template, max_seconds=0.2)


@pytest.mark.parametrize(("template", "error", "line"), [
    ("{% for m in messages %}\n{{ m.content }}\n{% endfor %}\n{{ 'x' * 10**9 }}", chat.TemplateTooLarge, 4),
    ("a\n{% macro big(s) %}\n{{ s.center(10**8) }}\n{% endmacro %}\n{{ big('x') }}", chat.TemplateTooLarge, 3),
    ("{% set x = range(100000) | list %}\n{% for i in x %}\n{% for j in x %}{% endfor %}{% endfor %}",
     chat.TemplateTooSlow, 3),
])
def test_a_template_past_a_limit_names_its_line(template, error, line):
    """A limit's error named the limit but not where a template of hundreds of lines hit it; the error stays its own
    class (the server tells the request's template from the model's by it)."""
    with pytest.raises(error, match=rf"^chat template: .* on its line {line}$"):
        render_chat(Tok(), MESSAGES, chat_template=template, max_seconds=0.2)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "2"])
def test_max_seconds_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="max_seconds must be a positive number of seconds or None"):
        render_chat(Tok(), MESSAGES, chat_template="{{ 1 }}", max_seconds=bad)


# each builtin filter, operator and str method the limits wrap, in ordinary use
EXPRESSIONS = [
    "'a b' | title", "'ab' | upper", "'AB' | lower", "'ab' | capitalize", "' a ' | trim", "'a<b>' | striptags",
    "'abcdef' | truncate(5, true, '..', 0)", "'a b c' | wordcount", "'a\\nb' | indent(2, true)",
    "'aaa bbb ccc' | wordwrap(4)", "'ab' | center(6)", "'a-b' | replace('-', '+')", "'%s=%d' | format('x', 3)",
    "[3, 1, 2] | sort | join(',')", "[1, 1, 2] | unique | list", "[1, 2, 3] | reverse | list", "[1, 2, 3] | sum",
    "[[1], [2]] | sum(start=[])", "[1, 2, 3, 4, 5] | batch(2, 0) | list", "[1, 2, 3, 4, 5] | slice(2) | list",
    "[1, 2] | first", "[1, 2] | last", "[1, 2] | length", "[1, 2] | max", "[1, 2] | min", "-3 | abs", "'3' | int",
    "'2.5' | float", "2.567 | round(1)", "messages | map(attribute='role') | join('/')", "{'b': 1, 'a': 2} | dictsort",
    "{'a': 1} | items | list", "messages | selectattr('role', 'eq', 'user') | list | length", "none | default('d')",
    "[1, 2] | tojson", "{'a': [1, {'b': 2}]} | tojson(indent=2)",
    "'x' | list", "'a&b' | e", "'a b' | urlencode", "1234567 | filesizeformat", "[1, 2] | string",
    "'ab' * 3", "[1] * 3", "3 * 'ab'", "2 ** 100", "'a' + 'b'", "[1] + [2]", "'%05.1f|%-4s|%x' % (3.14159, 'a', 255)",
    "'{0}-{1:>4}-{x:.2f}'.format('a', 'b', x=1.5)", "'{a}'.format_map({'a': 1})", "','.join(['a', 'b'])",
    "'a\\tb'.expandtabs(4)", "'ab'.ljust(4, '.')", "'ab'.rjust(4)", "'7'.zfill(3)", "'a,b'.split(',')",
    "'abc'[1:]", "'abcdef'[::2]", "messages[-1:] | length", "'a' ~ 1 ~ [2] ~ none", "range(3) | list",
    "lipsum(1, false, 5, 6) | length > 0",
    "(1).to_bytes(2, 'big') | length", "'x'.__class__", "namespace(a=1).a",
]


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_each_watched_operation_renders_as_in_transformers(expression):
    template = "{{ " + expression + " }}"
    assert render_chat(Tok(), CHATS["system, multi-turn"], chat_template=template) == transformers_render(
        template, CHATS["system, multi-turn"], None)
