"""The sandbox chat templates render in: Jinja's ImmutableSandboxedEnvironment with transformers' settings, bounded
in size and, when asked, in time. A template (the tokenizer's, a hub folder's or a request's) is untrusted input:
`{{ "x" * 10**10 }}` allocated gigabytes in the plain sandbox, which no deadline can interrupt (one C-level call).
render_chat (neurallayers.data.chat) is its user: compile_template() and, around a render, budget().
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import operator
import re
import time
from collections.abc import Iterator
from datetime import datetime


class TemplateRefused(Exception):
    """raise_exception() in a template: it refuses the conversation."""


# A template (the tokenizer's, a hub folder's or a request's) is untrusted input: any one value it makes, and the text
# it renders, holds at most MAX_TEMPLATE_CHARS characters (list items, dict entries and digits count as characters too);
# all it makes together, at most MAX_TEMPLATE_TOTAL. Operations whose result can outgrow their operands (`*`, `**`,
# padding widths, join, replace, format, tojson's indent ...) are checked before they allocate; the rest within a small
# constant factor of their operands, right after.
MAX_TEMPLATE_CHARS = 1 << 23
MAX_TEMPLATE_TOTAL = 16 * MAX_TEMPLATE_CHARS
# ints stay within the digits Python writes out (sys.get_int_max_str_digits()): `*` and `**` on bigger ones are slow
MAX_TEMPLATE_INT_DIGITS = 4300
# the render in progress in this thread: [characters made so far, the monotonic deadline or None]
_spent = contextvars.ContextVar("chat_template_spent", default=None)


class TemplateTooLarge(ValueError):
    """A chat template made a value, or rendered a text, beyond the limits above."""


class TemplateTooSlow(ValueError):
    """A chat template ran past render_chat's max_seconds."""


def _on_time() -> None:
    """Past the deadline: stopped. Checked on every loop step and call, the only ways a template runs on (each other
    operation is bounded by the size limits), so a template stops within one loop body of its deadline."""
    spent = _spent.get()
    if spent is not None and spent[1] is not None and time.monotonic() > spent[1]:
        raise TemplateTooSlow(f"chat template: rendering took more than {spent[2]:g} s")


def _timed(iterable):
    for item in iterable:
        _on_time()
        yield item


def _too_large(what: str, size: int | None = None) -> TemplateTooLarge:
    got = "" if size is None else f" ({size} or more)"
    return TemplateTooLarge(f"chat template: {what} would exceed MAX_TEMPLATE_CHARS={MAX_TEMPLATE_CHARS} "
                            f"characters{got}")


