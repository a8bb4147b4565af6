"""Records of JSON-lines and JSON-array files: the text of each, by its field, with errors that name the line or item.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

from neurallayers.data.text_checks import lone_surrogate
from neurallayers.data.text_files import jsonl_lines, read_text

# A JSON array (or one pretty-printed object) saved as .jsonl: said, with the one-line conversion.
_WHOLE_JSON = ("; JSON lines holds one object per line, and this looks like one whole JSON document "
               "(an array converts with: jq -c '.[]' FILE > FILE.jsonl)")

# A record that runs past a lone CR: that ends a line, as in Python's text reading (a CR-only file's lines).
_LONE_CR = ("; its line ends at a lone carriage return (\\r), which ends a line as \\n does: keep each record on "
            "one line")


def jsonl_texts(path: Path, rel: str, text_field: str) -> Iterator[tuple[str, str]]:
    for lineno, line in jsonl_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            hint = _WHOLE_JSON if lineno == 1 and line.strip() in ("[", "{") else ""
            if not hint and line.endswith("\r") and e.pos >= len(line.rstrip()):  # cut short by a lone CR
                hint = _LONE_CR
            raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg}){hint}") from None
        except (ValueError, RecursionError) as e:
            raise ValueError(f"{path}:{lineno}: {_past_limits(e)}; fix or drop the line") from None
        if isinstance(record, list):  # "found list" sent the user looking for a field
            hint = _WHOLE_JSON if lineno == 1 else ""
            raise ValueError(f"{path}:{lineno}: a JSON array, not an object with a {text_field!r} field{hint}")
        yield f"{rel}:{lineno}", _record_text(record, f"{path}:{lineno}", text_field, "line")


def json_texts(path: Path, rel: str, text_field: str) -> Iterator[tuple[str, str]]:
    """A .json file as the `datasets` library reads one: an array of records (Alpaca's), else JSON lines by that
    name. It was read as one text document, so training learned the JSON syntax around the text."""
    text = read_text(path)
    if not text.lstrip().startswith("["):
        yield from jsonl_texts(path, rel, text_field)
        return
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:  # neither says where
        raise ValueError(f"{path}: {_past_limits(e)}; fix or drop that item") from None
    for i, record in enumerate(records):
        yield f"{rel}[{i}]", _record_text(record, f"{path}: item {i}", text_field, "item")


def _past_limits(error: ValueError | RecursionError) -> str:
    """Why valid JSON was not read: Python's reader stops at integers of over sys.get_int_max_str_digits() digits and
    at nesting about as deep as the recursion limit, with errors that named no file (and a traceback for nesting)."""
    if isinstance(error, RecursionError):
        return f"a value nested too deeply for Python's JSON reader (about {sys.getrecursionlimit()} levels at most)"
    reason = str(error).split(";")[0]  # not its advice to call sys.set_int_max_str_digits()
    return f"a number too long for Python's JSON reader ({reason})"


def _record_text(record: object, where: str, text_field: str, unit: str) -> str:
    """A record's text field, or a ValueError that names the record (`where`) and what it holds instead."""
    if isinstance(record, dict) and text_field in record and not isinstance(record[text_field], str):
        # "no string field 'text' (found ['text'])" would send the user looking for the wrong thing
        raise ValueError(f"{where}: field {text_field!r} holds {_json_type(record[text_field])}, "
                         f"not a string; fix or drop the {unit}, or choose another field with text_field=")
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        fields = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{where}: no string field {text_field!r} (found {fields}); "
                         f"choose another with text_field= (CLI: --data.text_field, eval --text-field)")
    text = record[text_field]
    # JSON may escape half of a surrogate pair ("\ud83d"), which no tokenizer can encode.
    if bad := lone_surrogate(text):
        raise ValueError(f"{where}: {text_field!r} contains a lone surrogate (U+{ord(bad[0]):04X}), "
                         f"which is not valid Unicode text; fix or drop the {unit}")
    return text


def _json_type(value: object) -> str:
    """`value`'s JSON type, as the user wrote it in the file: null, a boolean, a number, an object, an array."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    return "an object" if isinstance(value, dict) else "an array"
