"""User mistakes the CLI took for something else: an empty value read as "not given", a step count or time the demo
cannot use, a folder where a file goes. Each must be one line and exit 2, before any model or data work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from nl_cli_helpers import assert_user_error, in_process, tiny_char_run

from neurallayers.__main__ import build_verb_parser


@pytest.mark.parametrize(("args", "flag"), [
    # `--data "$CORPUS"` with the variable unset trained on the preset's default corpus, and `--out ""` wrote
    # runs/<preset>; the unknown preset only makes the old behaviour fail fast here
    (["train", "--preset", "nosuch", "--data", "", "--out", "x"], "--data"),
    (["train", "--preset", "nosuch", "--out", ""], "--out"),
    (["train", "--config", "", "--out", "x"], "--config"),
    (["prepare", "--preset", "nosuch", "--data", ""], "--data"),
    (["demo", "--out", "", "--max-steps", "-1"], "--out"),  # trained the demo into the current folder
    (["generate", "nosuch", "hi", "--draft", ""], "--draft"),  # generated without the draft
    (["convert", "nosuch", ""], "dst"),
    (["info", ""], "target"),
    # an encoder's batch embedded with its default pooling, as if --pooling had not been given
    (["batch", "nosuch", "--input", "in.jsonl", "--output", "o.npy", "--pooling", ""], "--pooling"),
    # `--model-root "$MODELS"` with the variable unset let POST /reload load any model under the current folder
    (["serve", "nosuch", "--port", "0", "--model-root", ""], "--model-root"),
    # said "--host : not a known host name or address"; ui's --host refused it so
    (["serve", "nosuch", "--port", "0", "--host", ""], "--host"),
])
def test_an_empty_value_is_refused_not_taken_for_the_default(args: list[str], flag: str, tmp_path: Path,
                                                             monkeypatch):
    proc = in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch)
    assert_user_error(proc, f"argument {flag}: must not be empty")
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())  # nothing written, no run started


@pytest.mark.parametrize(("args", "needle"), [
    (["--max-steps", "0"], "argument --max-steps: must be >= 1, got 0"),  # trained 1 step as if it were not given
    (["--minutes", "0", "--max-steps", "1"], "argument --minutes: must be > 0, got 0"),
    (["--minutes", "-1"], "argument --minutes: must be > 0, got -1"),  # said TrainConfig.max_minutes=-0.25
    (["--minutes", "nan"], "argument --minutes: must be a finite number, got 'nan'"),
])
def test_demo_refuses_a_step_count_or_a_time_it_cannot_use(args: list[str], needle: str, tmp_path: Path,
                                                           monkeypatch):
    (tmp_path / "file.txt").write_text("x")  # an --out the old code refused quickly, after taking the value
    assert_user_error(in_process("demo", "--out", "file.txt", *args, cwd=tmp_path, monkeypatch=monkeypatch), needle)


@pytest.mark.parametrize(("out", "needle"), [
    ("file.txt", "file.txt is a file, not a run directory"),
    ("file.txt/run", "file.txt/run: file.txt is a file, not a folder"),
    ("model", "model already holds a model (model.safetensors); choose"),  # not train's hint of --init-from
])
def test_demo_refuses_an_out_it_cannot_train_into_before_measuring(out: str, needle: str, tmp_path: Path,
                                                                   monkeypatch):
    """The demo measured this machine's step time first (seconds, more on a slow CPU) and printed its plan, and only
    then did training refuse the --out."""
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"")

    def measured(*_, **__):
        raise AssertionError("the speed probe ran")

    monkeypatch.setattr("neurallayers.cli.demo.measure_step_seconds", measured)
    proc = in_process("demo", "--out", out, cwd=tmp_path, monkeypatch=monkeypatch)
    assert_user_error(proc, needle, "choose another output directory (--out")
    assert proc.stdout == "" and "--init-from" not in proc.stderr  # a flag demo has not


def test_batch_names_a_folder_given_for_its_input_or_standing_in_its_output_path(tmp_path: Path, monkeypatch):
    (tmp_path / "prompts").mkdir()
    assert_user_error(in_process("batch", "nosuch", "--input", "prompts", "--output", "o.jsonl", cwd=tmp_path,
                                 monkeypatch=monkeypatch), "--input prompts is a folder; give a JSONL file")
    (tmp_path / "p.jsonl").write_text('{"text": "To be"}\n')
    (tmp_path / "notes.txt").write_text("mine\n")
    # a traceback ("FileExistsError: [Errno 17] File exists: 'notes.txt'") after the model had loaded
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEURALLAYERS_CACHE": str(tmp_path / ".nlcache")}
    proc = subprocess.run([sys.executable, "-m", "neurallayers", "batch", "all-MiniLM-L6-v2", "--input", "p.jsonl",
                           "--output", "notes.txt/out.npy", "--no-progress"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert_user_error(proc, "--output notes.txt/out.npy: notes.txt is a file, not a folder")
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_chat_help_lists_only_the_decoding_chat_does(tmp_path: Path, monkeypatch):
    """chat streams greedy or sampled replies: its --help listed beam and contrastive search flags it always refused."""
    text = build_verb_parser("chat")[1].format_help()
    for flag in ("--num-beams", "--penalty-alpha", "--length-penalty", "--early-stopping"):
        assert flag not in text, flag
    assert "--temperature" in text and "--top-k" in text
    assert_user_error(in_process("chat", "nosuch", "--num-beams", "2", cwd=tmp_path, monkeypatch=monkeypatch),
                      "unrecognized arguments: --num-beams 2")
    assert "--num-beams" in build_verb_parser("generate")[1].format_help()  # generate and batch keep them
    assert "--early-stopping" in build_verb_parser("batch")[1].format_help()


@pytest.mark.parametrize("top_k", [[], ["--top-k", "1"]])
def test_contrastive_search_without_candidates_names_its_flags_before_loading(top_k: list[str], tmp_path: Path,
                                                                               monkeypatch):
    """`generate RUN hi --penalty-alpha 0.6` loaded the model, then failed with "GenerationConfig.top_k=0: contrastive
    search needs top_k > 1 candidates per step (penalty_alpha weighs them)": a field name the user never typed."""
    run = tiny_char_run(tmp_path)

    def loaded(*_, **__):
        raise AssertionError("the model loaded")

    monkeypatch.setattr("neurallayers.cli.generate.load_model", loaded)
    proc = in_process("generate", str(run), "To be", "--penalty-alpha", "0.6", *top_k, cwd=tmp_path,
                      monkeypatch=monkeypatch)
    assert_user_error(proc, "--penalty-alpha 0.6 (contrastive search)", "needs --top-k > 1")
    assert "GenerationConfig" not in proc.stderr


