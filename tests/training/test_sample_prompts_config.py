"""train.sample_prompts: an empty prompt is refused when the config is made, naming its index; it was accepted, and
only after training did sampling fail ("prompt 0 is empty") and write no samples for any prompt. Whitespace is text
generate() accepts (the default prompt is "\\n"), so it stays allowed."""

from __future__ import annotations

import contextlib
import io

import pytest
from nl_train_helpers import tiny_run

from neurallayers.__main__ import main
from neurallayers.training import RunConfig, TrainConfig, fit


@pytest.mark.parametrize(("prompts", "index"), [(["", "Once"], 0), (["Once", ""], 1), ([""], 0), (["a", "b", ""], 2)])
def test_an_empty_prompt_is_refused_by_index(prompts, index):
    with pytest.raises(ValueError, match=rf"^TrainConfig\.sample_prompts\[{index}\]='': a sample prompt needs at "
                                         r"least one character"):
        TrainConfig(sample_prompts=prompts)


def test_a_yaml_config_names_the_field():
    with pytest.raises(ValueError, match=r"sample_prompts\[0\]=''"):
        RunConfig.from_dict({"model": {"preset": "tiny"}, "train": {"sample_prompts": ["", "Once"]}})


def test_the_cli_names_the_override(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path / "cache"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["train", "--preset", "tiny", "--train.sample_prompts", '["", Once]', "--out", "run"])
        except SystemExit as e:
            code = e.code
    assert code == 2
    assert err.getvalue().startswith("neurallayers train: error: --train.sample_prompts[0]='': a sample prompt needs")
    assert not (tmp_path / "run").exists()


def test_whitespace_prompts_are_sampled(tmp_path):
    """generate() is the oracle of what a prompt may be: whitespace prompts get their samples written."""
    run = tiny_run(tmp_path, max_steps=2, eval_interval=0, save_interval=0, sample_prompts=[" ", "\n", "the"],
                   sample_tokens=4)
    fit(run, tmp_path / "run", progress=False)
    samples = (tmp_path / "run/samples.txt").read_text()
    assert all(f"=== prompt: {p!r}" in samples for p in (" ", "\n", "the"))


def test_no_prompts_still_mean_no_samples(tmp_path):
    assert TrainConfig(sample_prompts=[]).sample_prompts == []
