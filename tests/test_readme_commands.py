"""The README and the Makefile against the code they describe: every `neurallayers` command the README (or a config's
header) shows names a verb, flags and config fields that exist (tests/training checks that the configs load); the run
summary the README quotes has the fields `train` prints; the make targets install and run what the README says; each
benchmark's --help says what it measures. Parsing only: seconds."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from neurallayers.__main__ import VERBS, build_verb_parser
from neurallayers.cli.train import summary
from neurallayers.training.config import SECTIONS, RunConfig, apply_overrides

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def shown_commands(*, inline: bool = True) -> list[list[str]]:
    """The words of each `neurallayers ...` command in the README's bash blocks and (with `inline`) inline code, and in
    the usage lines of the configs' header comments (from `neurallayers` on). Inline code may name a verb alone (`the
    neurallayers chat template`); the blocks and usage lines are commands to type whole."""
    lines = [
        line
        for block in re.findall(r"```bash\n(.*?)```", README, re.S)
        for line in block.replace("\\\n", " ").splitlines()
    ]
    if inline:
        lines += re.findall(r"`(neurallayers [a-z]+(?: [^`]*)?)`", README)
    lines += [
        line.lstrip("# ")
        for path in CONFIGS
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.lstrip("# ").startswith("neurallayers ")
    ]
    commands = []
    for line in lines:
        words = shlex.split(re.sub(r"(^|\s+)#.*", "", line))  # a comment is not part of the command
        if "neurallayers" in words:
            commands.append(words[words.index("neurallayers") :])
    return commands


COMMANDS = shown_commands()


def test_the_readme_shows_commands_of_every_verb():
    assert {words[1] for words in COMMANDS} == set(VERBS)


@pytest.mark.parametrize("words", COMMANDS, ids=lambda words: " ".join(words)[:70])
def test_each_shown_command_names_options_that_exist(words):
    verb = words[1]
    assert verb in VERBS, f"{' '.join(words)}: no verb {verb!r}"
    module, parser = build_verb_parser(verb)
    options = {name for action in parser._actions for name in action.option_strings}
    for word in words[2:]:
        if not word.startswith("--"):
            continue
        name = word.split("=")[0]
        if "." in name and getattr(module, "ACCEPTS_OVERRIDES", False):  # --section.field[.key] override
            section, field = name[2:].split(".")[:2]
            assert section in SECTIONS, f"{' '.join(words)}: no config section {section!r}"
            assert field in {f.name for f in dataclasses.fields(SECTIONS[section])}, (
                f"{' '.join(words)}: {section} has no field {field!r}"
            )
        else:
            assert name in options, f"{' '.join(words)}: `neurallayers {verb}` has no option {name}"


@pytest.mark.parametrize("words", shown_commands(inline=False), ids=lambda words: " ".join(words)[:70])
def test_each_command_to_type_parses_as_the_cli_parses_it(words):
    # option names alone let through a missing positional, a value outside an option's choices, or an override value
    # its config field refuses: each command is parsed whole, its overrides applied to a run config
    module, parser = build_verb_parser(words[1])
    try:
        if getattr(module, "ACCEPTS_OVERRIDES", False):
            _, rest = parser.parse_known_args(words[2:])
            parser.check_overrides(rest)
            RunConfig.from_dict(apply_overrides({"model": {"preset": "demo"}}, rest))
        else:
            parser.parse_args(words[2:])
    except SystemExit:
        pytest.fail(f"`{' '.join(words)}` is refused by its parser")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_python_examples_name_what_the_package_exports():
    import neurallayers

    used = {name for block in python_blocks() for name in re.findall(r"\bnl\.(\w+)", block)}
    used |= set(re.findall(r"`nl\.(\w+)", README))
    assert used and used - set(neurallayers.__all__) == set()


def test_the_python_functions_the_readme_names_bare_are_exported_too():
    """The README names `save_hf` beside `nl.convert` (a model in memory written as a Hugging Face folder, the
    `save_pretrained` of a Python script) and `nl.save_hf` was an AttributeError: it lived in neurallayers.interop."""
    import neurallayers

    named = set(re.findall(r"`(\w+)\(", README)) | set(re.findall(r"\bnl\.(\w+)", README))
    assert "save_hf" in named
    from neurallayers.interop import save_hf

    assert neurallayers.save_hf is save_hf and "save_hf" in neurallayers.__all__


def _dotted(path: str):
    """The object a dotted `neurallayers.a.b.c` path names, or None."""
    import importlib

    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name, None)
        return found
    return None


def test_the_functions_the_readme_names_outside_the_top_level_api_say_where_they_live():
    # `WriteError` and `fit()` named bare: a newcomer needs `neurallayers.files.WriteError`, written once at least
    import importlib

    import neurallayers

    modules = ("neurallayers.interop", "neurallayers.training", "neurallayers.generation", "neurallayers.files",
               "neurallayers.data.chat")
    public = {}
    for module in modules:
        for name, value in vars(importlib.import_module(module)).items():
            if callable(value) and not name.startswith("_") and getattr(value, "__module__", "").startswith(module):
                public.setdefault(name, value)
    named = set(re.findall(r"`([A-Za-z_]\w*)(?:\(|`)", README)) & set(public) - set(neurallayers.__all__)
    paths = set(re.findall(r"`(neurallayers(?:\.\w+)+)", README))
    placed = {path.rsplit(".", 1)[1] for path in paths if _dotted(path) is not None}
    assert named and named - placed == set()
    assert all(_dotted(path) is not None for path in paths)


def test_the_knobs_the_readme_lists_are_generation_config_fields():
    # "`GenerationConfig` holds every decoding knob: ... (`logprobs=n`)": each name a field, or generate()'s own
    import inspect

    from neurallayers.generation import GenerationConfig, generate

    paragraph = README.split("`GenerationConfig` holds every decoding knob", 1)[1].split("\n\n", 1)[0]
    paragraph = paragraph.split("Each sampling rule", 1)[0]
    named = {name for name in re.findall(r"`(\w+)(?:=[^`]*)?`", paragraph)}
    known = {f.name for f in dataclasses.fields(GenerationConfig)} | set(inspect.signature(generate).parameters)
    assert named and named - known == set()


def test_the_readme_names_every_preset_and_only_those():
    from neurallayers.presets import PRESETS

    paragraph = README.split("Presets are plain data in `neurallayers/presets.py`:", 1)[1].split("One `ModelConfig`")[0]
    assert set(re.findall(r"`([\w-]+)`", paragraph)) == set(PRESETS)


def test_the_readme_names_every_pipeline_task_and_pooling_mode():
    from neurallayers.embeddings import POOLINGS
    from neurallayers.pipelines import PIPELINES, TASK_ALIASES

    tasks = README.split("`nl.pipeline(task, model=path)` for", 1)[1].split("with transformers' result shapes")[0]
    assert set(re.findall(r"`([a-z-]+)`", tasks)) == set(PIPELINES) | set(TASK_ALIASES)
    modes = README.split("pooled by its mode (", 1)[1].split(", or several concatenated")[0]
    assert set(re.findall(r"`(\w+)`", modes)) == set(POOLINGS)


def test_the_quoted_errors_are_the_ones_the_code_gives(tmp_path, monkeypatch, capsys):
    from neurallayers.__main__ import main
    from neurallayers.config import ModelConfig

    quoted = re.search(r"`(neurallayers train: error: train has no field 'learning_rate'; valid fields: )\.\.\.`",
                       README).group(1)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--train.learning_rate", "1e-3"]) == 2
    assert capsys.readouterr().err.startswith(quoted)
    quoted = re.search(r"ValueError: (ModelConfig\.norm='batchnorm': .*)", README).group(1)
    with pytest.raises(ValueError) as error:
        ModelConfig(norm="batchnorm")
    assert str(error.value) == quoted


def test_the_minilm_example_prints_the_similarity_its_comment_states(capsys):
    (block,) = [block for block in python_blocks() if "load_minilm" in block]
    stated = re.search(r"print\(float\(a @ b\)\)\s+# ([\d.]+)", block).group(1)
    exec(compile(block, "README.md", "exec"), {})  # the bundled weights, offline: seconds
    assert f"{float(capsys.readouterr().out):.{len(stated.split('.')[1])}f}" == stated


def test_the_files_the_readme_names_exist():
    named = set(re.findall(r"(?:configs|benchmarks)/[\w.-]+\.(?:yaml|py)", README))
    assert named and {name for name in named if not (ROOT / name).is_file()} == set()


def test_long_generate_examples_say_where_runs_llama_context_ends():
    # `generate runs/llama "ROMEO:" --max-new-tokens 1000 --compile  # long outputs` gave 124 tokens: runs/llama is
    # configs/llama-shakespeare.yaml, whose context the README must state beside outputs longer than it
    from neurallayers.training import RunConfig

    block_size = RunConfig.from_yaml(ROOT / "configs" / "llama-shakespeare.yaml").model.block_size
    longest = max(
        int(words[words.index("--max-new-tokens") + 1])
        for words in COMMANDS
        if words[1] == "generate" and words[2] == "runs/llama" and "--max-new-tokens" in words
    )
    if longest > block_size:
        note = re.search(r"runs/llama's context is (\d+)\s+#?\s*tokens", README)
        assert note and int(note.group(1)) == block_size, f"runs/llama's context is {block_size} tokens"


def test_the_quoted_run_summaries_have_the_fields_train_prints():
    result = SimpleNamespace(
        run_dir="runs/demo",
        steps=10,
        final_val_loss=3.0,
        best_val_loss=3.0,
        tokens_per_second=100.0,
        wall_seconds=1.0,
        stopped_reason="max_steps",
        first_step_seconds=0.1,
        median_step_seconds=0.1,
    )

    def labels(line: str) -> list[str]:
        return [part.split(":")[0] for part in line.split("  ")]

    quoted = [line for line in README.splitlines() if line.startswith("run: ")]
    assert quoted
    for line in quoted:
        assert labels(line) == labels(summary(result)), line


def make_dry_run(target: str, tmp_path: Path) -> str:
    """What `make -n TARGET` would run with a virtual environment that does not exist yet (nothing runs)."""
    if shutil.which("make") is None:
        pytest.skip("no make")
    return subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}"], capture_output=True, text=True, check=True
    ).stdout


