"""Type checks shared by the config dataclasses (ModelConfig, TrainConfig, DataConfig, GenerationConfig).

One spelling of "an int that is not a bool" and of "a finite number", and one message for a field of the wrong
type: `Class.field=value: expected <what the annotation allows>`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Literal, get_args, get_origin, get_type_hints


@functools.cache
def field_types(klass: type) -> dict[str, Any]:
    """get_type_hints(klass), read once a class (not to be changed): it takes about 0.3 ms, and each config built
    read it three times (types, float strings, ints in float fields), most of a ModelConfig's construction."""
    return get_type_hints(klass)


def is_int(value: Any) -> bool:
    """An int, not a bool (True is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_integral(value: Any) -> bool:
    """An integer, a numpy one too, not a bool: a count or an index a caller may have computed with numpy."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float, not a bool, that float() takes: an int past float's range (`lr: 1e400` written out as
    digits) raised OverflowError from the checks that compare it."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def is_finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def check_bool(value: Any, name: str) -> bool:
    """`value`, a switch given as an argument: "no" or "false" is truthy, and was read as on."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: must be True or False")
    return value


def plain(value: Any) -> Any:
    """`value` with numpy scalars made Python ones, inside lists and dicts too: a sweep's np.int64 was refused as
    "expected int", and an np.float64 passed as a float and then failed YAML's dump of config.yaml."""
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:  # a scalar; numpy is not imported
        return value.item()
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    return value


def plain_fields(obj: Any) -> None:
    """Every field of the dataclass `obj` made `plain`."""
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, plain(getattr(obj, f.name)))


def check_types(obj: Any) -> None:
    """Each field of the dataclass `obj` (numpy scalars made plain first) against its annotation.

    Raises:
        ValueError: `Class.field=value: expected ...`, naming what the annotation allows.
    """
    plain_fields(obj)
    hints = field_types(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not matches(value, hints[f.name]):
            allowed = describe(hints[f.name])
            raise ValueError(
                f"{type(obj).__name__}.{f.name}={value!r}: expected {allowed}{spelling_note(value, allowed)}"
            )


def spelling_note(value: object, allowed: str) -> str:
    """How YAML (a config file, a --section.field override) spells what was meant: `None` and `1` read as a string
    and an int, and "expected int or None" for a typed None contradicted what the user wrote."""
    if isinstance(value, str) and value.lower() == "none" and allowed.endswith("None"):
        return " (YAML writes None as null)"
    if allowed == "bool" and isinstance(value, int | str):
        return " (true or false)"
    if is_int(value) and not is_number(value):
        return " (this int is past float's range)"
    return ""


def matches(value: Any, tp: Any) -> bool:
    origin = get_origin(tp)
    if origin is Literal:
        return value in get_args(tp)
    if origin is list:
        (item,) = get_args(tp)
        return isinstance(value, list) and all(matches(v, item) for v in value)
    if tp is dict or origin is dict:
        return isinstance(value, dict)
    if origin is not None:  # X | Y (| None)
        return any(value is None if a is type(None) else matches(value, a) for a in get_args(tp))
    if tp is float:
        return is_number(value)
    if tp is int:
        return is_int(value)
    if tp in (bool, str):
        return isinstance(value, tp)
    return True


def describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {describe(get_args(tp)[0])}"
    if origin is dict:
        return "dict"
    if origin is not None:
        return " or ".join(describe(a) for a in get_args(tp))
    return "None" if tp is type(None) else tp.__name__
