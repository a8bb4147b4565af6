"""eval, generate and train --resume on a run whose config.yaml an older version wrote: a train value refused since
(an empty sample prompt) only warns where the run is used, and is refused by a resume with what to do; an error in
the run's own config.yaml names its key as the file writes it (`run/config.yaml: model.n_embd=...`), not a Python
class field (`ModelConfig.n_embd=...`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from nl_cli_helpers import assert_user_error, in_process, tiny_char_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return tiny_char_run(tmp_path_factory.mktemp("verbs"))


def edited(run: Path, root: Path, section: str, **fields) -> Path:
    """A copy of `run` (and of its token cache) with `fields` of its config.yaml's `section` changed."""
    shutil.copytree(run.parent / ".nlcache", root / ".nlcache", dirs_exist_ok=True)
    shutil.copytree(run, root / "old")
    saved = yaml.safe_load((root / "old" / "config.yaml").read_text())
    saved[section].update(fields)
    (root / "old" / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    return root / "old"


@pytest.mark.parametrize("verb", [["eval", "--no-progress"], ["generate", "To", "--temperature", "0",
                                                             "--max-new-tokens", "6"], ["info"]],
                         ids=["eval", "generate", "info"])
def test_a_value_refused_since_warns_and_the_verb_gives_the_unedited_runs_output(verb, trained, tmp_path,
                                                                                 monkeypatch):
    edited(trained, tmp_path, "train", sample_prompts=[""])
    expected = in_process(verb[0], str(trained), *verb[1:], cwd=tmp_path, monkeypatch=monkeypatch)
    with pytest.warns(UserWarning) as caught:
        got = in_process(verb[0], "old", *verb[1:], cwd=tmp_path, monkeypatch=monkeypatch)
    assert got.returncode == 0 == expected.returncode, got.stderr
    assert got.stdout == expected.stdout and got.stdout.strip()
    assert {str(w.message).split(": a sample")[0] for w in caught} == {"old/config.yaml: train.sample_prompts[0]=''"}


def test_resume_refuses_the_value_saying_what_to_do_and_an_override_resumes(trained, tmp_path, monkeypatch):
    old = edited(trained, tmp_path, "train", sample_prompts=[""])
    proc = in_process("train", "--out", "old", "--resume", "--no-progress", cwd=tmp_path, monkeypatch=monkeypatch)
    assert_user_error(proc, "old/config.yaml: train.sample_prompts[0]='': a sample prompt needs",
                      "to resume, fix train.sample_prompts in old/config.yaml, or give --train.sample_prompts VALUE")
    proc = in_process("train", "--out", "old", "--resume", "--train.sample_prompts", "[x]", "--train.max_steps", "3",
                      "--no-progress", cwd=tmp_path, monkeypatch=monkeypatch)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((old / "config.yaml").read_text())["train"]["sample_prompts"] == ["x"]


@pytest.mark.parametrize("verb", [["eval"], ["generate", "To"], ["chat"], ["serve", "--port", "0"], ["info"],
                                  ["convert", "hf"]], ids=["eval", "generate", "chat", "serve", "info", "convert"])
def test_a_bad_model_field_of_the_runs_config_is_named_as_the_file_writes_it(verb, trained, tmp_path, monkeypatch):
    edited(trained, tmp_path, "model", n_head=3)
    proc = in_process(verb[0], "old", *verb[1:], cwd=tmp_path, monkeypatch=monkeypatch)
    assert_user_error(proc, "old/config.yaml: model.n_embd=64: must be divisible by n_head=3")
    assert "ModelConfig" not in proc.stderr