def test_make_demo_installs_matplotlib_for_the_loss_plot(tmp_path):
    # the demo's run directory holds loss.png (README); without the plot extra fit() warns and skips it
    installs = [
        line for line in make_dry_run("demo", tmp_path).splitlines() if "pip install" in line and " -e " in line
    ]
    assert installs and any("plot" in line for line in installs), installs


def test_make_demo_passes_demo_args_on(tmp_path):
    # a second `make demo` is refused ("runs/demo already holds a run; ... pass --resume, or choose another --out"),
    # and make had no way to pass either flag: the README's `make demo DEMO_ARGS=...` reaches the demo verb
    if shutil.which("make") is None:
        pytest.skip("no make")
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "demo", f"VENV={tmp_path / 'venv'}", "DEMO_ARGS=--out runs/demo2"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert any(line.endswith("neurallayers demo --out runs/demo2") for line in out.splitlines()), out
    assert 'make demo DEMO_ARGS="--out runs/demo2"' in README


def test_make_bench_runs_every_benchmark_but_finetune(tmp_path):
    loop = next(line for line in make_dry_run("bench", tmp_path).splitlines() if line.startswith("for b in"))
    run = set(loop.split(" in ", 1)[1].split(";")[0].split())
    scripts = {path.stem for path in BENCHMARKS}
    assert run == scripts - {"finetune"}  # finetune.py starts from a trained run it must be given (README)


