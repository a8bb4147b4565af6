"""How the CLI reads its command line: verbs, long flags, the `--` separator, a closed stdout; and `load` of what the
CLI's verbs are given (a run's checkpoint folder)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nl_cli_helpers import assert_user_error, in_process, tiny_char_run

from neurallayers.__main__ import build_verb_parser


def test_a_mistyped_verb_names_the_verb_meant(tmp_path: Path, monkeypatch):
    """`neurallayers trian` listed the eleven verbs, and named none."""
    assert_user_error(in_process("trian", "--preset", "tiny", cwd=tmp_path, monkeypatch=monkeypatch),
                      "unknown verb 'trian' (did you mean 'train'?)")
    proc = in_process("xyzzy", cwd=tmp_path, monkeypatch=monkeypatch)
    assert_user_error(proc, "unknown verb 'xyzzy'", "generate")
    assert "did you mean" not in proc.stderr


@pytest.mark.parametrize(("verb", "args", "needle"), [
    # argparse's prefix matching took these for other flags: contrastive search, a beam-search knob
    ("generate", ["run", "hi", "--penalty", "1.3"], "--penalty 1.3 (did you mean --penalty-alpha?)"),
    ("generate", ["run", "hi", "--length", "50"], "--length 50 (did you mean --length-penalty?)"),
    ("generate", ["run", "hi", "--top", "5"], "(did you mean --top-k or --top-p?)"),
    ("serve", ["run", "--max", "4"],
     "(did you mean --max-concurrency or --max-queue or --max-model-len or --max-body-mb?)"),
])
def test_a_shortened_flag_is_refused_not_taken_for_another(verb: str, args: list[str], needle: str, capsys):
    parser = build_verb_parser(verb)[1]
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_train_refuses_a_shortened_flag_of_its_own(tmp_path: Path, monkeypatch):
    """`--pre tiny` was --preset and `--in x` --init-from, while a mistyped override is refused: one rule for all."""
    assert_user_error(in_process("train", "--pre", "tiny", "--out", "o", cwd=tmp_path, monkeypatch=monkeypatch),
                      "unrecognized argument --pre (did you mean --preset?)")
    assert not any(tmp_path.iterdir())


def test_train_takes_overrides_after_a_double_dash(tmp_path: Path, monkeypatch):
    """`train ... -- --train.lr 1e-4` failed: "override '--' must look like --section.field VALUE"."""
    from neurallayers.training import trainer

    seen = []

    def fit(run_cfg, out, **kwargs):
        seen.append(run_cfg)
        raise KeyboardInterrupt  # stop before any work; main() reports it as status 130

    monkeypatch.setattr(trainer, "fit", fit)
    proc = in_process("train", "--preset", "tiny", "--out", "o", "--", "--train.lr", "1e-4", "--model.n_layer=3",
                      cwd=tmp_path, monkeypatch=monkeypatch)
    assert proc.returncode == 130, proc.stderr
    assert seen[0].train.lr == 1e-4 and seen[0].model.n_layer == 3


def test_a_closed_stdout_is_one_line_not_lost_output(tmp_path: Path):
    """With stdout closed (`>&-`), `info` printed into nothing and exited 0, and `generate --stream` ended in
    "AttributeError: 'NoneType' object has no attribute 'write'"."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEURALLAYERS_CACHE": str(tmp_path / ".nlcache")}
    proc = subprocess.run([sys.executable, "-m", "neurallayers", "info", "tiny"], stderr=subprocess.PIPE, text=True,
                          env=env, cwd=tmp_path, timeout=120, preexec_fn=lambda: os.close(1))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "neurallayers info: error: standard output is closed; redirect it (> FILE, or > " \
                                  "/dev/null to discard it)"


