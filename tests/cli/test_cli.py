"""CLI smoke tests through a subprocess: the verbs work end to end and user mistakes print one line, exit 2."""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from neurallayers.__main__ import VERBS, build_verb_parser, main

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 40


# Caches (token memmaps, the decode kernel) of calls without a cwd: a folder of this session, never the checkout.
SESSION_CACHE = Path(tempfile.mkdtemp(prefix="neurallayers-cli-cache-"))
atexit.register(shutil.rmtree, SESSION_CACHE, ignore_errors=True)


def cli(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    cache = cwd / ".nlcache" if cwd is not None else SESSION_CACHE
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEURALLAYERS_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "neurallayers", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, input=stdin, timeout=300)


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny run trained through `neurallayers train` with a YAML config and overrides."""
    root = tmp_path_factory.mktemp("cli")
    (root / "text.txt").write_text(TEXT)
    (root / "run.yaml").write_text(
        "model: {preset: tiny, block_size: 32}\n"
        "train: {max_steps: 6, batch_size: 4, eval_interval: 3, eval_batches: 2, warmup_steps: 1, sample_tokens: 8}\n"
        "data: {tokenizer: char}\n")
    proc = cli("train", "--config", "run.yaml", "--data", "text.txt", "--out", "run", "--train.lr=3e-3",
               "--model.n_layer", "1", "--no-progress", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "final val loss" in proc.stdout
    # without the bar, a line a logged step and one an evaluation (on stderr, as the bar would be)
    assert re.search(r"^step 1/6: loss \d+\.\d{4}  lr \S+  [\d,]+ tokens/s  0:\d\d$", proc.stderr, re.M), proc.stderr
    assert re.search(r"^step 3: val loss \d+\.\d{4}  perplexity \S+  \(best\)$", proc.stderr, re.M), proc.stderr
    assert re.search(r"^step 6: val loss ", proc.stderr, re.M), proc.stderr
    out = root / "run"
    assert (out / "model.safetensors").is_file() and (out / "metrics.jsonl").is_file()
    assert "n_layer: 1" in (out / "config.yaml").read_text()
    return out


def test_help_of_every_verb(capsys):
    assert cli("--help").returncode == 0
    proc = cli("train", "--help")  # one verb through a real process; the rest through main() (4 s a process)
    assert proc.returncode == 0 and "neurallayers train" in proc.stdout, proc.stderr
    for verb in VERBS:
        with pytest.raises(SystemExit) as exit_:
            main([verb, "--help"])
        assert exit_.value.code == 0, verb
        assert f"neurallayers {verb}" in capsys.readouterr().out


def test_the_package_and_the_cli_start_without_torch():
    """`import neurallayers` (which the console script does first) imported torch: `neurallayers --help` waited
    seconds for it, and a Ctrl-C in them printed a traceback from inside torch instead of one line."""
    code = ("import sys, neurallayers, neurallayers.__main__ as m\n"
            "assert 'torch' not in sys.modules, 'torch imported at start'\n"
            "assert sorted(neurallayers.__all__) == sorted([*neurallayers._EXPORTS, '__version__'])\n"
            "from neurallayers import ModelConfig, generate\n"
            "assert neurallayers.generation.fast.__name__ == 'neurallayers.generation.fast'\n"
            "assert 'torch' in sys.modules and set(neurallayers.__all__) <= set(dir(neurallayers))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_help_states_each_default_once():
    """An option's help names its default once, and never as "None"."""
    for verb in VERBS:
        text = " ".join(build_verb_parser(verb)[1].format_help().split())
        assert "(default: None)" not in text, verb
        for option in text.split(" --")[1:]:
            assert option.count("default") <= 1, (verb, option)


def test_generate_eval_info_convert(run_dir: Path, tmp_path: Path, monkeypatch):
    # generate (plain and streamed) and eval through real processes; the rest through main() (4 s a process)
    gen = cli("generate", str(run_dir), "To be", "Whether", "--max-new-tokens", "5", "--temperature", "0")
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.count("To be") >= 1 and "Whether" in gen.stdout
    streamed = cli("generate", str(run_dir), "--stream", "--max-new-tokens", "5", "--temperature", "0",
                   stdin="To be")
    assert streamed.returncode == 0, streamed.stderr
    one = in_process("generate", str(run_dir), "To be", "--max-new-tokens", "5", "--temperature", "0", cwd=tmp_path,
                     monkeypatch=monkeypatch)
    assert streamed.stdout.strip() == one.stdout.strip()  # streaming prints the same text
    samples = in_process("generate", str(run_dir), "To be", "--max-new-tokens", "4", "--min-new-tokens", "4", "--seed",
                         "1", "--num-return-sequences", "2", "--amateur", str(run_dir), "--temperature", "0",
                         cwd=tmp_path, monkeypatch=monkeypatch)
    assert samples.returncode == 0, samples.stderr  # contrastive decoding against an amateur, two sequences
    assert samples.stdout.count("----- sample") == 2 and samples.stdout.count("(length, 4 tokens)") == 2
    refused = in_process("generate", str(run_dir), "To be", "--stream", "--num-return-sequences", "2", cwd=tmp_path,
                         monkeypatch=monkeypatch)
    assert refused.returncode == 2 and refused.stdout == "" and "--num-return-sequences" in refused.stderr
    ev = cli("eval", str(run_dir), cwd=run_dir.parent)
    assert ev.returncode == 0, ev.stderr
    assert "perplexity" in ev.stdout and "split: val" in ev.stdout
    assert re.search(r"eval: 100%.*\| (\d+)/\1 ", ev.stderr), ev.stderr  # a progress bar that reaches its total
    info = in_process("info", str(run_dir), cwd=tmp_path, monkeypatch=monkeypatch)
    assert info.returncode == 0 and "parameters" in info.stdout and "KV cache" in info.stdout
    hf = tmp_path / "hf"
    conv = in_process("convert", str(run_dir), str(hf), cwd=tmp_path, monkeypatch=monkeypatch)  # a run -> HF folder
    assert conv.returncode == 0, conv.stderr
    assert (hf / "config.json").is_file()
    again = in_process("generate", str(hf), "To be", "--max-new-tokens", "5", "--temperature", "0", cwd=tmp_path,
                       monkeypatch=monkeypatch)
    assert again.stdout == one.stdout