def fake_python(tmp_path: Path, *, ensurepip: bool) -> Path:
    """A stand-in for python3 whose `-m venv DIR` writes DIR/bin/python and DIR/bin/pip, as Debian's python3 does
    before it stops for a missing ensurepip; that pip fails to install torch (no network) and does nothing else."""
    tool = tmp_path / "python3"
    tool.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = -c ]; then case "$2" in *ensurepip*) exit {0 if ensurepip else 1} ;; esac; exit 0; fi\n'
        'if [ "$1 $2" = "-m venv" ]; then\n'
        '  mkdir -p "$3/bin"\n'
        "  printf '#!/bin/sh\\ncase \"$*\" in *torch*) exit 1 ;; esac\\n' > \"$3/bin/pip\"\n"
        "  printf '#!/bin/sh\\nexit 0\\n' > \"$3/bin/python\"\n"
        '  chmod +x "$3/bin/pip" "$3/bin/python"\n'
        f"  exit {0 if ensurepip else 1}\n"
        "fi\n"
        "exit 0\n"
    )
    tool.chmod(0o755)
    return tool


@pytest.mark.parametrize("ensurepip", [False, True], ids=["no ensurepip", "torch install fails"])
def test_make_redoes_a_first_install_that_stopped_half_way(ensurepip, tmp_path):
    # a first `make demo` stopped after `python3 -m venv` (Debian without python3-venv, or torch's download failed)
    # left .venv/bin/python, and the next `make` took the venv as made: it ran a pip that was not there, or
    # `pip install -e .` without the pinned torch, which then came from PyPI at its newest
    if shutil.which("make") is None:
        pytest.skip("no make")
    python = fake_python(tmp_path, ensurepip=ensurepip)
    command = ["make", "-C", str(ROOT), "demo", f"VENV={tmp_path / 'venv'}", f"PY={python}"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode != 0
    if not ensurepip:  # one line naming what is missing and how to get it
        assert "no venv/ensurepip module (Debian/Ubuntu: sudo apt-get install python3-venv)" in first.stderr
    again = subprocess.run([*command[:1], "-n", *command[1:]], capture_output=True, text=True, check=True).stdout
    assert "-m venv" in again and 'pip install -q "torch==' in again, again


BENCHMARKS = sorted(path for path in (ROOT / "benchmarks").glob("*.py")
                    if 'if __name__ == "__main__":' in path.read_text())


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_each_benchmark_help_says_what_it_measures(script, monkeypatch, capsys):
    # the docstring's first paragraph names what is timed and against what; its first line alone stops mid-sentence
    monkeypatch.syspath_prepend(str(script.parent))  # as when the script runs: bench_common beside it
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(script), run_name="__main__")
    first_paragraph = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))).split("\n\n")[0]
    assert " ".join(first_paragraph.split()) in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_each_benchmark_help_gives_every_options_default(script, monkeypatch):
    # `decode.py --help` listed `--new NEW  new tokens per row in the decode rows` with no 128 beside it, and
    # train.py's --gpt2-* options, serve.py's --clients and --max-tokens with no word at all
    import argparse

    parsers = []

    def kept(parser, *args, **kwargs):
        parsers.append(parser)
        raise SystemExit(0)

    monkeypatch.syspath_prepend(str(script.parent))
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", kept)
    monkeypatch.setattr(sys, "argv", [str(script)])
    with pytest.raises(SystemExit):
        runpy.run_path(str(script), run_name="__main__")
    (parser,) = parsers
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.default in (None, argparse.SUPPRESS):
            continue
        name = f"{script.name} {action.option_strings[-1]}"
        assert (action.help or "").strip(), f"{name} has no help, so --help shows no default"
        assert "default" in formatter._get_help_string(action), f"{name}: its default {action.default!r} is not shown"


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")