def _info_tiny_into(stdout, tmp_path: Path, args: tuple[str, ...] = ("info", "tiny")) -> subprocess.CompletedProcess:
    """`neurallayers info tiny > stdout` (or other `args`), its output buffered as a user's shell gives it (no
    PYTHONUNBUFFERED)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(OMP_NUM_THREADS="1", NEURALLAYERS_CACHE=str(tmp_path / ".nlcache"))
    return subprocess.run([sys.executable, "-m", "neurallayers", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, env=env, cwd=tmp_path, timeout=120)


def test_a_reader_that_left_ends_the_output_quietly(tmp_path: Path):
    """`neurallayers info tiny | head -1` (or `| true`): the buffered output failed at exit, after main() had returned,
    with "Exception ignored in: <_io.TextIOWrapper name='<stdout>'> BrokenPipeError" and status 120."""
    read, write = os.pipe()
    os.close(read)  # the reader has left before the first line
    try:
        proc = _info_tiny_into(write, tmp_path)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (1, "")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_under_stdout_is_one_line(tmp_path: Path):
    """`neurallayers info tiny > /dev/full` (a full disk or quota under `> FILE`): Python's "Exception ignored ...
    OSError: [Errno 28] No space left on device" and status 120, or with unbuffered output a traceback of print()."""
    with open("/dev/full", "w") as full:
        proc = _info_tiny_into(full, tmp_path)
    assert_user_error(proc, "neurallayers info: error: cannot write the output: No space left on device")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize(("args", "prog"), [(("--help",), "neurallayers"), (("--version",), "neurallayers"),
                                            (("info", "--help"), "neurallayers info")])
def test_help_or_version_on_a_full_disk_is_one_line_not_a_silent_success(args, prog, tmp_path: Path):
    """`neurallayers --help > FILE` on a full disk exited 0 with FILE empty: argparse drops its own write's OSError."""
    with open("/dev/full", "w") as full:
        proc = _info_tiny_into(full, tmp_path, args)
    assert_user_error(proc, f"{prog}: error: cannot write the output: No space left on device")


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> Path:
    """A tiny run with checkpoints at steps 2 and 4 (whose weights differ)."""
    return tiny_char_run(tmp_path_factory.mktemp("ckpt"), max_steps=4, eval_interval=4, save_interval=2, lr=1e-2)


def test_load_reads_a_checkpoint_folder_with_its_runs_config_and_tokenizer(two_checkpoints: Path, monkeypatch):
    """load("run/checkpoints/step-2") said "has neither config.yaml ... nor config.json": no verb could generate
    from, evaluate or serve an earlier step of a run."""
    import neurallayers as nl
    from neurallayers.weights import read_safetensors

    step2 = two_checkpoints / "checkpoints" / "step-2"
    model, tokenizer = nl.load(step2)
    want = read_safetensors(step2 / "model.safetensors")
    got = model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    final = read_safetensors(two_checkpoints / "model.safetensors")
    assert any(not torch.equal(final[k], want[k]) for k in want)  # other weights than the run's own
    assert tokenizer.encode("To be") == nl.load(two_checkpoints)[1].encode("To be")
    model16, _ = nl.load(step2, dtype="bf16")
    assert next(model16.parameters()).dtype == torch.bfloat16
    monkeypatch.chdir(step2.parent)  # typed inside checkpoints/
    assert torch.equal(nl.load("step-2")[0].state_dict()[next(iter(want))], got[next(iter(want))])


def test_load_refuses_an_incomplete_checkpoint_in_one_line(two_checkpoints: Path, tmp_path: Path):
    import shutil

    import neurallayers as nl
    from neurallayers.training.checkpoint import COMPLETE

    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    (run / "checkpoints" / "step-2" / COMPLETE).unlink()  # a save cut short
    with pytest.raises(ValueError, match="step-2 is an incomplete checkpoint"):
        nl.load(run / "checkpoints" / "step-2")
    with pytest.raises(ValueError, match="neither config.yaml"):
        nl.load(run / "checkpoints")


def test_generate_from_a_checkpoint_folder(two_checkpoints: Path, monkeypatch):
    from neurallayers.generation import generate

    step2 = two_checkpoints / "checkpoints" / "step-2"
    proc = in_process("generate", str(step2), "To be", "--temperature", "0", "--max-new-tokens", "5",
                      cwd=two_checkpoints.parent, monkeypatch=monkeypatch)
    assert proc.returncode == 0, proc.stderr
    import neurallayers as nl

    model, tok = nl.load(step2)
    assert proc.stdout == "To be" + generate(model, tok, "To be", temperature=0, max_new_tokens=5)[0].text + "\n"


def test_a_prompt_after_options_and_a_double_dash_is_a_prompt(two_checkpoints: Path, monkeypatch):
    """`generate RUN --max-new-tokens 2 -- "-x"` failed with "unrecognized arguments: -x", and `generate RUN a
    --max-new-tokens 2 b` with "unrecognized arguments: b": argparse had filled the prompts list before the options."""
    parser = build_verb_parser("generate")[1]
    args = parser.parse_args(["run", "a", "--max-new-tokens", "2", "b", "--", "-x", "--stop"])
    assert (args.prompts, args.max_new_tokens, args.stop) == (["a", "b", "-x", "--stop"], 2, [])
    proc = in_process("generate", str(two_checkpoints), "--temperature", "0", "--max-new-tokens", "2", "--", "-To be",
                      cwd=two_checkpoints.parent, monkeypatch=monkeypatch)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("-To be")