def test_an_os_error_is_a_path_and_its_reason(tmp_path, monkeypatch):
    """An OSError from open() or mkdir() printed Python's "[Errno 20] Not a directory: 'notes.txt/run'"."""
    (tmp_path / "notes.txt").write_text("x")
    proc = in_process("train", "--preset", "tiny", "--data", "shakespeare", "--out", "notes.txt/run",
                      "--train.max_steps", "1", cwd=tmp_path, monkeypatch=monkeypatch)
    assert_user_error(proc, "notes.txt is a file, not a folder")


def test_os_errors_print_the_path_and_the_reason_without_errno():
    from neurallayers.__main__ import _os_message

    assert _os_message(PermissionError(13, "Permission denied", "noread.yaml")) == "noread.yaml: Permission denied"
    assert str(_os_message(FileNotFoundError("no such run: x"))) == "no such run: x"  # our own messages unchanged


@pytest.mark.parametrize(("args", "needle"), [
    (["generate", "nosuch", "hi", "--max_new_tokens", "3"], "--max_new_tokens 3 (did you mean --max-new-tokens?)"),
    (["info", "gpt2", "--batch_size", "2"], "(did you mean --batch-size?)"),
    # train passes unknown flags on as overrides: this one was "override '--init_from' must look like --section.field"
    (["train", "--preset", "tiny", "--init_from", "x", "--out", "o"], "--init_from (did you mean --init-from?)"),
    (["prepare", "--preset", "tiny", "--vocab_size", "300"], "--vocab_size (did you mean --vocab-size?)"),
    (["info", "GPT2"], "(did you mean 'gpt2'?)"),
    (["info", "llama_tiny"], "(did you mean 'llama-tiny'?)"),
])
def test_a_mistyped_flag_or_preset_names_the_one_meant(args: list[str], needle: str, tmp_path: Path, monkeypatch):
    assert_user_error(in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch), needle)
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_train_names_the_config_field_a_bare_flag_is_not_a_near_flag_of_its_own(tmp_path: Path, monkeypatch):
    """`--dropout` (the model field without its section) was "did you mean --out?": difflib's nearest own flag."""
    proc = in_process("train", "--preset", "tiny", "--dropout", "0.1", cwd=tmp_path, monkeypatch=monkeypatch)
    assert_user_error(proc, "(did you mean --model.dropout?)")
    assert "--out?" not in proc.stderr


