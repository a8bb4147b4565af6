"""Extra arguments after a '--' that comes before every positional: the one named is the one too many."""

from __future__ import annotations

from pathlib import Path

from nl_cli_helpers import assert_user_error, in_process


def test_an_option_like_extra_after_a_leading_double_dash_is_the_one_named(tmp_path: Path, monkeypatch):
    """`convert -- -a -b --overwrite`: after '--', --overwrite is a third positional, one too many; the intermixed
    parse, which drops that '--', took it for the flag and said "the following arguments are required: src, dst"."""
    cases = {("convert", "--", "-a", "-b", "--overwrite"): "--overwrite",
             ("convert", "--overwrite", "--", "-a", "-b", "-c"): "-c"}
    for args, extra in cases.items():
        assert_user_error(in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch),
                          f"unrecognized arguments: {extra} (see neurallayers {args[0]} --help)")
