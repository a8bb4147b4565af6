"""Batch input lines that Python's JSON reader refuses in its own words."""

from __future__ import annotations

import pytest

from neurallayers.batch import read_inputs


def test_a_number_too_long_for_python_names_its_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "fine"}\n{"id": %s, "prompt": "the"}\n' % ("9" * 5000))
    with pytest.raises(ValueError, match=r"prompts\.jsonl line 2: .*4300 digits"):
        read_inputs(path, mode="generate")


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_lines_end_as_pythons_universal_newlines_end_them(tmp_path, end):
    """A file of CR line ends (classic Mac, some exports) was one line of "not valid JSON (Extra data)"; the corpus
    reader already took it."""
    records = ['{"prompt": "a"}', "", '\ufeff{"id": "b", "prompt": "b"}', '{"prompt": "c\\rd"}']
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(end.join(records).encode() + end.encode())
    assert [(i.text, i.line) for i in read_inputs(path, mode="generate")] == [("a", 1), ("b", 3), ("c\rd", 4)]
    with open(path, encoding="utf-8", newline=None) as f:  # the oracle: Python's own lines
        assert len(f.read().splitlines()) == 4
    path.write_bytes(end.join([*records, '{"prompt": }']).encode())
    with pytest.raises(ValueError, match=r"prompts\.jsonl line 5: not valid JSON"):
        read_inputs(path, mode="generate")