# import name -> the distribution that installs it, where the two differ
DISTRIBUTIONS = {"yaml": "pyyaml", "mlflow": "mlflow-skinny"}
# imported directly, but always installed, at a version that fits, by a requirement that is named
COMES_WITH = {"starlette": "fastapi", "pydantic-core": "pydantic"}


def test_every_library_the_package_imports_is_a_requirement_or_an_extra():
    # fastapi>=0.110 accepts pydantic 1 and 2.0-2.4, and serve/schemas.py needs 2.5 (Discriminator, Tag): an older
    # pydantic already installed stayed, and `neurallayers serve` died with an ImportError traceback
    project = pyproject()["project"]
    named = {requirement_name(r) for r in project["dependencies"]}
    named |= {requirement_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    imported = set()
    for path in (ROOT / "neurallayers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = {name.replace("_", "-") for name in imported - set(sys.stdlib_module_names) - {"neurallayers"}}
    missing = {
        name for name in third_party if DISTRIBUTIONS.get(name, name) not in named and COMES_WITH.get(name) not in named
    }
    assert missing == set()
    assert {requirement_name(r) for r in project["optional-dependencies"]["serve"]} >= {"fastapi", "pydantic"}


def test_the_setuptools_floor_reads_the_license_field():
    # `license = "Apache-2.0"` (an SPDX expression, PEP 639) is refused by setuptools before 77 ("`project.license`
    # must be valid exactly by one definition"), which `setuptools>=68` allowed a build without isolation to use
    data = pyproject()
    if not isinstance(data["project"].get("license"), str):
        return
    (setuptools,) = [r for r in data["build-system"]["requires"] if requirement_name(r) == "setuptools"]
    floor = re.search(r">=\s*([\d.]+)", setuptools)
    assert floor and tuple(int(part) for part in floor.group(1).split(".")) >= (77,), setuptools


def test_every_package_data_file_is_in_the_package():
    # py.typed was named but never added: installs carried no typing marker, and type checkers read the package as
    # untyped
    for name in pyproject()["tool"]["setuptools"]["package-data"]["neurallayers"]:
        assert (ROOT / "neurallayers" / name).is_file(), name


def benchmark_main(name: str):
    """`main` of benchmarks/NAME.py, loaded without running it (its globals can be patched through main.__globals__)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import bench_common from beside them
    try:
        return runpy.run_path(str(ROOT / "benchmarks" / f"{name}.py"))["main"]
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_train_benchmark_quick_path_runs_without_warnings(tmp_path):
    # its 30-step runs kept the recipe's 100 warmup steps: fit() warned "still warming up" once per run and round
    args = [
        "--shapes",
        "nanogpt",
        "--steps",
        "2",
        "--rounds",
        "1",
        "--no-plain",
        "--precisions",
        "fp32",
        "--gpt2-steps",
        "1",
        "--data",
        str(tmp_path / "absent.txt"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "WARNING" not in out.stderr and "warming up" not in out.stdout + out.stderr, out.stderr[-2000:]
    assert "| nanogpt 4x128 | fit() | fp32 | no | 768 |" in out.stdout


def test_finetune_benchmark_wall_times_are_the_training_runs_alone(tmp_path, monkeypatch, capsys):
    # the first fit() alone tokenized the corpus (the second read its cache), and its wall time counted that
    import neurallayers.training as training
    import neurallayers.training.init_from as init_from

    calls = []

    def fake_fit(run, run_dir, progress):
        calls.append(run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text('{"step": 2, "val_loss": 3.0}\n')
        if len(calls) == 1:
            time.sleep(1.5)  # preparing the data, before fit's clock starts
        return SimpleNamespace(wall_seconds=2.0)

    from neurallayers import ModelConfig

    (tmp_path / "src").mkdir()
    training.RunConfig(model=ModelConfig.from_name("tiny")).to_yaml(tmp_path / "src" / "config.yaml")
    monkeypatch.setattr(training, "fit", fake_fit)
    monkeypatch.setattr(init_from, "source_path", Path)
    main = benchmark_main("finetune")
    monkeypatch.setitem(main.__globals__, "source_val_loss", lambda run, source: 4.0)
    monkeypatch.setattr(sys, "argv", ["finetune.py", str(tmp_path / "src"), "--steps", "2", "--out", str(tmp_path)])
    main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| fine-tuned", "| from"))]
    assert len(calls) == 2 and [row.rsplit("|", 2)[1].strip() for row in rows] == ["2", "2"], rows


def test_speculative_benchmark_refuses_more_new_tokens_than_the_context_holds(monkeypatch):
    # plain decoding ran past the target's position table and died with a traceback, after training both models
    tok = SimpleNamespace(encode=lambda text: list(text.encode()), vocab_size=256)
    target = SimpleNamespace(config=SimpleNamespace(block_size=100))
    main = benchmark_main("speculative")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as when the script runs: bench_common beside it
    monkeypatch.setitem(main.__globals__, "trained", lambda *args, **kwargs: (target, tok))
    monkeypatch.setattr(sys, "argv", ["speculative.py", "--new", "50"])
    with pytest.raises(SystemExit, match=r"--new 50: the longest prompt leaves room for 40 new tokens"):
        main()


# each benchmark's comma separated list flags, with an entry it does not have
BAD_LISTS = [
    ("beam", ["--shapes", "small"]),
    ("decode", ["--dtypes", "fp16"]),
    ("decode", ["--batches", "0,8"]),
    ("train", ["--shapes", "nanogpt,foo"]),
    ("train", ["--precisions", "fp16"]),
    ("train", ["--recipe", "--positions", "learnt"]),
    ("encoder", ["--precisions", "fp16"]),
    ("mlm_train", ["--precisions", "fp16"]),
    ("speculative", ["--ks", "0"]),
    ("serve", ["--clients", "0,4"]),
]


@pytest.mark.parametrize(("name", "args"), BAD_LISTS, ids=lambda value: value if isinstance(value, str) else value[-1])
def test_each_benchmark_refuses_an_unknown_list_entry_before_it_runs(name, args, monkeypatch, capsys):
    # `train.py --shapes foo` printed an empty table, `encoder.py --precisions fp16` timed fp32 rows labelled fp16,
    # `beam.py --shapes small` died with a KeyError and `speculative.py --ks 0` after minutes of training: a list
    # flag names what it takes, in one line, before any work
    main = benchmark_main(name)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as when the script runs: bench_common beside it
    if name == "speculative":
        monkeypatch.setitem(main.__globals__, "trained", lambda *a, **k: pytest.fail("trained before refusing"))
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert f"argument {args[-2]}: {args[-1]!r}: expected a comma separated list of" in error


# each benchmark's counts and durations, with a value it cannot run (the last flag), and what does the work first
BAD_NUMBERS = [
    ("decode", ["--rounds", "0"], "build"),  # statistics.median of no calls, after building six models
    ("decode", ["--new", "1"], "build"),  # tokens/s of (new - 1) tokens over t(new) - t(1): 0 / 0
    ("beam", ["--new", "0"], "build"),
    ("beam", ["--beams", "0"], "build"),
    ("train", ["--steps", "0"], "speed"),
    ("train", ["--rounds", "0"], "speed"),  # an empty table, or statistics.median of nothing
    ("train", ["--gpt2-context", "-1"], "speed"),
    ("mlm_train", ["--batch", "0"], "Masker"),
    ("serve", ["--seconds", "0"], "random_run"),  # req/s over 0 seconds: ZeroDivisionError after the servers ran
    ("serve", ["--max-tokens", "0"], "random_run"),
    ("serve", ["--threads", "0"], "random_run"),
    ("speculative", ["--new", "0"], "trained"),
]


@pytest.mark.parametrize(("name", "args", "work"), BAD_NUMBERS, ids=lambda value: value if isinstance(value, str)
                         else " ".join(value))  # fmt: skip
def test_each_benchmark_refuses_a_count_or_duration_it_cannot_run(name, args, work, monkeypatch, capsys):
    # `decode.py --rounds 0` or `train.py --steps 0` were taken, and after minutes of building models or training
    # died with a StatisticsError or ZeroDivisionError, or printed a table of nothing: refused in one line, first
    main = benchmark_main(name)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as when the script runs: bench_common beside it
    if work in main.__globals__:
        monkeypatch.setitem(main.__globals__, work, lambda *a, **k: pytest.fail(f"{work} ran before refusing"))
    elif work == "Masker":
        monkeypatch.setattr("neurallayers.data.masking.Masker", lambda *a, **k: pytest.fail("ran before refusing"))
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert re.search(rf"argument {args[-2]}: {re.escape(repr(args[-1]))}: expected a (whole number|number of seconds) "
                     r"[>=]+ [0-9]+$", error), error  # fmt: skip


@pytest.mark.parametrize(
    ("text", "minimum", "value"), [("1", 1, 1), (" 7 ", 1, 7), ("0", 0, 0), ("0", 1, None), ("-2", 1, None),
                                   ("1.5", 1, None), ("x", 1, None)]
)  # fmt: skip
def test_bench_common_at_least_takes_whole_numbers_from_the_minimum(text, minimum, value, monkeypatch):
    import argparse

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from bench_common import at_least

    if value is None:
        with pytest.raises(argparse.ArgumentTypeError, match=f"expected a whole number >= {minimum}"):
            at_least(minimum)(text)
    else:
        assert at_least(minimum)(text) == value


@pytest.mark.parametrize(("text", "zero", "ok"), [("2.5", False, True), ("0", True, True), ("0", False, False),
                                                  ("-1", True, False), ("inf", True, False), ("nan", True, False),
                                                  ("soon", True, False)])  # fmt: skip
def test_bench_common_seconds_takes_finite_durations(text, zero, ok, monkeypatch):
    import argparse

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from bench_common import seconds

    if ok:
        assert seconds(zero=zero)(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="expected a number of seconds"):
            seconds(zero=zero)(text)


def fake_speculative_fit(calls: list, *, final_val_loss: float | None = 1.0, reason: str = "max_steps"):
    """fit() as the speculative benchmark calls it: the real check of its run directory first (what refused a cached
    run), then a model.safetensors where a run finishes."""
    from neurallayers.training.resume import resume_target

    def fit(run, run_dir, progress, resume=False):
        resume_target(Path(run_dir), resume)
        calls.append((Path(run_dir).name, resume))
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        if final_val_loss is not None:
            (Path(run_dir) / "model.safetensors").write_bytes(b"weights")
        return SimpleNamespace(steps=5, final_val_loss=final_val_loss, stopped_reason=reason)

    return fit


def cached_speculative_run(run_dir: Path, *, finished: bool) -> None:
    """A run directory as fit() leaves it: a complete checkpoint, and model.safetensors when it finished."""
    from neurallayers.training.checkpoint import COMPLETE

    (run_dir / "checkpoints" / "step-5").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-5" / COMPLETE).write_text("")
    (run_dir / "config.yaml").write_text("{}\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 5, "loss": 3.0}\n')
    if finished:
        (run_dir / "model.safetensors").write_bytes(b"old weights")


def test_speculative_benchmark_retrains_and_goes_on_with_a_stopped_run(tmp_path, monkeypatch):
    # `--retrain` called fit() on the cached run it was to replace, and a training stopped by Ctrl-C left checkpoints
    # without model.safetensors: fit refused both ("already holds a run"), with a traceback, on every later start
    import neurallayers.api as api
    import neurallayers.training as training

    calls = []
    monkeypatch.setattr(training, "fit", fake_speculative_fit(calls))
    monkeypatch.setattr(api, "load", lambda run_dir: run_dir)
    trained = benchmark_main("speculative").__globals__["trained"]
    shape = dict(n_layer=1, n_embd=8, n_head=1)
    cached_speculative_run(tmp_path / "done", finished=True)
    cached_speculative_run(tmp_path / "stopped", finished=False)
    trained(tmp_path, "done", shape, steps=5, minutes=1.0, lr=1e-3, batch=2, retrain=True)
    trained(tmp_path, "stopped", shape, steps=5, minutes=1.0, lr=1e-3, batch=2, retrain=False)
    assert calls == [("done", False), ("stopped", True)]  # trained afresh; the stopped run went on
    assert (tmp_path / "done" / "model.safetensors").read_bytes() == b"weights"
    trained(tmp_path, "done", shape, steps=5, minutes=1.0, lr=1e-3, batch=2, retrain=False)
    assert len(calls) == 2  # a finished run is loaded, not trained again


def test_speculative_benchmark_stopped_while_training_says_so(tmp_path, monkeypatch):
    # Ctrl-C while training returned a run with no val loss, and the script died formatting it (a TypeError)
    import neurallayers.training as training

    monkeypatch.setattr(training, "fit", fake_speculative_fit([], final_val_loss=None, reason="interrupted"))
    trained = benchmark_main("speculative").__globals__["trained"]
    with pytest.raises(SystemExit, match=r"training target stopped \(interrupted\) at step 5; run the same command"):
        trained(tmp_path, "target", dict(n_layer=1, n_embd=8, n_head=1), steps=5, minutes=1.0, lr=1e-3, batch=2,
                retrain=False)


def test_finetune_benchmark_names_a_missing_source_in_one_line(tmp_path, monkeypatch, capsys):
    # `benchmarks/finetune.py runs/demo` (the README's) before any `make demo` wrote it: a FileNotFoundError traceback
    main = benchmark_main("finetune")
    monkeypatch.setattr(sys, "argv", ["finetune.py", str(tmp_path / "demo")])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    assert f"source {tmp_path / 'demo'}: no such run directory or model folder" in capsys.readouterr().err