def test_a_folders_generation_config_sets_the_sampling_the_user_leaves_unset(run_dir: Path, tmp_path: Path,
                                                                            monkeypatch):
    """transformers' generate and vLLM take temperature, top-k, top-p, min-p and repetition penalty from the folder's
    generation_config.json: so do generate, chat and batch, for the flags not given; `do_sample: false` is greedy."""
    hf = tmp_path / "hf"
    assert in_process("convert", str(run_dir), str(hf), cwd=tmp_path, monkeypatch=monkeypatch).returncode == 0
    args = ("generate", str(hf), "To be", "--max-new-tokens", "6", "--seed", "3")
    greedy = in_process(*args, "--temperature", "0", cwd=tmp_path, monkeypatch=monkeypatch).stdout
    sampled = in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch)
    assert sampled.stdout != greedy and "generation_config" not in sampled.stderr  # the file names no sampling
    settings = json.loads((hf / "generation_config.json").read_text())
    (hf / "generation_config.json").write_text(json.dumps({**settings, "do_sample": True, "top_k": 1}))
    top1 = in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch)  # top-k 1 is greedy at any temperature
    assert top1.stdout == greedy and "generation_config.json sets top_k=1" in top1.stderr
    given = in_process(*args, "--top-k", "0", cwd=tmp_path, monkeypatch=monkeypatch)  # a flag beats the file
    assert given.stdout == sampled.stdout and "generation_config" not in given.stderr
    (hf / "generation_config.json").write_text(json.dumps({**settings, "do_sample": False, "temperature": 0.7}))
    assert in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch).stdout == greedy
    # a bad value is not used (a warning), so the model stays usable, above all when the flag is given
    (hf / "generation_config.json").write_text(json.dumps({**settings, "do_sample": True, "top_p": 1.5, "top_k": 1}))
    bad = in_process(*args, "--top-p", "0.9", cwd=tmp_path, monkeypatch=monkeypatch)
    assert bad.returncode == 0 and bad.stdout == greedy, bad.stderr
    # contrastive search takes the folder's top_k (its candidates), not its sampling
    (hf / "generation_config.json").write_text(json.dumps({**settings, "top_k": 4, "temperature": 0.7}))
    contrastive = in_process(*args, "--penalty-alpha", "0.6", cwd=tmp_path, monkeypatch=monkeypatch)
    assert contrastive.returncode == 0 and "generation_config.json sets top_k=4\n" in contrastive.stderr


def test_every_verb_that_loads_a_model_takes_allow_pickle(run_dir: Path, tmp_path: Path, monkeypatch):
    """The refusal of a pickle-only folder says "--allow-pickle": only convert had the flag."""
    from safetensors.torch import load_file

    from neurallayers.serve.app import create_app

    hf = tmp_path / "hf"
    assert in_process("convert", str(run_dir), str(hf), cwd=tmp_path, monkeypatch=monkeypatch).returncode == 0
    args = ("generate", str(hf), "To be", "--max-new-tokens", "4", "--temperature", "0")
    want = in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch).stdout
    torch.save(load_file(hf / "model.safetensors"), hf / "pytorch_model.bin")
    (hf / "model.safetensors").unlink()
    assert_user_error(in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch), "--allow-pickle")
    assert in_process(*args, "--allow-pickle", cwd=tmp_path, monkeypatch=monkeypatch).stdout == want
    for verb in ("chat", "batch", "ui", "eval", "serve"):
        assert "--allow-pickle" in build_verb_parser(verb)[1].format_help(), verb
    assert create_app(hf, allow_pickle=True).state.holder.current.model.config.causal
    for verb in ("chat", "batch"):  # flags for generate's --draft and --amateur, which these verbs have not
        help_text = build_verb_parser(verb)[1].format_help()
        assert "--num-speculative-tokens" not in help_text and "--contrastive-alpha" not in help_text, verb


