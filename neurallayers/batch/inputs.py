"""The input JSONL: one record per line, checked whole before any work (every error names the file and line)."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from neurallayers.checks import is_int
from neurallayers.data.corpora import lone_surrogate

TEXT_KEYS = ("prompt", "text")
# Settings one generation line may override (the rest of GenerationConfig stays the run's).
LINE_PARAMS = ("max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
               "presence_penalty", "frequency_penalty", "no_repeat_ngram_size", "stop", "seed", "ignore_eos")


@dataclass
class BatchItem:
    """One input record: its 0-based index among the records, 1-based line number, id, text and overrides."""

    index: int
    line: int
    id: str | int
    text: str
    params: dict[str, Any]

    @property
    def key(self) -> str:
        return json.dumps(self.id)  # 1 and "1" are different ids


def read_inputs(path: str | os.PathLike, *, mode: Literal["generate", "embed"]) -> list[BatchItem]:
    """Parse and check the input JSONL; every error names the file and line.

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad JSON, a missing text or an empty prompt, an unknown or bad field, a duplicate id, no records.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    allowed = ("id", *TEXT_KEYS, *(LINE_PARAMS if mode == "generate" else ()))
    items: list[BatchItem] = []
    seen: dict[str, int] = {}
    for n, where, record in json_lines(path, example='{"prompt": "..."}'):
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object like {{\"prompt\": \"...\"}}, "
                             f"got {type(record).__name__}")
        _check_unicode(record, where)
        for key in record:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                did = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ValueError(f"{where}: unknown field {key!r}{did}; allowed: {', '.join(allowed)}")
        texts = [k for k in TEXT_KEYS if k in record]
        if len(texts) != 1:
            raise ValueError(f"{where}: needs exactly one of 'prompt' or 'text', got {texts or 'neither'}")
        text = record[texts[0]]
        # a blank text embeds as sentence-transformers embeds it (nl.embed does too); a blank prompt is a mistake
        if not isinstance(text, str) or (mode == "generate" and not text.strip()):
            need = "a non-empty string" if mode == "generate" else "a string"
            raise ValueError(f"{where}: {texts[0]!r} must be {need}, got {text!r}")
        rid = record.get("id", n)
        if not (isinstance(rid, str) or is_int(rid)):
            raise ValueError(f"{where}: 'id' must be a string or an integer, got {rid!r}")
        # as the server reads them: null is the default, and one stop string may stand for a list of it
        params = {k: v for k, v in record.items() if k in LINE_PARAMS and v is not None}
        if is_int(params.get("seed")) and params["seed"] == -1:
            # the server's (and vLLM's) "no seed": every such line drew the same numbers from seed -1, equal
            # prompts giving one sample where the server gives independent ones; it takes the line's default
            del params["seed"]
        if is_int(params.get("top_k")) and params["top_k"] == -1:
            params["top_k"] = 0  # the server's (and vLLM's) other spelling of "every token": it was refused here
        if isinstance(params.get("stop"), str):
            params["stop"] = [params["stop"]]
        item = BatchItem(index=len(items), line=n, id=rid, text=text, params=params)
        if item.key in seen:
            raise ValueError(f"{where}: id {rid!r} is already used on line {seen[item.key]}; ids must be unique")
        seen[item.key] = n
        items.append(item)
    if not items:
        raise ValueError(f"{path} holds no records: give one JSON object per line, e.g. {{\"prompt\": \"Hello\"}}")
    return items


def _check_unicode(record: dict, where: str) -> None:
    """JSON may escape half a surrogate pair ("\\ud83d"): no tokenizer encodes it and no UTF-8 output holds it (an
    id with one failed only when its result was written, after the work)."""
    for key, value in record.items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and (bad := lone_surrogate(text)):
                raise ValueError(f"{where}: {key!r} has a lone surrogate (U+{ord(bad[0]):04X}) at position "
                                 f"{bad.start()}: not valid Unicode text")


def _numbered_lines(f) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of a binary file's lines, ended by "\n", "\r\n" or a lone "\r" as Python's universal
    newlines and the corpus reader (data.text_files.jsonl_lines) end them: a file of CR line ends was one line of
    "not valid JSON (Extra data)". JSON holds no raw CR inside a value, so a CR ends a line."""
    n = 0
    for raw in f:
        body = raw[:-2] if raw.endswith(b"\r\n") else raw.removesuffix(b"\n")
        for piece in body.split(b"\r"):
            n += 1
            yield n, piece


def json_lines(path: Path, *, example: str) -> Iterator[tuple[int, str, Any]]:
    """(line number, where, value) for each non-blank line of the JSON-lines file `path`, `where` naming the file and
    the line.

    Raises:
        ValueError: a line that is not UTF-8 or not JSON (pointing to `example`, a line's shape, where the line does
            not even start like an object: a plain-text prompt file is the likely cause).
    """
    with path.open("rb") as f:
        for n, raw in _numbered_lines(f):
            where = f"{path} line {n}"
            try:
                line = raw.decode("utf-8-sig")  # a BOM (Notepad writes one) before the first line is not JSON
            except UnicodeDecodeError:
                raise ValueError(f"{where}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                yield n, where, json.loads(line)
            except json.JSONDecodeError as e:
                hint = "" if line.lstrip().startswith("{") else f"; each line is a JSON object such as {example}"
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno}){hint}") from None
            except ValueError as e:  # an integer of over 4300 digits (Python's limit): the error named no line
                raise ValueError(f"{where}: {e}") from None
