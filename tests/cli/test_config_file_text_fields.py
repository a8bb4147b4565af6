"""A --config file reads a text field (or list of texts) as the text written, as an override does: YAML 1.1 read
`sample_prompts: [yes, 2024]` as [True, 2024] and `source: 2024` as an int. A count is the decimal written (`010` is
not octal 8, `1:30` not base-60 90); numbers and bools typed so stay numbers and bools."""

from __future__ import annotations

import pytest
import yaml
from nl_cli_helpers import TEXT, assert_user_error, in_process

from neurallayers.training.config import RunConfig, apply_overrides

FILE = """\
model: {preset: tiny, name: 2024}
train:
  sample_prompts: [yes, 2024, "no", 1.5, null, off]
  max_steps: 010
  lr: 1e-3
  compile: no
  init_from: null
  eval_batches: 0x10
data: {source: 2024, cache_dir: yes, vocab_size: 0400}
"""
# the same values as overrides, read by apply_overrides: the oracle of how a typed value reads
OVERRIDES = ["--model.preset", "tiny", "--model.name", "2024",
             "--train.sample_prompts", '[yes, 2024, "no", 1.5, null, off]', "--train.max_steps", "010",
             "--train.lr", "1e-3", "--train.compile", "no", "--train.init_from", "null", "--train.eval_batches", "0x10",
             "--data.source", "2024", "--data.cache_dir", "yes", "--data.vocab_size", "0400"]


def test_a_file_reads_each_field_as_an_override_does(tmp_path):
    (tmp_path / "my.yaml").write_text(FILE)
    run = RunConfig.from_yaml(tmp_path / "my.yaml")
    assert run.train.sample_prompts == ["yes", "2024", "no", "1.5", "null", "off"]
    assert (run.data.source, run.data.cache_dir, run.model.name) == ("2024", "yes", "2024")
    assert (run.train.max_steps, run.train.eval_batches, run.data.vocab_size) == (10, 16, 400)
    assert run.train.lr == 1e-3 and run.train.compile is False and run.train.init_from is None
    assert run == RunConfig.from_dict(apply_overrides({}, OVERRIDES))


@pytest.mark.parametrize(("line", "said"), [("max_steps: 1:30", "train.max_steps='1:30': expected int"),
                                            ("lr: 1:30.5", "train.lr='1:30.5': expected float"),
                                            ("compile: maybe", "train.compile='maybe': expected bool")])
def test_a_base_60_number_or_a_bad_bool_is_refused_as_written(line, said, tmp_path):
    (tmp_path / "my.yaml").write_text(f"model: {{preset: tiny}}\ntrain: {{{line}}}\n")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'my.yaml'}: {said}"):
        RunConfig.from_yaml(tmp_path / "my.yaml")


def test_quoted_text_and_an_empty_file_read_as_before(tmp_path):
    (tmp_path / "my.yaml").write_text("model: {preset: tiny}\ntrain: {sample_prompts: ['yes', \"2024\"]}\n")
    assert RunConfig.from_yaml(tmp_path / "my.yaml").train.sample_prompts == ["yes", "2024"]
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ValueError, match="needs a 'model' section"):
        RunConfig.from_yaml(tmp_path / "empty.yaml")


def test_the_cli_trains_with_the_text_written(tmp_path, monkeypatch):
    (tmp_path / "text.txt").write_text(TEXT)
    (tmp_path / "my.yaml").write_text(
        "model: {preset: tiny, block_size: 16, n_layer: 1}\n"
        "train: {sample_prompts: [yes, 2024], max_steps: 01, batch_size: 2, eval_interval: 0, eval_batches: 1,\n"
        "        warmup_steps: 0, sample_tokens: 0}\n"
        f"data: {{source: {tmp_path / 'text.txt'}, tokenizer: char}}\n")
    proc = in_process("train", "--config", "my.yaml", "--out", "run", "--no-progress", cwd=tmp_path,
                      monkeypatch=monkeypatch)
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["sample_prompts"] == ["yes", "2024"] and saved["train"]["max_steps"] == 1


def test_the_cli_names_a_field_of_the_file_it_refuses(tmp_path, monkeypatch):
    (tmp_path / "my.yaml").write_text("model: {preset: tiny}\ntrain: {sample_prompts: [yes, '']}\n")
    proc = in_process("train", "--config", "my.yaml", "--out", "run", cwd=tmp_path, monkeypatch=monkeypatch)
    assert_user_error(proc, "my.yaml: train.sample_prompts[1]='': a sample prompt needs")
