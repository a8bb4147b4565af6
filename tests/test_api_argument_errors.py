"""nl.load / nl.train / nl.generation_defaults given a wrong kind of argument: one line naming the argument, not
os.fspath's "expected str, bytes or os.PathLike object, not int"."""

from pathlib import Path

import pytest

import neurallayers as nl

CONFIG = {"model": {"preset": "demo"}}


@pytest.mark.parametrize("call, message", [
    (lambda: nl.load(5), r"^path=5: must be a path \(a str or pathlib\.Path\), got int$"),
    (lambda: nl.load(None), r"^path=None: must be a path .*got NoneType$"),
    (lambda: nl.generation_defaults(["runs/a"]), r"^path=\['runs/a'\]: must be a path .*got list$"),
    (lambda: nl.train(CONFIG, None), r"^out_dir=None: must be a path .*got NoneType$"),
    (lambda: nl.train(CONFIG, "runs/x", resume=5), r"^resume=5: must be a path .*got int$"),
])
def test_a_wrong_kind_of_argument_is_named(call, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        call()
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_paths_of_every_kind_are_still_taken(tmp_path):
    # a str and a Path reach the folder check: neither is refused as a wrong kind
    for path in (str(tmp_path), Path(tmp_path)):
        with pytest.raises(ValueError, match="has neither config.yaml"):
            nl.load(path)