def _size(value, limit: int = MAX_TEMPLATE_CHARS, per_item: int = 0) -> int:
    """The characters str() or tojson of `value` come to, about (quotes and escapes aside), counting a shared item each
    time it appears; stops counting past `limit` (so its cost is bounded by the limit, not by a nest of shared lists).
    per_item: characters added per item and nesting level (tojson's indent)."""
    total, stack = 0, [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if (n := _scalar_size(v)) is not None:
            total += n
            continue
        if isinstance(v, dict):
            v = [x for kv in v.items() for x in kv]
        elif isinstance(v, _ITEMS):
            v = [x for kv in v for x in kv]
        elif _is_namespace(v):  # jinja's namespace()
            stack.append((object.__getattribute__(v, "_Namespace__attrs"), depth))
            continue
        elif isinstance(v, range):
            total += 8 * len(v)
            v = ()
        elif not isinstance(v, list | tuple | set | frozenset | _KEYS | _VALUES):
            total += 16  # an object whose str() is its own (a macro, Undefined, a generator ...)
            continue
        total += 16 + len(v) * (2 + depth * per_item)  # 16: a nest of small lists costs its walk, so it counts
        for x in v:  # scalars here, containers later: a long list of strings costs one pass
            if (n := _scalar_size(x)) is None:
                stack.append((x, depth + 1))
            else:
                total += n
        if total > limit:
            return total
    return total


def _scalar_size(v) -> int | None:
    kind = type(v)
    if kind is str or kind is bytes:
        return len(v) + 2
    if kind is int:
        return v.bit_length() // 3 + 2  # its decimal digits, over-counted by at most a tenth
    if kind is bool or kind is float or v is None:
        return 5
    if isinstance(v, str):  # Markup
        return len(v) + 2
    return None


_KEYS, _VALUES, _ITEMS = type({}.keys()), type({}.values()), type({}.items())


def _is_namespace(value) -> bool:
    """Whether `value` is a jinja namespace() (ours included), whose items sit in its private `__attrs`."""
    return any(c.__name__ == "Namespace" and c.__module__ == "jinja2.utils" for c in type(value).__mro__)


def _charge(value, what: str):
    """`value` as a template made it: refused past MAX_TEMPLATE_CHARS, and counted towards MAX_TEMPLATE_TOTAL."""
    size = len(value) if type(value) is str else _size(value)
    if size > MAX_TEMPLATE_CHARS:
        raise _too_large(what, size)
    spent = _spent.get()
    if spent is not None:
        spent[0] += size
        if spent[0] > MAX_TEMPLATE_TOTAL:
            raise TemplateTooLarge(f"chat template: the values it makes add up to more than MAX_TEMPLATE_TOTAL="
                                   f"{MAX_TEMPLATE_TOTAL} characters")
    return value


def _ensure(size: int, what: str) -> None:
    if size > MAX_TEMPLATE_CHARS:
        raise _too_large(what, size)


def _check_numbers(args, what: str) -> None:
    """A number passed to a function is at most the limit: padding widths, repeat counts, lipsum's n ..."""
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_TEMPLATE_CHARS:
            raise _too_large(f"{what} with the argument {a:.3g}" if abs(a) < 1e300 else f"{what} with a huge number")


def _repeat_size(seq, times) -> int:
    if not isinstance(times, int) or times <= 0:
        return 0
    if isinstance(seq, str):
        return len(seq) * times
    return (_size(seq) - 16) * times + 16  # the items repeat, not the list


def _ensure_int(bits: int, what: str) -> None:
    if bits // 3 > MAX_TEMPLATE_INT_DIGITS:  # a third of the bits over-counts the decimal digits by a tenth
        raise TemplateTooLarge(f"chat template: {what} would make a number beyond MAX_TEMPLATE_INT_DIGITS="
                               f"{MAX_TEMPLATE_INT_DIGITS} digits")


# printf-style (`%`) widths and precisions, and str.format's: `%-10.3f`, `{:>40}`, `{0:.5}`
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_WIDTH = re.compile(r"\d+")


def _too_wide(digits: str) -> bool:
    return digits.isdigit() and (len(digits) > 18 or int(digits) > MAX_TEMPLATE_CHARS)


def _check_percent(fmt: str, args) -> None:
    for width, precision in _PERCENT_SPEC.findall(fmt):
        if _too_wide(width) or _too_wide(precision):
            raise _too_large("a `%` format width")
    _check_numbers(args if isinstance(args, tuple) else (args,), "a `%` format")
    _ensure(len(fmt) + _size(args), "a `%` format")


def _check_format(fmt: str, args, kwargs) -> None:
    from string import Formatter

    for _, _field, spec, _ in Formatter().parse(fmt):
        if spec and "{" in spec:  # the width would come from an argument, maybe as text: not checked, so refused
            raise TemplateTooLarge("chat template: a format spec may not take its width from an argument ({:{}})")
        if spec and any(_too_wide(n) for n in _FORMAT_WIDTH.findall(spec)):
            raise _too_large("a format width")
    _check_numbers((*args, *kwargs.values()), "format")
    _ensure(len(fmt) + _size((args, kwargs)), "a format")


_BINOPS = {"*": operator.mul, "**": operator.pow, "+": operator.add, "%": operator.mod}


def _binop(op: str, left, right):
    if op == "+" and type(left) is str and type(right) is str:  # the common case, kept cheap
        _ensure(len(left) + len(right), "`+`")
        return _charge(left + right, "`+`")
    if op == "*":
        if isinstance(left, int) and isinstance(right, int):
            _ensure_int(left.bit_length() + right.bit_length(), "`*`")
        elif isinstance(right, int):
            _ensure(_repeat_size(left, right), "`*`")
        elif isinstance(left, int):
            _ensure(_repeat_size(right, left), "`*`")
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _ensure_int(left.bit_length() * right, "`**`")
    elif op == "+":
        if isinstance(left, str) and isinstance(right, str):
            _ensure(len(left) + len(right), "`+`")
        elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
            _ensure(_size(left) + _size(right), "`+`")
    elif op == "%" and isinstance(left, str):
        _check_percent(left, right)
    return _charge(_BINOPS[op](left, right), f"`{op}`")


def _check_filter(name: str, value, args, kwargs) -> None:
    """Before a filter runs: its numbers within the limit, and the result of those whose output can outgrow their
    input (join's separator between every item, replace's new text for every match ...) predicted."""
    _on_time()
    _check_numbers((*args, *kwargs.values()), f"the {name} filter")
    if name in _SHALLOW_FILTERS and name != "list":
        return
    size = _size(value)
    if name == "join":
        sep = args[0] if args else kwargs.get("d", "")
        size += len(value) * _size(sep)
    elif name == "replace" and isinstance(value, str) and len(args) >= 2:
        size = len(value) + (value.count(str(args[0])) + 1) * _size(args[1])
    elif name == "indent":
        width = args[0] if args else kwargs.get("width", 4)
        size += (str(value).count("\n") + 1) * (_size(width) if isinstance(width, str) else width)
    elif name == "wordwrap":
        width = args[0] if args else kwargs.get("width", 79)
        wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring", "\n")
        size += (size // max(width, 1) + 1) * _size(wrap)
    elif name == "tojson":
        indent = args[0] if args else kwargs.get("indent")
        size = _size(value, per_item=(len(indent) if isinstance(indent, str) else indent or 0) + 2)
    elif name == "format":
        _check_percent(str(value), args or kwargs)
    elif name == "sum":
        size += _size(kwargs.get("start", args[1] if len(args) > 1 else 0))
    elif name == "list" and isinstance(value, str):
        size = 3 * len(value)  # a str of each character
    elif name in ("slice", "batch") and args and isinstance(args[0], int):
        size += 16 * args[0]  # that many lists (slice), or fill items (batch)
    _ensure(size, f"the {name} filter")


# filters whose result is no bigger than their input and that never turn a value into text, so checked only after
_SHALLOW_FILTERS = frozenset({
    "abs", "attr", "bool", "count", "d", "default", "dictsort", "first", "float", "groupby", "int", "items", "last",
    "length", "list", "map", "max", "min", "random", "reject", "rejectattr", "reverse", "round", "select", "selectattr",
    "sort", "unique"})
# filters that read all of an iterable's items anyway
_GATHERED_FILTERS = frozenset({"join", "sum", "slice", "batch"})


def _bounded_filter(name: str, fn):
    """The filter `fn` checked before and after it runs. It takes the context (as jinja passes it to filters marked so),
    which also keeps jinja from running it on constants while compiling, where no limit is checked."""
    from jinja2.utils import _PassArg, pass_context

    wants = _PassArg.from_obj(fn)

    @pass_context
    def run(context, value, *args, **kwargs):
        if name in _GATHERED_FILTERS and isinstance(value, Iterator):  # a map's, select's ... items gathered, so
            value = list(value)  # their size is known before they are joined
        _check_filter(name, value, args, kwargs)
        if wants is _PassArg.context:
            args = (context, value, *args)
        elif wants is _PassArg.eval_context:
            args = (context.eval_ctx, value, *args)
        elif wants is _PassArg.environment:
            args = (context.environment, value, *args)
        else:
            args = (value, *args)
        return _charge(fn(*args, **kwargs), f"the {name} filter")

    return run


def _check_call(fn, args: tuple, kwargs) -> tuple:
    """Before a function or method runs: its numbers within the limit, and str's joins, replaces and formats
    predicted. Returns the arguments, str.join's items gathered into a list (so their size is known first)."""
    _on_time()
    name = getattr(fn, "__name__", "")
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, str | bytes | int):  # center, ljust, zfill, expandtabs, to_bytes ... take a size
        _check_numbers((*args, *kwargs.values()), f"{name}()")
    if isinstance(owner, str):
        if name == "join" and args:
            items = args[0] if not isinstance(args[0], Iterator) else list(args[0])
            args = (items, *args[1:])
            if isinstance(items, list | tuple | set | frozenset | dict | str):
                _ensure(_size(items) + len(items) * len(owner), "str.join()")
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            _ensure(len(owner) + (owner.count(args[0]) + 1) * len(args[1]), "str.replace()")
        elif name == "expandtabs":
            width = args[0] if args else kwargs.get("tabsize", 8)
            _ensure(len(owner) + owner.count("\t") * (width if isinstance(width, int) else 8), "str.expandtabs()")
    elif name in ("format", "format_map") and hasattr(fn, "__wrapped__") and isinstance(fn.__wrapped__.__self__, str):
        fmt_args, fmt_kwargs = (args, kwargs) if name == "format" else ((), args[0] if args else {})
        _check_format(fn.__wrapped__.__self__, fmt_args, fmt_kwargs if isinstance(fmt_kwargs, dict) else {})
    return args


def _bounded_join(parts) -> str:
    """The text of a template (or of a macro, a {% set %} block ...): its parts counted as they come."""
    out, size = [], 0
    for part in parts:
        size += len(part) + 1  # an empty part still costs a list slot
        if size > MAX_TEMPLATE_CHARS:
            raise _too_large("the rendered text", size)
        out.append(part)
    return "".join(out)


def lipsum(n=5, html=True, min=20, max=100):  # noqa: A002 (jinja's names)
    """Jinja's lipsum with its paragraphs (up to `max` words of up to 12 characters each) bounded."""
    from jinja2.utils import generate_lorem_ipsum

    _ensure(n * max * 13, "lipsum()")
    return generate_lorem_ipsum(n, html, min, max)


@functools.cache
def _environment():
    from jinja2 import nodes  # jinja2 comes with torch
    from jinja2.compiler import CodeGenerator
    from jinja2.exceptions import SecurityError
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace

    def raise_exception(message: str) -> None:
        raise TemplateRefused(message)

    class Generation(Extension):
        """transformers' {% generation %}...{% endgeneration %} (it marks the assistant's tokens for training
        masks): renders its body as it is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    class TemplateNamespace(Namespace):
        """transformers' namespace(): a name starting with "_" is refused (SecurityError), at creation and on
        `{% set ns._x = ... %}`, so a template that works here works there (the sandbox hid such a name anyway)."""

        def __init__(*args, **kwargs):  # noqa: N805 (jinja's signature: `namespace(self=...)` still works)
            self, attrs = args[0], dict(*args[1:], **kwargs)
            for name in attrs:
                TemplateNamespace.check_name(name)
            Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace.check_name(name)
            Namespace.__setitem__(self, name, value)

        @staticmethod
        def check_name(name) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise SecurityError(f"chat templates cannot store underscore-prefixed attributes on a namespace, "
                                    f"got {name!r}")

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        import json  # transformers' options: templates pass separators=(",", ":") or sort_keys=true

        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class BoundedCodeGenerator(CodeGenerator):
        def visit_Concat(self, node, frame):  # `a ~ b`: checked before it joins (no sandbox hook covers it)
            self.write("environment.concat_values((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

        def visit_For(self, node, frame):  # each step of a loop checks the deadline (a recursive loop's calls do)
            if not node.recursive and not getattr(node, "timed", False):
                node.iter = nodes.Call(nodes.EnvironmentAttribute("timed_iter"), [node.iter], [], None, None,
                                       lineno=node.iter.lineno)
                node.timed = True
            return super().visit_For(node, frame)

        def visit_Getitem(self, node, frame):  # jinja slices `x[a:b]` without the environment: through it here
            if not isinstance(node.arg, nodes.Slice):
                return super().visit_Getitem(node, frame)
            self.write("environment.slice_of(")
            self.visit(node.node, frame)
            for part in (node.arg.start, node.arg.stop, node.arg.step):
                self.write(", ")
                if part is None:
                    self.write("None")
                else:
                    self.visit(part, frame)
            self.write(")")

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        """The sandbox with every value a template makes bounded (MAX_TEMPLATE_CHARS, MAX_TEMPLATE_TOTAL)."""

        code_generator_class = BoundedCodeGenerator
        intercepted_binops = frozenset({"*", "**", "+", "%"})
        concat = staticmethod(_bounded_join)  # the rendered text, and each macro's and {% set %} block's

        def call_binop(self, context, operator, left, right):
            return _binop(operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
            args = _check_call(__obj, args, kwargs)
            return _charge(super().call(__context, __obj, *args, **kwargs), f"{getattr(__obj, '__name__', 'a')}()")

        timed_iter = staticmethod(_timed)

        @staticmethod
        def slice_of(value, start, stop, step):
            return _charge(value[start:stop:step], "a slice")

        @staticmethod
        def concat_values(values):
            _ensure(sum(_size(v) for v in values), "`~`")
            return _charge("".join(map(str, values)), "`~`")

    # the settings transformers uses, so templates written for it render the same here; each {{ }} output is checked
    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, Generation],
                             finalize=_finalize)
    env.filters["tojson"] = tojson
    env.filters = {name: _bounded_filter(name, fn) for name, fn in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["lipsum"] = lipsum
    env.globals["namespace"] = TemplateNamespace
    return env


def _finalize(value) -> str:
    """A {{ }} output's text, checked before str() writes a list or dict out."""
    if isinstance(value, str):
        return value
    _ensure(_size(value), "an output")
    return _charge(str(value), "an output")


@functools.lru_cache(maxsize=8)
def compile_template(template: str):
    """The template compiled in the bounded sandbox (cached: the server renders one template for every request)."""
    return _environment().from_string(template)


def parse_template(template: str):
    """The template's Jinja syntax tree (jinja2.nodes), parsed by the sandbox's environment."""
    return _environment().parse(template)


@contextlib.contextmanager
def budget(max_seconds: float | None):
    """The size budget (MAX_TEMPLATE_TOTAL) of one render, and its deadline where max_seconds is given."""
    token = _spent.set([0, None if max_seconds is None else time.monotonic() + max_seconds, max_seconds])
    try:
        yield
    finally:
        _spent.reset(token)
