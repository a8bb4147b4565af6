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


def test_an_override_value_that_is_not_a_str_is_named_before_anything_is_written(tmp_path, monkeypatch):
    """overrides=["--train.max_steps", 5]: "AttributeError: 'int' object has no attribute 'read'" from YAML's reader."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^overrides\[1\]=5: each item must be a str, as typed on the command line "
                                         r"\('5'\)$"):
        nl.train(CONFIG, "runs/x", overrides=["--train.max_steps", 5])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("call, message", [
    (lambda: nl.generation_defaults(".", sampling="false"), r"^sampling='false': must be True or False$"),
    (lambda: nl.generation_defaults(".", sampling=None), r"^sampling=None: must be True or False$"),
    (lambda: nl.train(CONFIG, "runs/x", progress="no"), r"^progress='no': must be True or False$"),
    (lambda: nl.load(".", allow_pickle="no"), r"^allow_pickle='no': must be True or False$"),
])
def test_a_switch_that_is_not_a_bool_is_refused(call, message, tmp_path, monkeypatch):
    """sampling="false" is truthy: a folder whose generation_config.json says do_sample false gave its sampling
    temperature instead of greedy's 0; progress="no" showed the bar; allow_pickle="no" passed a run's load."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "generation_config.json").write_text('{"do_sample": false, "temperature": 0.6}')
    with pytest.raises(ValueError, match=message):
        call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generation_config.json"]  # nothing written


def test_a_path_starting_with_a_tilde_is_the_home_folder_as_in_a_config(tmp_path, monkeypatch):
    """A config's init_from, data.source and tokenizer read `~/` as the home folder, but nl.train(cfg, "~/runs/x")
    made a folder named "~" in the working folder (one `rm -rf ~` away from the real one) and nl.load("~/runs/x")
    found nothing."""
    import neurallayers.training.trainer as trainer
    from neurallayers.config import ModelConfig
    from neurallayers.data import Tokenizer
    from neurallayers.interop import save_hf

    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    save_hf(nl.build_model(ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)),
            Tokenizer.train_char(["the quick brown fox"]), home / "hf")
    model, _ = nl.load("~/hf")
    assert model.config.n_embd == 16 and nl.generation_defaults(Path("~/hf")) == {}
    assert nl.convert("~/hf", "~/run", to="run") == home / "run" and nl.load("~/run")[0].config.n_embd == 16
    given = {}
    monkeypatch.setattr(trainer, "fit", lambda run, out_dir, **kw: given.update(out=out_dir, **kw))
    nl.train(CONFIG, "~/runs/x", resume="~/runs/x/checkpoints/step-2", progress=False)
    assert Path(given["out"]) == home / "runs" / "x"
    assert Path(given["resume"]) == home / "runs" / "x" / "checkpoints" / "step-2"
    assert not list(work.iterdir())  # no folder named "~"