def test_an_unrelated_unknown_flag_gets_no_guess(tmp_path: Path, monkeypatch):
    proc = in_process("generate", "nosuch", "hi", "--bogus", cwd=tmp_path, monkeypatch=monkeypatch)
    assert_user_error(proc, "unrecognized arguments: --bogus")
    assert "did you mean" not in proc.stderr


def test_info_refuses_an_empty_yaml_and_reads_an_upper_case_suffix(tmp_path: Path, monkeypatch):
    """An empty (or all-comment) YAML file was described as ModelConfig's defaults, GPT-2 124M; `.YAML` was "not a
    .yaml file"."""
    (tmp_path / "empty.yaml").write_text("# todo\n")
    proc = in_process("info", "empty.yaml", cwd=tmp_path, monkeypatch=monkeypatch)
    assert_user_error(proc, "empty.yaml holds no config")
    (tmp_path / "MODEL.YAML").write_text("preset: tiny\nn_layer: 1\n")
    proc = in_process("info", "MODEL.YAML", cwd=tmp_path, monkeypatch=monkeypatch)
    assert proc.returncode == 0, proc.stderr
    assert "1 layers x 64 wide" in proc.stdout


def test_the_api_refuses_what_the_cli_refuses(tmp_path: Path, monkeypatch):
    """"" is the current folder to pathlib: load("") loaded it and train(config, "") wrote a run into it, where the
    CLI refuses an empty path; overrides given as one string were read letter by letter ("override '-' ...")."""
    import neurallayers as nl

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path.parent / f"{tmp_path.name}-cache"))
    (tmp_path.parent / f"{tmp_path.name}.txt").write_text("To be, or not to be, that is the question.\n" * 20)
    config = {"model": {"preset": "tiny", "block_size": 16, "n_layer": 1},
              "train": {"max_steps": 1, "batch_size": 2, "eval_batches": 1, "warmup_steps": 0, "sample_tokens": 2},
              "data": {"source": str(tmp_path.parent / f"{tmp_path.name}.txt"), "tokenizer": "char"}}
    with pytest.raises(ValueError, match="out_dir is empty"):
        nl.train(config, "", progress=False)
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="give a list, e.g. \\['--train.lr', '1e-3'\\]"):
        nl.train(config, "run", overrides="--train.lr 1e-3")
    for call in (nl.load, nl.generation_defaults):
        with pytest.raises(ValueError, match="the model path is empty"):
            call("")


def test_info_on_a_diverged_run_shows_its_last_evaluation(tmp_path: Path, monkeypatch):
    """metrics.jsonl writes a non-finite val loss as the string "nan": info skipped it and called the last finite
    loss the run's latest."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {preset: tiny}\ntrain: {max_steps: 6}\ndata: {source: shakespeare}\n")
    (run / "metrics.jsonl").write_text('{"step": 2, "val_loss": 3.5}\n{"step": 4, "val_loss": 3.25}\n'
                                       '{"step": 6, "val_loss": "nan"}\n')
    proc = in_process("info", "run", cwd=tmp_path, monkeypatch=monkeypatch)
    assert proc.returncode == 0, proc.stderr
    assert "6 of 6 steps; val loss nan at step 6, best 3.2500 at step 4" in proc.stdout, proc.stdout