def test_a_double_dash_before_every_positional_still_separates():
    """`info -- -dir` and `serve -- -dir` (a path that starts with '-') worked before positionals were read after
    options, then Python 3.11's intermixed parsing dropped the '--': "unrecognized arguments: -dir", or "the
    following arguments are required: path"."""
    assert build_verb_parser("info")[1].parse_args(["--", "-dir"]).target == "-dir"
    assert build_verb_parser("serve")[1].parse_args(["--", "-dir"]).path == "-dir"
    args = build_verb_parser("generate")[1].parse_args(["--max-new-tokens", "2", "--", "-dir", "-x"])
    assert (args.path, args.prompts, args.max_new_tokens) == ("-dir", ["-x"], 2)
    args = build_verb_parser("convert")[1].parse_args(["--", "-a", "b"])
    assert (args.src, args.dst) == ("-a", "b")


def test_an_extra_argument_after_a_leading_double_dash_is_the_one_named(tmp_path: Path, monkeypatch):
    """`info -- -dir extra`: the intermixed parse, which drops that '--', read -dir as an option and named it as the
    unrecognized argument, where the target was -dir and `extra` the one too many."""
    cases = {("info", "--", "-dir", "extra"): "extra", ("info", "--bogus", "--", "-dir", "x"): "--bogus x",
             ("convert", "--", "-a", "b", "c"): "c"}
    for args, extra in cases.items():
        assert_user_error(in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch),
                          f"unrecognized arguments: {extra} (see neurallayers {args[0]} --help)")


