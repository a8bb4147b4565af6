"""`neurallayers generate`'s flags become the GenerationConfig they name, and a search says which sampling flags it
does not use."""

from __future__ import annotations

import argparse

import pytest

from neurallayers.cli.generate import add_arguments, generation_config


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["run", "hi", *argv])


@pytest.mark.parametrize(
    ("argv", "note"),
    [
        (["--num-beams", "2", "--top-p", "0.5"], "deterministic: --top-p is not used"),
        (["--num-beams", "2", "--top-k", "5", "--temperature", "0.7"], "deterministic: --temperature and --top-k are"),
        (["--num-beams", "2", "--min-p", "0.1", "--top-k", "5", "--top-p", "0.5"], "--top-k, --top-p and --min-p are"),
        (["--penalty-alpha", "0.5", "--top-k", "4", "--min-p", "0.2"], "deterministic: --min-p is not used"),
        (["--penalty-alpha", "0.5", "--top-k", "4"], None),  # contrastive search's top-k is its candidate count
        (["--num-beams", "2", "--top-p", "1", "--temperature", "0"], None),  # off values are no request
        (["--top-p", "0.5"], None),
    ],
)
def test_a_search_names_every_sampling_flag_it_does_not_use(argv: list[str], note: str | None, capsys) -> None:
    """--num-beams 2 --top-p 0.5 ignored the top-p without a word: the note named only --temperature."""
    config = generation_config(_parse(*argv))
    err = capsys.readouterr().err
    if note is None:
        assert err == ""
    else:
        assert note in err and err.count("\n") == 1
    top_p = argv[argv.index("--top-p") + 1] if "--top-p" in argv else "1"
    assert config.top_p == float(top_p)  # kept as given: generate() leaves it out for a search
