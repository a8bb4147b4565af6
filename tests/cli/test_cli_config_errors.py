"""A bad run-config value named as the user gave it: `--train.lr=-1` for an override, `config.yaml: train.lr=-1` for a
field of the --config file, the verb's own flag (`prepare --vocab-size`), not `TrainConfig.lr=-1` (the Python API's
name, which no command line has). And override values of text fields kept as typed."""

from __future__ import annotations

from pathlib import Path

import pytest
from nl_cli_helpers import in_process

from neurallayers.__main__ import build_verb_parser

FILES = {
    "config.yaml": "model:\n  preset: tiny\ntrain:\n  lr: -1\n",
    "rope.yaml": "model:\n  preset: tiny\n  rope_scaling: {type: linear, factor: 0}\n",
    "run/config.yaml": "model:\n  preset: tiny\n  n_layer: 0\n",  # a run's saved config, read by --resume
}


@pytest.mark.parametrize(("args", "said"), [
    (["train", "--preset", "tiny", "--train.lr", "-1"], "--train.lr=-1: must be > 0"),
    (["train", "--preset", "tiny", "--train.lr=-1"], "--train.lr=-1: must be > 0"),
    (["train", "--preset", "tiny", "--model.n_layer", "0"], "--model.n_layer=0: must be >= 1"),
    (["train", "--preset", "tiny", "--data.vocab_size", "3"],
     "--data.vocab_size=3: must be >= 257 for byte-level BPE, or None"),
    (["train", "--preset", "tiny", "--data.split", "bogus"],
     "--data.split='bogus': expected one of 'documents', 'tail'"),
    (["train", "--preset", "tiny", "--train.min_lr", "0.5"],
     "--train.min_lr=0.5: must be in [0, lr=0.001], or None (lr / 10, at most 1e-4)"),
    (["train", "--preset", "tiny", "--model.position", "rope", "--model.rope_scaling.type", "linear",
      "--model.rope_scaling.factor", "0"], "--model.rope_scaling.factor=0: must be a finite number >= 1"),
    # from the file, unless an override (which wins) gave the value
    (["train", "--config", "config.yaml"], "config.yaml: train.lr=-1: must be > 0"),
    (["train", "--config", "config.yaml", "--train.lr", "-2"], "--train.lr=-2: must be > 0"),
    (["train", "--config", "rope.yaml"],
     "rope.yaml: model.rope_scaling={'type': 'linear', 'factor': 0}: needs position='rope'"),
    (["train", "--out", "run", "--resume"], "run/config.yaml: model.n_layer=0: must be >= 1"),
    # a field nobody on the command line set (the preset's) is named as a config writes it
    (["train", "--preset", "tiny", "--model.n_head", "3"], "model.n_embd=64: must be divisible by n_head=3"),
    # checked later, by training and data preparation
    (["train", "--init-from", "missing", "--out", "ft"],
     "--init-from='missing' does not exist; give a run directory (config.yaml), one of its checkpoints/step-N or a "
     "Hugging Face model folder (config.json) to start from"),
    (["train", "--preset", "tiny", "--train.precision", "fp16", "--train.device", "cpu", "--out", "r"],
     "--train.precision='fp16' needs CUDA (device is cpu); use 'bf16' or 'fp32'"),
    (["prepare", "--tokenizer", "nope.json"], "--tokenizer='nope.json': expected 'bpe', 'char', 'gpt2' or the path of "
     "a tokenizer.json or tokenizer folder, and no such path exists"),
    (["prepare", "--vocab-size", "3"], "--vocab-size=3: must be >= 257 for byte-level BPE, or None"),
    (["prepare", "--data.vocab_size", "3"], "--data.vocab_size=3: must be >= 257 for byte-level BPE, or None"),
    # HF's trainer reserved room for 5e9 tokens before it read a text, and the process aborted on the allocation
    (["prepare", "--vocab-size", "5000000000"], "--vocab-size=5000000000: must be at most 16,777,216 (a trained BPE "
     "stops at what its corpus holds anyway), or None"),
    (["prepare", "--vocab-size", "0", "--data.vocab_size", "4000"],  # the flag is applied last: it is the value
     "--vocab-size=0: must be >= 257 for byte-level BPE, or None"),
])
def test_a_bad_field_is_named_as_typed(args: list[str], said: str, tmp_path: Path, monkeypatch):
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    proc = in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch)
    assert (proc.returncode, proc.stderr) == (2, f"neurallayers {args[0]}: error: {said}\n")


def run_config(*args: str):
    """The RunConfig `neurallayers train ARGS` would train."""
    module, parser = build_verb_parser("train")
    parsed, rest = parser.parse_known_args(list(args))
    parsed.overrides = rest
    return module.build_run_config(parsed)


def test_text_fields_keep_the_text_typed():
    """YAML 1.1 read `[yes, 2024]` as [True, 2024] (refused: "expected a list of str"), a date-looking item as a date,
    and `notes #1.txt` as "notes" (a comment)."""
    run = run_config("--preset", "tiny", "--train.sample_prompts", "[yes, 2024, 2024-01-01, 'on', \"a, b\", 1.5]",
                     "--data.source", "notes #1.txt", "--train.loggers=[]")
    assert run.train.sample_prompts == ["yes", "2024", "2024-01-01", "on", "a, b", "1.5"]
    assert run.data.source == "notes #1.txt" and run.train.loggers == []
    run = run_config("--preset", "tiny", "--data.source", "2024-01-01", "--data.text_field", "no",
                     "--train.init_from", "null", "--model.preset", "tiny")
    assert (run.data.source, run.data.text_field, run.train.init_from) == ("2024-01-01", "no", None)


def test_numbers_and_bools_stay_what_their_fields_are_typed():
    run = run_config("--preset", "tiny", "--train.compile", "yes", "--train.max_steps", "7", "--train.lr", "3e-4",
                     "--data.document_bos", "false", "--train.max_minutes", "null")
    assert (run.train.compile, run.train.max_steps, run.train.lr) == (True, 7, 3e-4)
    assert run.data.document_bos is False and run.train.max_minutes is None


def test_a_list_of_text_given_other_text_is_refused_by_name(tmp_path: Path, monkeypatch):
    proc = in_process("train", "--preset", "tiny", "--train.sample_prompts", "yes", cwd=tmp_path,
                      monkeypatch=monkeypatch)
    assert proc.stderr == "neurallayers train: error: --train.sample_prompts='yes': expected a list of str\n"
