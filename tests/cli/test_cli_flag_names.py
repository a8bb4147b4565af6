"""Mistakes named in the command line's words: the flag typed, not a Python field; a flag of another verb; a warning
as one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from nl_cli_helpers import assert_user_error, in_process, tiny_char_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny character-level run (2 steps)."""
    return tiny_char_run(tmp_path_factory.mktemp("flags"))


@pytest.mark.parametrize(("flags", "needle"), [
    (["--top-p", "2"], "--top-p 2.0: must be in (0, 1]"),
    (["--temperature", "-1"], "--temperature -1.0: must be >= 0"),
    (["--num-return-sequences", "3", "--num-beams", "2"], "--num-return-sequences 3: must be <= --num-beams 2"),
    (["--min-new-tokens", "5", "--max-new-tokens", "3"], "--min-new-tokens 5: must be in [0, --max-new-tokens 3]"),
    # ids the model's vocabulary lacks: refused once the model is loaded
    (["--logit-bias", "500=1"], "--logit-bias holds token ids outside the model's vocabulary [0, "),
    (["--stop-token-id", "999"], "--stop-token-id holds token ids outside the model's vocabulary [0, "),
])
def test_generate_names_the_flag_of_a_bad_decoding_value(flags: list[str], needle: str, run_dir: Path, monkeypatch):
    """The errors named GenerationConfig's fields ("GenerationConfig.top_p=2.0: ..."), which the user never typed."""
    proc = in_process("generate", str(run_dir), "To", *flags, cwd=run_dir.parent, monkeypatch=monkeypatch)
    assert_user_error(proc, needle)
    assert "GenerationConfig" not in proc.stderr and "num_beams" not in proc.stderr


def test_chat_and_batch_name_the_flag_too(run_dir: Path, monkeypatch):
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    assert_user_error(in_process("chat", str(run_dir), "--stop-token-id", "999", cwd=run_dir.parent,
                                 monkeypatch=monkeypatch), "--stop-token-id holds token ids outside")
    (run_dir.parent / "in.jsonl").write_text('{"prompt": "To"}\n')
    proc = in_process("batch", str(run_dir), "--input", "in.jsonl", "--output", "out.jsonl", "--top-k", "-1",
                      cwd=run_dir.parent, monkeypatch=monkeypatch)
    assert_user_error(proc, "--top-k -1: must be >= 0")
    assert not (run_dir.parent / "out.jsonl").exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["generate", "run", "To", "--port", "8000"],
     "unrecognized arguments: --port 8000 (--port belongs to serve and ui)"),
    (["info", "tiny", "--dtype", "bf16"], "(--dtype belongs to generate, chat, eval, convert, serve, batch and ui)"),
    (["train", "--preset", "tiny", "--temperature", "0"],
     "unrecognized argument --temperature (--temperature belongs to generate, chat and batch)"),
    (["serve", "run", "--input", "x.jsonl"], "(--input belongs to batch)"),
])
def test_a_flag_of_another_verb_names_the_verbs_that_take_it(args: list[str], needle: str, tmp_path: Path,
                                                             monkeypatch):
    """`generate RUN --port 8000` said only "unrecognized arguments"; train called --temperature a malformed
    --section.field override."""
    assert_user_error(in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch), needle)
    assert not any(p.name != ".nlcache" for p in tmp_path.iterdir())


def test_a_near_flag_of_its_own_still_comes_first(tmp_path: Path, monkeypatch):
    # --max is a prefix of generate's --max-new-tokens, though serve has --max-queue
    assert_user_error(in_process("generate", "run", "To", "--max", "3", cwd=tmp_path, monkeypatch=monkeypatch),
                      "(did you mean --max-new-tokens?)")


def test_a_warning_is_one_line_in_the_clis_words(run_dir: Path):
    """Python's form named a file of the package and printed a line of its source:
    ".../cli/common.py:120: UserWarning: fp16 weights on a CPU ..." and then "  model, tokenizer = load(...)"."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEURALLAYERS_CACHE": str(run_dir.parent / ".nlcache")}
    proc = subprocess.run([sys.executable, "-m", "neurallayers", "generate", str(run_dir), "To", "--dtype", "fp16",
                           "--device", "cpu",
                           "--max-new-tokens", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("neurallayers generate: warning: fp16 weights on a CPU"), lines


@pytest.mark.parametrize(("verb", "flags", "needle"), [
    ("generate", ["--length-penalty", "2"], "--length-penalty tunes beam search, which is not on: add --num-beams N"),
    ("generate", ["--early-stopping", "true"], "--early-stopping tunes beam search, which is not on"),
    ("batch", ["--length-penalty", "0.5", "--early-stopping", "never"],
     "--length-penalty and --early-stopping tune beam search, which is not on: add --num-beams N (N > 1) or leave "
     "them out"),
])
def test_a_beam_search_flag_without_beam_search_is_refused(verb: str, flags: list[str], needle: str, run_dir: Path,
                                                           monkeypatch):
    """Without --num-beams > 1 they were ignored, silently (as --num-speculative-tokens without --draft was): the
    output sampled as if they had not been given."""
    (run_dir.parent / "in.jsonl").write_text('{"prompt": "To"}\n')
    where = ["To"] if verb == "generate" else ["--input", "in.jsonl", "--output", "beams.jsonl"]
    assert_user_error(in_process(verb, str(run_dir), *where, *flags, cwd=run_dir.parent, monkeypatch=monkeypatch),
                      needle)
    assert not (run_dir.parent / "beams.jsonl").exists()


def test_with_beam_search_they_decode_as_the_api_does(run_dir: Path, monkeypatch):
    import neurallayers as nl
    from neurallayers.generation import GenerationConfig

    flags = ["--num-beams", "2", "--length-penalty", "0.5", "--early-stopping", "never", "--max-new-tokens", "6"]
    proc = in_process("generate", str(run_dir), "To", *flags, cwd=run_dir.parent, monkeypatch=monkeypatch)
    assert proc.returncode == 0, proc.stderr
    model, tok = nl.load(run_dir)
    want = nl.generate(model, tok, ["To"], GenerationConfig(num_beams=2, length_penalty=0.5, early_stopping="never",
                                                             temperature=0, max_new_tokens=6))
    assert proc.stdout == f"To{want[0].text}\n"
