"""Batch input lines that Python's JSON reader refuses in its own words."""

from __future__ import annotations

import pytest

from neurallayers.batch import read_inputs


def test_a_number_too_long_for_python_names_its_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "fine"}\n{"id": %s, "prompt": "the"}\n' % ("9" * 5000))
    with pytest.raises(ValueError, match=r"prompts\.jsonl line 2: .*4300 digits"):
        read_inputs(path, mode="generate")