def test_a_closed_stdin_reads_as_empty(two_checkpoints: Path, tmp_path: Path):
    """With stdin closed (`<&-`), `generate RUN` (no prompt: it reads one from stdin) and `chat` ended in
    "AttributeError: 'NoneType' object has no attribute 'read'" ('isatty' for chat); now as `< /dev/null`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEURALLAYERS_CACHE": str(tmp_path / ".nlcache")}
    proc = subprocess.run([sys.executable, "-m", "neurallayers", "generate", str(two_checkpoints)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
                          preexec_fn=lambda: os.close(0))
    assert_user_error(proc, "empty prompt")


def test_a_prompt_read_from_the_terminal_is_asked_for(two_checkpoints: Path, monkeypatch):
    """`generate RUN` without a prompt reads one from stdin: at a terminal it sat waiting without a word, as if hung.
    Typed there it says what it waits for, and generates from what was typed as from the argument."""
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    flags = ("--temperature", "0", "--max-new-tokens", "3")
    monkeypatch.setattr("sys.stdin", Terminal("To"))
    typed = in_process("generate", str(two_checkpoints), *flags, cwd=two_checkpoints.parent, monkeypatch=monkeypatch)
    assert typed.returncode == 0, typed.stderr
    assert typed.stderr == ("neurallayers generate: no prompt given: type one and end it with Ctrl-D on a line of its "
                            "own (or give it as an argument, or pipe it in)\n")
    given = in_process("generate", str(two_checkpoints), "To", *flags, cwd=two_checkpoints.parent,
                       monkeypatch=monkeypatch)
    assert typed.stdout == given.stdout and given.stderr == ""
    monkeypatch.setattr("sys.stdin", io.StringIO("To"))  # piped: nothing to ask
    assert in_process("generate", str(two_checkpoints), *flags, cwd=two_checkpoints.parent,
                      monkeypatch=monkeypatch).stderr == ""


@pytest.mark.parametrize(("ending", "code", "said"), [(KeyboardInterrupt, 130, "neurallayers chat: interrupted\n"),
                                                    (EOFError, 0, "")])
def test_chat_left_with_ctrl_c_exits_as_an_interrupted_command(ending, code: int, said: str, two_checkpoints: Path,
                                                               monkeypatch):
    """Ctrl-C at chat's prompt ended it with status 0, as Ctrl-D does: a script could not tell it from a finished
    conversation, where every other verb exits 130 after one line."""
    def typed(prompt: str = "") -> str:
        raise ending

    monkeypatch.setattr("builtins.input", typed)
    proc = in_process("chat", str(two_checkpoints), cwd=two_checkpoints.parent, monkeypatch=monkeypatch)
    assert (proc.returncode, proc.stderr, proc.stdout) == (code, said, "")


def test_convert_exports_a_checkpoint_folder_as_load_reads_it(two_checkpoints: Path, tmp_path: Path):
    """`convert run/checkpoints/step-2 out` was refused as "neither a run nor a Hugging Face folder" while load() and
    every other verb read it: an earlier step of a run could not be exported."""
    import neurallayers as nl

    step2 = two_checkpoints / "checkpoints" / "step-2"
    out = nl.convert(step2, tmp_path / "hf")
    assert (out / "config.json").is_file()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(nl.load(out)[0](ids).logits, nl.load(step2)[0](ids).logits, atol=1e-6)


def test_load_reads_a_checkpoint_folder_through_a_symlink_or_dots(two_checkpoints: Path, tmp_path: Path):
    """A checkpoint was known by the name of the folder above the path as typed: a link to step-2 (`best -> ...`) or
    `step-2/../step-2` was "neither config.yaml ... nor config.json"."""
    import neurallayers as nl

    step2 = two_checkpoints / "checkpoints" / "step-2"
    want = nl.load(step2)[0].state_dict()
    (tmp_path / "s2").symlink_to(step2, target_is_directory=True)
    for path in (tmp_path / "s2", step2 / ".." / "step-2"):
        got = nl.load(path)[0].state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), path


def test_a_model_folder_kept_in_a_folder_named_checkpoints_is_no_step_of_a_run(two_checkpoints: Path,
                                                                                 tmp_path: Path):
    """An HF export in a project's checkpoints/ folder, beside the project's config.yaml, was taken for a step of a
    run: its own generation_config.json was ignored (the project folder's read instead), and convert turned it into
    an HF folder again instead of a run."""
    import json
    import shutil

    import neurallayers as nl

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(two_checkpoints / "config.yaml", project / "config.yaml")
    hf = nl.convert(two_checkpoints, project / "checkpoints" / "tiny-hf")
    settings = json.loads((hf / "generation_config.json").read_text())
    (hf / "generation_config.json").write_text(json.dumps({**settings, "do_sample": True, "temperature": 0.6}))
    assert nl.generation_defaults(hf)["temperature"] == 0.6
    out = nl.convert(hf, tmp_path / "as-run")
    assert (out / "config.yaml").is_file() and not (out / "config.json").exists()


def test_convert_of_a_checkpoint_keeps_its_runs_sampling(two_checkpoints: Path, tmp_path: Path):
    """load() and generation_defaults() read a checkpoint as its run, but convert looked for the run's
    generation_config.json (a run converted from a Hugging Face folder keeps one) in the checkpoint folder."""
    import json
    import shutil

    import neurallayers as nl

    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    (run / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.6, "top_k": 7}))
    step2 = run / "checkpoints" / "step-2"
    assert nl.generation_defaults(step2) == nl.generation_defaults(run)
    for to in ("hf", "run"):
        out = nl.convert(step2, tmp_path / f"as-{to}", to=to)
        assert nl.generation_defaults(out) == nl.generation_defaults(run), to


def test_eval_scores_a_checkpoint_on_its_runs_split(two_checkpoints: Path, monkeypatch):
    """`eval run/checkpoints/step-2` loaded the step's weights but looked for config.yaml in the checkpoint folder:
    "is not a run directory: name the corpus with --data", where the run itself is scored on its own val split."""
    step2 = two_checkpoints / "checkpoints" / "step-2"
    runs = [in_process("eval", str(path), "--no-progress", cwd=two_checkpoints.parent, monkeypatch=monkeypatch)
            for path in (two_checkpoints, step2)]
    assert [proc.returncode for proc in runs] == [0, 0], runs[1].stderr
    assert all("split: val" in proc.stdout for proc in runs)
    assert runs[0].stdout != runs[1].stdout  # step 2's weights, not the run's final ones


@pytest.mark.parametrize("verb", ["eval", "batch", "ui", "chat", "generate", "serve"])
def test_dtype_help_names_compile_only_where_the_verb_has_it(verb):
    """--dtype's help said "unless decoded with --compile" in eval, batch and ui too, which have no such flag."""
    parser = build_verb_parser(verb)[1]
    has_compile = any("--compile" in action.option_strings for action in parser._actions)
    (dtype,) = [action for action in parser._actions if "--dtype" in action.option_strings]
    assert ("--compile" in dtype.help) == has_compile
    assert has_compile == (verb in ("chat", "generate", "serve"))
