"""`neurallayers convert`'s own flags: --max-shard-size read as its help and transformers read a size."""

from __future__ import annotations

import pytest

from neurallayers.__main__ import build_verb_parser, main


def shard_bytes(*words: str) -> int:
    _, parser = build_verb_parser("convert")
    return parser.parse_args(["src", "dst", *words]).max_shard_size


@pytest.mark.parametrize("size", ["500MB", "2GB", "64KB", "1GiB", "100MiB", "3KiB", "1gib", "2mib"])
def test_max_shard_size_takes_a_size_with_its_unit_as_transformers_reads_it(size):
    # transformers users write save_pretrained(max_shard_size="2GB"); "2GB" was refused as "invalid int value"
    from transformers.utils.hub import convert_file_size_to_int

    assert shard_bytes("--max-shard-size", size) == convert_file_size_to_int(size)


def test_a_plain_max_shard_size_is_mb_as_its_help_says():
    # "largest HF weight shard, in MB": 100 wrote shards of up to 104,857,600 bytes (MiB), past a 100 MB limit
    from transformers.utils.hub import convert_file_size_to_int

    assert shard_bytes("--max-shard-size", "100") == convert_file_size_to_int("100MB") == 100 * 10**6


@pytest.mark.parametrize("size", ["0", "-1", "1.5GB", "2TB", "big", "500mb"])
def test_a_bad_max_shard_size_is_one_line_naming_it(size, capsys):
    # 500mb is 500 megabits to transformers (62.5 MB), refused rather than read either way
    with pytest.raises(SystemExit) as stopped:
        shard_bytes(f"--max-shard-size={size}")
    assert stopped.value.code == 2
    assert f"argument --max-shard-size: {size!r}: " in capsys.readouterr().err


def test_convert_is_given_the_bytes_the_flag_names(tmp_path, monkeypatch):
    import importlib

    interop_convert = importlib.import_module("neurallayers.interop.convert")  # the package names its function so
    seen = {}
    monkeypatch.setattr(interop_convert, "convert", lambda src, dst, **kwargs: seen.update(kwargs) or dst)
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "hf"), "--max-shard-size", "2GB"]) == 0
    assert seen["max_shard_size"] == 2 * 10**9