def test_chat_replies_as_generate_does_and_keeps_to_the_context(run_dir: Path, monkeypatch, capsys):
    """Each reply is generate() on the conversation rendered so far; /reset starts over; a conversation longer than
    the context (32 tokens here) drops its oldest turns; an over-long message is refused and the chat goes on."""
    from neurallayers.api import load
    from neurallayers.data.chat import DEFAULT_STOP, render_chat
    from neurallayers.generation import generate

    model, tok = load(run_dir)

    def expected(messages: list[dict], max_new: int = 4) -> str:
        ids = tok.encode(render_chat(tok, messages))
        out = generate(model, tok, [ids], max_new_tokens=min(max_new, 32 - len(ids)), temperature=0,
                       stop=[DEFAULT_STOP])
        return out[0].text.strip()

    monkeypatch.setattr("sys.stdin", io.StringIO("To be\nor not\n/reset\nWhether\n" + "x" * 40 + "\nTo\n"))
    assert main(["chat", str(run_dir), "--temperature", "0", "--max-new-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    first = expected([{"role": "user", "content": "To be"}])
    conversation = [{"role": "user", "content": "To be"}, {"role": "assistant", "content": first},
                    {"role": "user", "content": "or not"}]
    while len(tok.encode(render_chat(tok, conversation))) + 4 > 32 and len(conversation) > 1:
        del conversation[:2]  # what chat drops to fit
    replies = [first, expected(conversation), expected([{"role": "user", "content": "Whether"}])]
    assert [line.rstrip() for line in out.splitlines()[:3]] == replies
    assert "(the oldest 1 turn left the model's context of 32 tokens)" in err
    assert "(a new conversation)" in err and "too long for the model's context of 32 tokens" in err
    assert len(out.splitlines()) == 4  # the chat went on after the refused message


def test_info_on_a_run_says_what_it_trained(run_dir: Path, tmp_path: Path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with (copy / "metrics.jsonl").open("a") as f:
        f.write('{"step": 99, "val_lo')  # cut off by a kill: skipped
    assert main(["info", str(copy)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"training +(\d+) of \1 steps; val loss [\d.]+ at step \1, best [\d.]+ at step \d+", out), out
    assert re.search(r"checkpoints +step-\d+", out) and re.search(r"data +/\S+/text.txt; tokenizer char", out), out
    # the newest checkpoint's step counts when no log line has it (a log_interval skipped it), past max_steps too
    (copy / "checkpoints/step-1000").mkdir()
    (copy / "checkpoints/step-1000/COMPLETE").write_text("")
    assert main(["info", str(copy)]) == 0
    assert re.search(r"training +1,000 steps \(max_steps \d+\)", capsys.readouterr().out)
    (copy / "metrics.jsonl").unlink()  # as in a run converted from a Hugging Face folder
    assert main(["info", str(copy)]) == 0
    assert "none recorded here" in capsys.readouterr().out


def test_info_on_a_sentence_transformers_folder_says_how_it_embeds(capsys):
    assert main(["info", "all-MiniLM-L6-v2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\nembeddings +sentence-transformers: mean pooling, texts cut at 256 tokens\n", out), out


def test_chat_goes_on_when_the_template_refuses_a_conversation(run_dir: Path, tmp_path: Path, monkeypatch, capsys):
    # A template that refuses one message: that turn says so and the chat goes on. (A --system that the template
    # refuses outright is one line at the start: tests/test_chat_cli.py.)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}{% if 'forbidden' in m['content'] %}"
                               "{{ raise_exception('no forbidden words') }}{% endif %}{{ m['content'] }}{% endfor %}")
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    monkeypatch.setattr("sys.stdin", io.StringIO("forbidden\nor not\n"))
    assert main(["chat", str(copy), "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert err.count("chat template refused these messages: no forbidden words") == 1  # that turn said so; no exit


def test_a_folder_without_a_tokenizer_is_one_line(run_dir: Path, tmp_path: Path, monkeypatch, capsys):
    from neurallayers.api import load
    from neurallayers.interop.hf import save_hf

    save_hf(load(run_dir)[0], None, tmp_path / "hf")  # weights and config only
    (tmp_path / "p.jsonl").write_text('{"prompt": "To be"}\n')
    monkeypatch.setattr("sys.stdin", io.StringIO("To be\n"))
    for args in (["generate", "To be"], ["chat"], ["eval", "--data", str(tmp_path / "p.jsonl")],
                 ["batch", "--input", str(tmp_path / "p.jsonl"), "--output", str(tmp_path / "o.jsonl")]):
        assert main([args[0], str(tmp_path / "hf"), *args[1:]]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "has no tokenizer (tokenizer.json, or vocab.json + merges.txt)" in err, err


def test_a_draft_with_another_tokenizer_is_refused(run_dir: Path, tmp_path: Path, monkeypatch):
    other = tmp_path / "other"  # the same model with two tokens swapped: the same vocabulary size, other ids
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("checkpoints"))
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    (a, i), (b, j) = sorted(vocab.items(), key=lambda kv: kv[1])[5:7]
    vocab[a], vocab[b] = j, i
    (other / "tokenizer.json").write_text(json.dumps(tok))
    assert_user_error(in_process("generate", str(run_dir), "To be", "--draft", str(other), "--max-new-tokens", "2",
                                 cwd=tmp_path, monkeypatch=monkeypatch),
                      f"--draft {other} has another tokenizer than {run_dir}: id {i} is {b!r} there and {a!r} here")


def test_a_start_that_never_saved_is_started_afresh_and_a_saved_run_is_kept(run_dir: Path, monkeypatch):
    # the start afresh through a real process; the refusals through main() (4 s a process)
    root = run_dir.parent

    def refused(*args: str) -> subprocess.CompletedProcess:
        return in_process(*args, cwd=root, monkeypatch=monkeypatch)

    aborted = root / "aborted"  # a start killed before its first checkpoint, after an evaluation saved the best
    aborted.mkdir()
    shutil.copy(run_dir / "config.yaml", aborted / "config.yaml")
    shutil.copy(run_dir / "model.safetensors", aborted / "model.safetensors")
    (aborted / "metrics.jsonl").write_text('{"step": 1, "loss": 99.0}\n')
    args = ("train", "--config", "run.yaml", "--data", "text.txt", "--out", "aborted", "--train.max_steps", "2",
            "--train.sample_tokens", "0", "--no-progress")
    assert_user_error(refused(*args, "--resume"), "stopped before its first checkpoint", "without --resume")
    proc = cli(*args, cwd=root)
    assert proc.returncode == 0, proc.stderr
    # once: the check again under the run's lock said it a second time
    assert proc.stderr.count("holds no checkpoint (the run stopped before its first one): starting the run afresh") == 1
    assert '"loss": 99.0' not in (aborted / "metrics.jsonl").read_text()  # the aborted start's lines are gone
    assert (aborted / "model.safetensors").read_bytes() != (run_dir / "model.safetensors").read_bytes()
    assert_user_error(refused(*args), "already holds a run; pass --resume")
    # a model folder that is no run (converted weights): never trained over, from the CLI or the API
    model_only = root / "model-only"
    model_only.mkdir()
    for name in ("config.yaml", "model.safetensors", "tokenizer.json"):
        shutil.copy(run_dir / name, model_only / name)
    assert_user_error(refused(*args[:5], "--out", "model-only", *args[7:]), "already holds a model")
    from neurallayers.training import fit
    from neurallayers.training.config import RunConfig

    with pytest.raises(ValueError, match="already holds a model"):
        fit(RunConfig.from_yaml(run_dir / "config.yaml"), model_only, progress=False)
    assert_user_error(refused(*args[:5], "--out", "text.txt", *args[7:]), "is a file")


def test_resume_continues(run_dir: Path):
    proc = cli("train", "--out", "run", "--resume", "--config", "run.yaml", "--data", "text.txt",
               "--train.lr=3e-3", "--model.n_layer", "1", "--train.max_steps", "8", "--no-progress",
               cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stderr
    assert "steps: 8" in proc.stdout
    # only --out: the run's saved config (its data, tokenizer, 1 layer), trained longer on a schedule of 10 steps
    longer = cli("train", "--out", "run", "--resume", "--train.max_steps", "10", "--no-progress", cwd=run_dir.parent)
    assert longer.returncode == 0, longer.stderr
    assert "steps: 10" in longer.stdout and "step 9 on: the current train config's schedule" in longer.stderr


def test_eval_on_a_jsonl_corpus_with_another_text_field(run_dir: Path, tmp_path: Path, monkeypatch):
    import json

    lines = [json.dumps({"body": line, "id": i}) for i, line in enumerate(TEXT.splitlines())]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    assert_user_error(in_process("eval", str(run_dir), "--data", "docs.jsonl", cwd=tmp_path, monkeypatch=monkeypatch),
                      "'text'", "--text-field")
    ev = in_process("eval", str(run_dir), "--data", "docs.jsonl", "--text-field", "body", "--no-progress",
                    cwd=tmp_path, monkeypatch=monkeypatch)
    assert ev.returncode == 0, ev.stderr
    assert "corpus: docs.jsonl  split: all" in ev.stdout and "perplexity" in ev.stdout
    # a field names JSON-lines text: on text files (the run's own corpus too) it was silently ignored
    (tmp_path / "plain.txt").write_text(TEXT)
    for data in (["--data", "plain.txt"], []):
        assert_user_error(in_process("eval", str(run_dir), *data, "--text-field", "body", cwd=tmp_path,
                                     monkeypatch=monkeypatch), "--text-field body: corpus", "holds no JSON-lines file")


def test_train_and_eval_a_masked_lm_encoder(run_dir: Path, tmp_path: Path, monkeypatch):
    from neurallayers.embeddings import minilm_folder

    (tmp_path / "text.txt").write_text(TEXT)
    assert_user_error(in_process("eval", str(minilm_folder()), "--data", "text.txt", cwd=tmp_path,
                                 monkeypatch=monkeypatch), "encoder with head='none'", "masked LM's")
    proc = cli("train", "--preset", "bert-tiny", "--model.block_size", "32", "--model.n_layer", "1", "--data",
               "text.txt", "--data.tokenizer", "char", "--train.max_steps", "4", "--train.batch_size", "4",
               "--train.eval_interval", "2", "--train.precision", "fp32", "--out", "enc", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "final val loss" in proc.stdout and "=== window 1" in (tmp_path / "enc/samples.txt").read_text()
    ev = in_process("eval", "enc", "--no-progress", cwd=tmp_path, monkeypatch=monkeypatch)
    assert ev.returncode == 0, ev.stderr
    assert re.search(r"split: val  masked tokens scored: \d+  loss: \d+\.\d{4}", ev.stdout), ev.stdout
    # with training's batches, the val loss training logged for the weights (its masks: the run's seed and share)
    logged = [r for r in map(json.loads, (tmp_path / "enc/metrics.jsonl").read_text().splitlines()) if r.get("best")]
    as_trained = in_process("eval", "enc", "--no-progress", "--batch-size", "4", "--max-batches", "20", cwd=tmp_path,
                            monkeypatch=monkeypatch)
    assert f"loss: {logged[-1]['val_loss']:.4f}" in as_trained.stdout, (logged, as_trained.stdout)
    info = in_process("info", "enc", cwd=tmp_path, monkeypatch=monkeypatch)
    assert re.search(r"training +4 of 4 steps \(masked LM\); val loss", info.stdout), info.stdout
    # the same masks for every model: the run and its Hugging Face export score alike
    assert in_process("convert", "enc", "hf", cwd=tmp_path, monkeypatch=monkeypatch).returncode == 0
    scores = [in_process("eval", path, "--data", "text.txt", "--split", "all", "--no-progress", cwd=tmp_path,
                         monkeypatch=monkeypatch)
              for path in ("enc", "hf")]
    assert scores[0].stdout == scores[1].stdout and "masked tokens scored" in scores[0].stdout, scores
    assert_user_error(in_process("eval", str(run_dir), "--mask-prob", "0.2", cwd=tmp_path, monkeypatch=monkeypatch),
                      "--mask-prob applies to masked LMs")


def test_fine_tune_a_run_with_init_from(run_dir: Path, tmp_path: Path, monkeypatch):
    (tmp_path / "other.txt").write_text(TEXT.upper())
    prep = [in_process("prepare", "--init-from", str(run_dir), "--data", "other.txt", cwd=tmp_path,
                       monkeypatch=monkeypatch) for _ in range(2)]  # the source's tokenizer, no BPE trained
    assert all(p.returncode == 0 and "tokenizer: the init_from model's" in p.stdout for p in prep), prep
    assert "cache (built)" in prep[0].stdout and "cache (reused)" in prep[1].stdout, prep
    assert not (tmp_path / ".nlcache/tokenizers").exists()
    proc = in_process("train", "--init-from", str(run_dir), "--data", "other.txt", "--train.max_steps", "2",
                      "--train.eval_interval", "1", "--train.lr", "1e-4", "--no-progress", cwd=tmp_path,
                      monkeypatch=monkeypatch)
    assert proc.returncode == 0, proc.stderr
    ft = tmp_path / "runs" / "run-ft"  # named after the source
    assert "final val loss" in proc.stdout and (ft / "model.safetensors").is_file(), proc.stdout
    assert "n_layer: 1" in (ft / "config.yaml").read_text()  # the source's shape, not the preset's
    info = in_process("info", str(ft), cwd=tmp_path, monkeypatch=monkeypatch)
    assert re.search(r"started from +\S+run \(fine-tuned\)", info.stdout), info.stdout
    assert "tokenizer the init_from model's" in info.stdout, info.stdout
    (tmp_path / "ft.yaml").write_text(f"train: {{init_from: {run_dir}}}\ndata: {{source: other.txt}}\n")
    shape = in_process("info", "ft.yaml", cwd=tmp_path, monkeypatch=monkeypatch)  # the config names no model
    assert shape.returncode == 0 and re.search(r"architecture .*1 layers x", shape.stdout), shape
    assert_user_error(in_process("train", "--init-from", "nowhere", "--out", "x", cwd=tmp_path,
                                 monkeypatch=monkeypatch), "--init-from='nowhere' does not exist")
    assert_user_error(in_process("train", "--init-from", str(run_dir), "--model.n_head", "4", "--out", "y",
                                 cwd=tmp_path, monkeypatch=monkeypatch), "n_head=4 differs from the init_from")


def test_bad_yaml_is_one_line_naming_where(tmp_path: Path, monkeypatch):
    (tmp_path / "bad.yaml").write_text("model: {preset: tiny\n")
    for verb in ("info", "train", "prepare"):
        flag = [] if verb == "info" else ["--config"]
        assert_user_error(in_process(verb, *flag, "bad.yaml", cwd=tmp_path, monkeypatch=monkeypatch),
                          "bad.yaml is not valid YAML", "line 2")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "latin1.yaml").write_bytes("model:\n  name: caf\xe9\n".encode("latin-1"))
    (tmp_path / "typo.yaml").write_text("model:\n  preset: tiny\n  n_layers: 2\n")
    for name, needles in (("cfg", ["cfg is a folder"]), ("latin1.yaml", ["latin1.yaml is not UTF-8"]),
                          ("typo.yaml", ["n_layers", "(config: typo.yaml)"])):
        assert_user_error(in_process("train", "--config", name, cwd=tmp_path, monkeypatch=monkeypatch), *needles)


def test_prepare_builds_the_token_cache_train_then_reuses(tmp_path: Path, monkeypatch):
    (tmp_path / "text.txt").write_text(TEXT)
    args = ("--preset", "tiny", "--data", "text.txt", "--data.tokenizer", "char")
    prep = cli("prepare", *args, cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr
    assert "train tokens" in prep.stdout and "cache (built)" in prep.stdout
    # the reuse and the BPE cache through main() (4 s a process)
    again = in_process("prepare", *args, cwd=tmp_path, monkeypatch=monkeypatch)
    assert again.returncode == 0 and "cache (built)" not in again.stdout, again.stdout
    bpe = in_process("prepare", *args[:4], "--data.tokenizer", "bpe", "--data.vocab_size", "300", cwd=tmp_path,
                     monkeypatch=monkeypatch)
    assert bpe.returncode == 0 and bpe.stdout.startswith("corpus: text.txt"), bpe.stdout  # no blank lines first


@pytest.mark.parametrize(("args", "needles"), [
    (["info", "gpt7"], ["'gpt7'", "presets:"]),
    (["generate", "no/such/run", "hi"], ["no/such/run"]),
    (["train", "--preset", "tiny", "--train.lr", "-1", "--out", "x"], ["lr"]),
    (["train", "--preset", "tiny", "--train.learning_rate", "1e-3", "--out", "x"], ["learning_rate", "lr"]),
    (["train", "--preset", "tiny", "--model.norm", "batchnorm", "--out", "x"], ["norm", "batchnorm"]),
    (["train", "--config", "missing.yaml"], ["missing.yaml"]),
    (["eval", "no/such/run"], ["no/such/run"]),
    (["train", "--out", "no/run", "--resume"], ["cannot resume", "no/run"]),
])
def test_user_mistakes_are_one_line(args: list[str], needles: list[str], tmp_path: Path, monkeypatch):
    # through main() in this process (a process costs 4 s of imports); the first case through a real one too
    assert_user_error(in_process(*args, cwd=tmp_path, monkeypatch=monkeypatch), *needles)
    if args[:2] == ["info", "gpt7"]:
        assert_user_error(cli(*args, cwd=tmp_path), *needles)


def in_process(*args: str, cwd: Path, monkeypatch) -> subprocess.CompletedProcess:
    """`cli` through main() here: same exit code, stdout and stderr, without a new interpreter."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(cwd / ".nlcache"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def test_generate_bad_sampling_value(run_dir: Path, monkeypatch):
    assert_user_error(in_process("generate", str(run_dir), "hi", "--top-p", "1.5", cwd=run_dir.parent,
                                 monkeypatch=monkeypatch), "--top-p 1.5")


def test_generate_with_a_compiled_step_prints_the_same_text(run_dir: Path, monkeypatch):
    # the compiled step through a real process; the plain text and the refusal through main() (4 s a process)
    args = ("To be", "--max-new-tokens", "6", "--temperature", "0")
    plain = in_process("generate", str(run_dir), *args, cwd=run_dir.parent, monkeypatch=monkeypatch)
    assert plain.returncode == 0, plain.stderr
    compiled = cli("generate", str(run_dir), *args, "--compile")
    assert compiled.returncode == 0, compiled.stderr
    assert compiled.stdout == plain.stdout
    assert_user_error(in_process("generate", str(run_dir), "hi", "--compile", "--num-beams", "2", cwd=run_dir.parent,
                                 monkeypatch=monkeypatch), "--compile")


def test_an_output_cut_by_the_context_says_so(run_dir: Path, monkeypatch):
    """generate stops where the context is full rather than refuse: the CLI says why the output is short."""
    args = ("generate", str(run_dir), "To be", "--max-new-tokens", "100", "--ignore-eos")
    for extra in ((), ("--stream",)):
        proc = in_process(*args, *extra, cwd=run_dir.parent, monkeypatch=monkeypatch)
        assert proc.returncode == 0, proc.stderr
        assert "note: the output stopped at the model's context length (32 tokens, prompt included) after 28 of " \
               "100 new tokens" in proc.stderr
    fits = in_process(*args[:4], "20", "--ignore-eos", cwd=run_dir.parent, monkeypatch=monkeypatch)
    assert fits.returncode == 0 and fits.stderr == ""


def test_the_summary_names_a_slow_first_step():
    """With --train.compile the first step compiles: the mean tokens/s alone would read as a slow trainer."""
    from neurallayers.cli.train import summary
    from neurallayers.training.trainer import TrainResult

    result = TrainResult(run_dir=Path("r"), steps=30, best_val_loss=1.0, final_val_loss=1.0, tokens_per_second=1232,
                         wall_seconds=53, median_step_seconds=0.035, first_step_seconds=45.2,
                         stopped_reason="max_steps")
    assert summary(result).endswith("tokens/s: 1,232  wall: 53s  stopped: max_steps  (the first step took 45s, "
                                    "then 35 ms a step)")
    steady = TrainResult(**{**result.__dict__, "first_step_seconds": 0.05})
    assert summary(steady).endswith("stopped: max_steps") and "final val loss: 1.0000" in summary(steady)
    stopped = TrainResult(**{**steady.__dict__, "stopped_reason": "interrupted"})  # not evaluated at its last step
    assert "last val loss: 1.0000" in summary(stopped)


def test_eval_of_a_text_shorter_than_the_context_scores_all_of_it(run_dir: Path, tmp_path: Path, monkeypatch):
    """One window of the whole text (the run's context is 32); an explicit --block-size over it is still refused."""
    (tmp_path / "short.txt").write_text("to be or not\n")
    ev = in_process("eval", str(run_dir), "--data", "short.txt", "--no-progress", cwd=tmp_path, monkeypatch=monkeypatch)
    assert ev.returncode == 0, ev.stderr
    scored = int(re.search(r"tokens scored: (\d+)", ev.stdout).group(1))
    assert 12 <= scored < 32  # every character after the first (the split may add a bos/eos)
    assert_user_error(in_process("eval", str(run_dir), "--data", "short.txt", "--block-size", "32", cwd=tmp_path,
                                 monkeypatch=monkeypatch), "a window needs 33 (try --block-size)")


def test_an_unavailable_or_unknown_device_is_one_line(run_dir: Path, monkeypatch):
    if not torch.cuda.is_available():
        assert_user_error(in_process("generate", str(run_dir), "hi", "--device", "cuda", cwd=run_dir.parent,
                                     monkeypatch=monkeypatch), "device='cuda'", "no CUDA device")
    assert_user_error(in_process("eval", str(run_dir), "--device", "gpu", cwd=run_dir.parent,
                                 monkeypatch=monkeypatch), "device='gpu'", "'cuda:N'")


def test_a_refused_stream_prints_nothing(run_dir: Path, monkeypatch):
    """The prompt is echoed only once the request has passed its checks (it used to be printed, then refused)."""
    proc = in_process("generate", str(run_dir), "To be or not to be " * 20, "--stream", cwd=run_dir.parent,
                      monkeypatch=monkeypatch)
    assert_user_error(proc, "shorten the prompt")
    assert proc.stdout == ""


def test_beam_search_is_greedy_by_default_and_says_when_a_temperature_is_unused(run_dir: Path, monkeypatch):
    args = ("generate", str(run_dir), "To be", "--max-new-tokens", "6", "--num-beams", "2")
    default = in_process(*args, cwd=run_dir.parent, monkeypatch=monkeypatch)
    greedy = in_process(*args, "--temperature", "0", cwd=run_dir.parent, monkeypatch=monkeypatch)
    assert default.returncode == 0 and default.stdout == greedy.stdout and default.stderr == ""
    hot = in_process(*args, "--temperature", "0.7", cwd=run_dir.parent, monkeypatch=monkeypatch)
    assert hot.stdout == greedy.stdout and "deterministic: --temperature" in hot.stderr


def test_chat_with_a_seed_gives_each_reply_its_own_draws(run_dir: Path, monkeypatch, capsys):
    """One --seed makes a session reproducible; each reply samples with (seed, reply number), not all with the
    seed itself (which drew the same random numbers for every reply). /reset starts the numbers over."""
    from neurallayers.cli import chat
    from neurallayers.generation.generate import _row_seed

    seeds = []
    monkeypatch.setattr(chat, "reply", lambda model, tok, prompt, config: seeds.append(config.seed) or "x")
    monkeypatch.setattr("sys.stdin", io.StringIO("To be\nTo be\n/reset\nTo be\n"))
    assert main(["chat", str(run_dir), "--seed", "7", "--max-new-tokens", "4"]) == 0
    assert seeds == [_row_seed(7, 0), _row_seed(7, 1), _row_seed(7, 0)] and seeds[0] != seeds[1]


def test_a_run_stopped_by_a_non_finite_loss_exits_non_zero(run_dir: Path, monkeypatch):
    """nan_policy: stop ended the run with status 0, so `train && ...` went on as if it had finished."""
    proc = in_process("train", "--config", "run.yaml", "--data", "text.txt", "--out", "nan", "--train.max_steps", "6",
                      "--train.lr", "1e30", "--train.warmup_steps", "0", "--train.grad_clip", "0",
                      "--train.nan_policy", "stop", "--train.sample_tokens", "0", "--no-progress",
                      cwd=run_dir.parent, monkeypatch=monkeypatch)
    assert proc.returncode == 1 and "stopped: nan" in proc.stdout, proc.stderr


def test_serve_refuses_an_empty_api_key_and_a_port_in_use_in_one_line(run_dir: Path, monkeypatch):
    """An empty --api-key (or $NEURALLAYERS_API_KEY, say an unset variable passed through) served every route without
    a key; a port in use printed "serving on ..." and then uvicorn's error, exit 3."""
    pytest.importorskip("uvicorn")
    import socket

    assert_user_error(in_process("serve", str(run_dir), "--api-key", "", cwd=run_dir.parent, monkeypatch=monkeypatch),
                      "--api-key is empty")
    monkeypatch.setenv("NEURALLAYERS_API_KEY", " ")
    assert_user_error(in_process("serve", str(run_dir), cwd=run_dir.parent, monkeypatch=monkeypatch),
                      "$NEURALLAYERS_API_KEY is empty")
    monkeypatch.delenv("NEURALLAYERS_API_KEY")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = in_process("serve", str(run_dir), "--port", port, cwd=run_dir.parent, monkeypatch=monkeypatch)
    assert_user_error(proc, f"port {port} on 127.0.0.1 is in use")
    assert proc.stdout == ""


def test_an_argument_error_is_one_line_too(tmp_path: Path):
    """argparse's own errors (a missing or mistyped value) printed the usage block above the error."""
    assert_user_error(cli("generate", "run", "--max-new-tokens", "abc", cwd=tmp_path), "--max-new-tokens",
                      "invalid int value", "see neurallayers generate --help")


def test_a_run_trained_on_a_relative_path_evaluates_from_another_directory(run_dir: Path, tmp_path: Path,
                                                                            monkeypatch):
    """config.yaml named the corpus as typed ("text.txt"), so eval and --resume failed from any other directory."""
    assert f"source: {run_dir.parent / 'text.txt'}" in (run_dir / "config.yaml").read_text()
    proc = in_process("eval", str(run_dir), "--batch-size", "2", cwd=tmp_path, monkeypatch=monkeypatch)
    assert proc.returncode == 0 and "split: val" in proc.stdout, proc.stderr


def test_generate_takes_stop_token_ids_and_logit_bias(run_dir: Path, monkeypatch):
    from neurallayers.api import load
    from neurallayers.generation import generate

    model, tok = load(run_dir)
    free = generate(model, tok, "To be", temperature=0, max_new_tokens=8, ignore_eos=True)[0]
    banned, stop = free.token_ids[0], free.token_ids[3]
    want = generate(model, tok, "To be", temperature=0, max_new_tokens=8, ignore_eos=True, stop_token_ids=[stop],
                    logit_bias={banned: -100.0})[0]
    proc = in_process("generate", str(run_dir), "To be", "--temperature", "0", "--max-new-tokens", "8",
                      "--ignore-eos", "--stop-token-id", str(stop), "--logit-bias", f"{banned}=-100",
                      cwd=run_dir.parent, monkeypatch=monkeypatch)
    assert proc.returncode == 0 and proc.stdout == "To be" + want.text + "\n", proc.stderr
    assert_user_error(in_process("generate", str(run_dir), "hi", "--logit-bias", "5:-1", cwd=run_dir.parent,
                                 monkeypatch=monkeypatch), "expected ID=BIAS")


def test_the_continue_hint_of_a_torchrun_run_is_a_torchrun_command(monkeypatch):
    """A stopped torchrun run was told to continue with `neurallayers train ... --resume`: one process, which the
    resume then warned about."""
    from neurallayers.cli.train import _launcher

    # as the console script starts it (under `python -m pytest`, argv[0] is pytest's __main__.py: a `-m` launch)
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/neurallayers"])
    monkeypatch.setattr("shutil.which", lambda name: "/somewhere/bin/neurallayers")
    assert _launcher() == "neurallayers"
    # the active environment's torchrun: the one beside the interpreter that runs this
    monkeypatch.setattr("shutil.which", lambda name: str(Path(sys.executable).parent / name))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert _launcher() == "torchrun --nproc_per_node 2 -m neurallayers"
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert _launcher() == "torchrun --nnodes 2 ... --nproc_per_node 4 -m neurallayers"


def test_the_torchrun_continue_hint_runs_the_environment_that_trained(tmp_path, monkeypatch):
    """`.venv/bin/torchrun ... -m neurallayers train` from a shell without the environment active was told to continue
    with `torchrun ...`: "command not found", or another environment's torchrun, whose Python has no neurallayers.
    torchrun starts its workers with its own interpreter, so the torchrun beside it is the one that trained."""
    from neurallayers.cli.train import _launcher

    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    for name in ("python", "torchrun"):
        (venv / name).write_text("")
    monkeypatch.setattr(sys, "executable", str(venv / "python"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    for found in (None, "/usr/bin/torchrun"):  # not on PATH, or another environment's first
        monkeypatch.setattr("shutil.which", lambda name, found=found: found)
        assert _launcher() == "venv/bin/torchrun --nproc_per_node 2 -m neurallayers", found
    monkeypatch.setattr("shutil.which", lambda name: str(venv / name))  # the environment is active
    assert _launcher() == "torchrun --nproc_per_node 2 -m neurallayers"
    (venv / "torchrun").unlink()  # no console script: its interpreter runs torch's launcher module
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert _launcher() == "venv/bin/python -m torch.distributed.run --nproc_per_node 2 -m neurallayers"
