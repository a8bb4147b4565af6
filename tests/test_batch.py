"""Offline batch inference: input checks, results equal to one-at-a-time generation, and exact resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from neurallayers.api import load
from neurallayers.batch import (
    decoding,
    fingerprint,
    inputs,
    journal,
    line_seed,
    model_files_identity,
    read_inputs,
    run,
    run_batch,
    vectors,
)
from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.generation import GenerationConfig, generate
from neurallayers.models.decoder import DecoderLM
from neurallayers.training.checkpoint import save_model
from neurallayers.training.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
TEXT = "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs!\n"
GREEDY = GenerationConfig(temperature=0, max_new_tokens=12)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory with a random char-level GPT (peaked distributions: no near ties between greedy choices)."""
    out = tmp_path_factory.mktemp("run")
    tok = Tokenizer.train_char([TEXT])
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32, init_std=0.3)
    RunConfig(model=cfg).to_yaml(out / "config.yaml")
    tok.save(out)
    save_model(out, DecoderLM(cfg).state_dict())
    return out


@pytest.fixture(scope="module")
def lm(run_dir):
    return load(run_dir)


def write_prompts(path: Path, n: int, **extra) -> Path:
    words = TEXT.split()
    lines = [json.dumps({"id": f"p{i}", "prompt": " ".join(words[i % 7:i % 7 + 1 + i % 5]), **extra})
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Interrupt(Exception):
    pass


BATCH_MODULES = (decoding, fingerprint, inputs, journal, run, vectors)


def interrupt_after(monkeypatch, name: str, calls: int) -> None:
    """Make `name` in the modules of neurallayers.batch raise after `calls` successful calls, counted across them
    all: an in-process stand-in for a kill."""
    users = [m for m in BATCH_MODULES if hasattr(m, name)]
    real, count = getattr(users[0], name), [0]

    def wrapped(*a, **k):
        if count[0] == calls:
            raise Interrupt
        count[0] += 1
        return real(*a, **k)

    for module in users:
        assert getattr(module, name) is real
        monkeypatch.setattr(module, name, wrapped)


def run_interrupted(monkeypatch, name: str, calls: int, *args, **kwargs) -> None:
    """run_batch(*args, **kwargs), killed (interrupt_after) once <name> has run `calls` times."""
    with monkeypatch.context() as m:
        interrupt_after(m, name, calls)
        with pytest.raises(Interrupt):
            run_batch(*args, **kwargs)


# ----- generation -----
def test_results_equal_one_prompt_at_a_time(lm, tmp_path):
    model, tok = lm
    inp = write_prompts(tmp_path / "in.jsonl", 7)
    with inp.open("a") as f:  # per-line settings, a default id, "text" for "prompt", blank lines
        f.write('\n{"prompt": "the dog", "max_new_tokens": 3, "top_k": null}\n  \n{"text": "a box", "stop": "o"}\n')
    res = run_batch(model, tok, inp, tmp_path / "out.jsonl", config=GREEDY, batch_size=3, progress=False)
    assert (res.total, res.computed, res.resumed) == (9, 9, 0)
    rows = results(tmp_path / "out.jsonl")
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(7)] + [9, 11]  # input order; line numbers as ids
    for item, row in zip(read_inputs(inp, mode="generate"), rows, strict=True):
        (alone,) = generate(model, tok, item.text, GREEDY.replace(**item.params))
        assert (row["text"], row["finish_reason"], row["completion_tokens"]) == \
            (alone.text, alone.finish_reason, alone.completion_tokens)
    assert rows[7]["completion_tokens"] <= 3 and "o" not in rows[8]["text"]
    bom = tmp_path / "bom.jsonl"  # a UTF-8 BOM before the first line (Notepad) was "line 1: not valid JSON"
    bom.write_bytes(b"\xef\xbb\xbf" + inp.read_bytes())
    run_batch(model, tok, bom, tmp_path / "bom-out.jsonl", config=GREEDY, batch_size=3, progress=False)
    assert (tmp_path / "bom-out.jsonl").read_bytes() == (tmp_path / "out.jsonl").read_bytes()


def test_seeded_sampling_does_not_depend_on_batch_size(lm, tmp_path):
    model, tok = lm
    inp = write_prompts(tmp_path / "in.jsonl", 6)
    cfg = GenerationConfig(temperature=1.0, top_k=8, seed=3, max_new_tokens=10)
    run_batch(model, tok, inp, tmp_path / "a.jsonl", config=cfg, batch_size=1, progress=False)
    run_batch(model, tok, inp, tmp_path / "b.jsonl", config=cfg, batch_size=6, progress=False)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_each_line_samples_with_its_own_seed(lm, tmp_path):
    """A line samples with its "seed", else with one made from the run's seed and its id: equal prompts on
    different lines give independent samples (all lines used to draw the same random numbers, seed 0)."""
    model, tok = lm
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"q{i}", "prompt": "the"}) + "\n" for i in range(4))
                   + json.dumps({"id": "own", "prompt": "the", "seed": 11}) + "\n")
    cfg = GenerationConfig(temperature=1.0, seed=3, max_new_tokens=12)
    run_batch(model, tok, inp, tmp_path / "out.jsonl", config=cfg, batch_size=5, progress=False)
    rows = results(tmp_path / "out.jsonl")
    wanted = [line_seed(3, f"q{i}") for i in range(4)] + [11]
    assert [r["text"] for r in rows] == [generate(model, tok, "the", cfg, seed=s)[0].text for s in wanted]
    assert len({r["text"] for r in rows[:4]}) > 1


def test_interrupted_run_resumes_repairs_a_torn_tail_and_refuses_changes(lm, tmp_path, monkeypatch):
    model, tok = lm
    inp = write_prompts(tmp_path / "in.jsonl", 10)
    run_batch(model, tok, inp, tmp_path / "straight.jsonl", config=GREEDY, batch_size=2, progress=False)
    out = tmp_path / "out.jsonl"
    run_interrupted(monkeypatch, "generate", 2, model, tok, inp, out, config=GREEDY, batch_size=2, progress=False)
    assert len(results(out)) == 4
    # A kill while appending: whole lines of a batch not yet counted, then a torn line.
    with out.open("ab") as f:
        f.write(b'{"id": "p9", "text": "not counted"}\n{"id": "p8", "te')
    with pytest.raises(ValueError, match=r"changed since .*temperature: 0 -> 0\.5"):
        run_batch(model, tok, inp, out, config=GREEDY.replace(temperature=0.5), batch_size=2, progress=False)
    changed = tmp_path / "changed.jsonl"
    changed.write_text(inp.read_text().replace("p3", "q3"))
    with pytest.raises(ValueError, match="input file's contents"):
        run_batch(model, tok, changed, out, config=GREEDY, batch_size=2, progress=False)
    res = run_batch(model, tok, inp, out, config=GREEDY, batch_size=5, progress=False)  # batch size may change
    assert (res.resumed, res.computed) == (4, 6) and res.repaired_bytes > 0
    assert out.read_bytes() == (tmp_path / "straight.jsonl").read_bytes()
    again = run_batch(model, tok, inp, out, config=GREEDY, progress=False)  # complete: nothing to do
    assert (again.resumed, again.computed) == (10, 0)
    assert out.read_bytes() == (tmp_path / "straight.jsonl").read_bytes()


def test_sigkill_mid_run_then_same_command_answers_each_input_once(lm, run_dir, tmp_path):
    model, tok = lm
    inp = write_prompts(tmp_path / "in.jsonl", 16)
    cfg = GREEDY.replace(max_new_tokens=32)
    run_batch(model, tok, inp, tmp_path / "straight.jsonl", config=cfg, batch_size=4, progress=False)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "neurallayers", "batch", str(run_dir), "--input", str(inp), "--output", str(out),
           "--temperature", "0", "--max-new-tokens", "32", "--batch-size", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    record = out.with_name(out.name + ".progress.json")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads(record.read_text())["committed_bytes"] > 0:
                break
        except (OSError, ValueError):
            pass  # not written yet
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stdout.read().decode()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not json.loads(record.read_text())["complete"]
    done_before = len(out.read_bytes().split(b"\n")) - 1
    assert 0 < done_before < 16
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    rows = results(out)
    assert sorted(r["id"] for r in rows) == sorted(f"p{i}" for i in range(16))  # each exactly once
    assert out.read_bytes() == (tmp_path / "straight.jsonl").read_bytes()
    assert "from an earlier run" in resumed.stdout


# ----- bad input -----
BAD_LINES = [
    ('{"prompt": "a"}\n{"prompt": "b"\n', "line 2: not valid JSON"),
    ('["a"]\n', "line 1: expected a JSON object"),
    ('{"id": 1}\n', "line 1: needs exactly one of 'prompt' or 'text'"),
    ('{"prompt": "a", "text": "b"}\n', "line 1: needs exactly one"),
    ('{"prompt": "   "}\n', "line 1: 'prompt' must be a non-empty string"),
    ('{"prompt": 5}\n', "line 1: 'prompt' must be a non-empty string"),
    ('{"prompt": "a", "temprature": 0}\n', "line 1: unknown field 'temprature' \\(did you mean 'temperature'\\?\\)"),
    ('{"prompt": "a", "id": 1.5}\n', "line 1: 'id' must be a string or an integer"),
    ('{"id": "x", "prompt": "a"}\n\n{"id": "x", "prompt": "b"}\n', "line 3: id 'x' is already used on line 1"),
    ('{"prompt": "a", "temperature": -1}\n', "line 1: temperature=-1: must be >= 0"),
    ('{"prompt": "a", "top_p": "high"}\n', "line 1: top_p='high': must be a finite number"),
    ('{"prompt": "' + "ab" * 40 + '"}\n', "line 1: the prompt has 80 tokens but the model's context length is 64"),
    ("\n\n", "holds no records"),
    (b'{"prompt": "\xff"}\n', "line 1: not valid UTF-8"),
    # JSON escapes half a surrogate pair: the prompt's error named no line; an id's came after the work, unnamed
    ('{"prompt": "a\\ud83d"}\n', "line 1: 'prompt' has a lone surrogate \\(U\\+D83D\\) at position 1"),
    ('{"prompt": "a"}\n{"id": "x\\udc00", "prompt": "b"}\n', "line 2: 'id' has a lone surrogate \\(U\\+DC00\\)"),
    ('{"prompt": "a", "stop": ["b", "\\ud800"]}\n', "line 1: 'stop' has a lone surrogate"),
]


@pytest.mark.parametrize(("content", "message"), BAD_LINES)
def test_bad_lines_are_named(lm, tmp_path, content, message):
    model, tok = lm
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message):
        run_batch(model, tok, inp, tmp_path / "out.jsonl", config=GREEDY, progress=False)
    assert not (tmp_path / "out.jsonl").exists()  # checked before anything is written


def test_bad_settings_and_outputs(lm, tmp_path):
    model, tok = lm
    inp = write_prompts(tmp_path / "in.jsonl", 2)
    with pytest.raises(ValueError, match="need an encoder model"):
        run_batch(model, tok, inp, tmp_path / "v.npy", progress=False)
    with pytest.raises(ValueError, match="output o.csv: results are written as JSON lines: name the file .jsonl$"):
        run_batch(model, tok, inp, tmp_path / "o.csv", progress=False)
    assert not (tmp_path / "o.csv").exists()
    with pytest.raises(ValueError, match="num_return_sequences=2: batch writes one result per input line"):
        run_batch(model, tok, inp, tmp_path / "o.jsonl", config=GREEDY.replace(num_return_sequences=2), progress=False)
    with pytest.raises(ValueError, match="batch_size=0"):
        run_batch(model, tok, inp, tmp_path / "o.jsonl", batch_size=0, progress=False)
    with pytest.raises(FileNotFoundError, match="input file not found"):
        run_batch(model, tok, tmp_path / "missing.jsonl", tmp_path / "o.jsonl", progress=False)
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text("keep me\n")
    with pytest.raises(ValueError, match="not the output of an interrupted batch run.*--overwrite"):
        run_batch(model, tok, inp, foreign, config=GREEDY, progress=False)
    assert foreign.read_text() == "keep me\n"
    res = run_batch(model, tok, inp, foreign, config=GREEDY, overwrite=True, progress=False)
    assert res.computed == 2 and len(results(foreign)) == 2


def test_a_line_whose_setting_fails_while_decoding_is_named(lm, tmp_path):
    """no_repeat_ngram_size on a small vocabulary can leave no token to choose, which only decoding finds: the error
    names the input line (a rerun stops at it again); the lines before it are kept."""
    model, tok = lm
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "prompt": "the"}) + "\n" + json.dumps(
        {"id": "b", "prompt": "fox", "no_repeat_ngram_size": 1, "max_new_tokens": 60, "ignore_eos": True}) + "\n")
    with pytest.raises(ValueError, match=r"in\.jsonl line 2: no_repeat_ngram_size=1 bans every "):
        run_batch(model, tok, inp, tmp_path / "out.jsonl", config=GREEDY, progress=False)
    assert [r["id"] for r in results(tmp_path / "out.jsonl")] == ["a"]


@pytest.mark.parametrize(("flags", "said"), [
    ([], "the same command goes on from them"),
    (["--overwrite"], "the same command without --overwrite goes on from them"),
])
def test_cli_ctrl_c_says_how_to_go_on(run_dir, tmp_path, capsys, monkeypatch, flags, said):
    """A Ctrl-C said only "interrupted": nothing told the user that the records written stay and a rerun resumes;
    with --overwrite, "the same command goes on from them" discarded the records it said were kept."""
    import neurallayers.batch
    from neurallayers.__main__ import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(neurallayers.batch, "run_batch", interrupted)
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "a"}\n')
    out = str(tmp_path / "o.jsonl")
    assert main(["batch", str(run_dir), "--input", str(inp), "--output", out, *flags]) == 130
    err = capsys.readouterr().err
    assert said in err and err.rstrip().endswith("interrupted")


def test_interrupted_note_names_the_parts_folder_of_vectors(tmp_path):
    """Vectors are joined into the .npy at the end: before that, the records are in its parts folder."""
    from neurallayers.cli.batch import _interrupted_note

    assert f"kept in {tmp_path / 'v.NPY.parts'}:" in _interrupted_note(tmp_path / "v.NPY", overwrite=False)
    assert f"kept in {tmp_path / 'r.jsonl'}:" in _interrupted_note(tmp_path / "r.jsonl", overwrite=False)


def test_cli_prints_one_line_for_a_bad_line(run_dir, tmp_path, capsys):
    from neurallayers.__main__ import main

    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "a"}\n{"promt": "b"}\n')
    assert main(["batch", str(run_dir), "--input", str(inp), "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "line 2: unknown field 'promt' (did you mean 'prompt'?)" in err
    assert main(["batch", str(run_dir), "--input", str(tmp_path / "nope.jsonl"), "--output", "o.jsonl"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_resume_in_another_dtype_or_with_other_end_ids_is_refused(lm, run_dir, tmp_path, monkeypatch):
    """A run started in bf16 and resumed in fp32 (--dtype) mixed the two precisions' results in one file; so did
    one resumed after generation_config.json named another end-of-text id."""
    model, tok = lm
    inp = write_prompts(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    half, _ = load(run_dir, dtype=torch.bfloat16)
    run_interrupted(monkeypatch, "generate", 1, half, tok, inp, out, config=GREEDY, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="changed since that run started: the model's dtype: bfloat16 -> float32"):
        run_batch(model, tok, inp, out, config=GREEDY, batch_size=2, progress=False)
    stops = Tokenizer.load(run_dir)
    stops.extra_eos_ids = [3]  # a generation_config.json eos_token_id added meanwhile: generations end elsewhere
    with pytest.raises(ValueError, match=r"changed since that run started: the model's eos_ids: \[\d+\] -> \[\d+, 3\]"):
        run_batch(half, stops, inp, out, config=GREEDY, batch_size=2, progress=False)
    res = run_batch(half, tok, inp, out, config=GREEDY, batch_size=2, progress=False)
    assert (res.resumed, res.computed) == (2, 2)
    # a record written before the dtype and the end ids were kept resumes as before
    record = out.with_name(out.name + ".progress.json")
    data = json.loads(record.read_text())
    del data["fingerprint"]["model"]["dtype"], data["fingerprint"]["model"]["eos_ids"]
    data["complete"] = False
    record.write_text(json.dumps(data))
    assert run_batch(half, tok, inp, out, config=GREEDY, progress=False).computed == 0


def test_a_second_run_into_the_same_output_is_refused(lm, tmp_path):
    """The same command started twice (a second terminal, a scheduler's retry) appended the same records and raced
    on the progress record: both failed, and the output could only be started again (--overwrite)."""
    import fcntl

    model, tok = lm
    inp = write_prompts(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    with (tmp_path / "out.jsonl.lock").open("a") as held:  # what the run in progress holds
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ValueError, match="another batch run is writing .*out.jsonl; wait for it to end"):
            run_batch(model, tok, inp, out, config=GREEDY, overwrite=True, progress=False)
        assert not out.exists()
    assert run_batch(model, tok, inp, out, config=GREEDY, progress=False).computed == 3
    assert not (tmp_path / "out.jsonl.lock").exists()


def test_model_change_is_refused(lm, run_dir, tmp_path, monkeypatch):
    model, tok = lm
    inp = write_prompts(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    run_interrupted(monkeypatch, "generate", 1, model, tok, inp, out, config=GREEDY, batch_size=2,
                    model_files=model_files_identity(run_dir), progress=False)
    files = {**model_files_identity(run_dir), "model.safetensors": [1, 2]}
    with pytest.raises(ValueError, match=r"the model.s files: model\.safetensors \(changed\)\. "):
        run_batch(model, tok, inp, out, config=GREEDY, model_files=files, progress=False)


def test_a_run_interrupted_before_a_new_config_field_resumes(lm, tmp_path, monkeypatch):
    """A progress record written before ModelConfig had final_norm lacks it: the field at None is the same model,
    so the run resumes (it was refused as "the model's config" changed); a field that does differ is still refused."""
    model, tok = lm
    inp = write_prompts(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    run_interrupted(monkeypatch, "generate", 1, model, tok, inp, out, config=GREEDY, batch_size=2, progress=False)
    record_path = tmp_path / "out.jsonl.progress.json"
    record = json.loads(record_path.read_text())
    config = record["fingerprint"]["model"]["config"]
    assert config.pop("final_norm") is None
    record_path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="the model's config"):
        run_batch(model.__class__(model.config.replace(norm_eps=1e-6)), tok, inp, out, config=GREEDY, progress=False)
    res = run_batch(model, tok, inp, out, config=GREEDY, batch_size=2, progress=False)
    assert (res.resumed, res.computed) == (2, 2)
    assert results(out) == results(run_batch(model, tok, inp, tmp_path / "straight.jsonl", config=GREEDY,
                                             progress=False).output)


# ----- embeddings -----
@pytest.fixture(scope="module")
def encoder():
    """A random BERT-style encoder (2 layers, 32 wide) and a char tokenizer."""
    from neurallayers.models import build_model

    tok = Tokenizer.train_char(SENTENCES)
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("bert-mini").replace(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2,
                                                     n_embd=32)
    return build_model(cfg).eval(), tok


SENTENCES = ["A man is eating food.", "A man rides a horse.", "Two dogs play in the snow.", "The stock market fell.",
             "She plays the violin beautifully at the concert hall tonight.", "Rain.", "Cats sleep a lot."]


def write_texts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": i * 10, "text": s}) + "\n" for i, s in enumerate(SENTENCES)))
    return path


def test_embeddings_npy_resume_npz_and_jsonl(encoder, tmp_path, monkeypatch):
    from neurallayers.embeddings import embed

    model, tok = encoder
    inp = write_texts(tmp_path / "in.jsonl")
    want = embed(model, tok, SENTENCES).numpy()
    out = tmp_path / "vectors.npy"
    # the progress record and two parts written, then a kill
    run_interrupted(monkeypatch, "_write_atomic", 3, model, tok, inp, out, batch_size=2, progress=False)
    assert not out.exists() and len(list(out.with_name(out.name + ".parts").glob("*.npz"))) == 2
    res = run_batch(model, tok, inp, out, batch_size=2, progress=False)
    assert (res.resumed, res.computed) == (4, 3)
    got = np.load(out)
    assert got.shape == (7, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not out.with_name(out.name + ".parts").exists()

    run_batch(model, tok, inp, tmp_path / "v.npz", batch_size=3, progress=False)
    with np.load(tmp_path / "v.npz") as z:
        assert z["ids"].tolist() == [i * 10 for i in range(7)]
        np.testing.assert_allclose(z["embeddings"], want, atol=1e-5)
    big = tmp_path / "big.jsonl"  # an integer id past int64 overflowed at the very end, on every rerun
    big.write_text('{"id": 123456789012345678901234, "text": "Rain."}\n{"id": 7, "text": "Cats sleep a lot."}\n')
    run_batch(model, tok, big, tmp_path / "big.npz", progress=False)
    with np.load(tmp_path / "big.npz") as z:
        assert z["ids"].tolist() == ["123456789012345678901234", "7"]
        np.testing.assert_allclose(z["embeddings"], want[[5, 6]], atol=1e-5)
    run_batch(model, tok, inp, tmp_path / "v.jsonl", batch_size=3, pooling="cls", normalize=False, progress=False)
    rows = results(tmp_path / "v.jsonl")
    assert [r["id"] for r in rows] == [i * 10 for i in range(7)]
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]),
                               embed(model, tok, SENTENCES, pooling="cls", normalize=False).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"v.txt: .* name the file .jsonl; embeddings may also go to .npy or .npz"):
        run_batch(model, tok, inp, tmp_path / "v.txt", progress=False)
    with pytest.raises(ValueError, match=r"max_length=65: must be in \[2, 64\]"):
        run_batch(model, tok, inp, tmp_path / "y.npy", max_length=65, progress=False)
    with pytest.raises(ValueError, match="line 1: unknown field 'temperature'"):
        (tmp_path / "gen.jsonl").write_text('{"text": "a", "temperature": 0}\n')
        run_batch(model, tok, tmp_path / "gen.jsonl", tmp_path / "x.npy", progress=False)


def test_a_full_disk_is_one_line_and_the_rerun_goes_on(lm, tmp_path, monkeypatch):
    """A full disk raised a bare OSError (a 28-line traceback from the CLI); it is a WriteError saying what is kept,
    and the same command afterwards gives the uninterrupted run's output."""
    import errno

    from neurallayers.files import WriteError

    model, tok = lm
    inp = write_prompts(tmp_path / "in.jsonl", 6)
    run_batch(model, tok, inp, tmp_path / "straight.jsonl", config=GREEDY, batch_size=2, progress=False)
    out, fsync, calls = tmp_path / "out.jsonl", os.fsync, []

    def full_after_two(fd):
        calls.append(fd)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full_after_two)
        with pytest.raises(WriteError, match=r"out.jsonl.*: No space left on device; the results written before are "
                                             r"kept: run the same command again"):
            run_batch(model, tok, inp, out, config=GREEDY, batch_size=2, progress=False)
    run_batch(model, tok, inp, out, config=GREEDY, batch_size=2, progress=False)
    assert out.read_bytes() == (tmp_path / "straight.jsonl").read_bytes()


def test_a_platform_without_fcntl_still_runs(lm, tmp_path, monkeypatch):
    """Windows has no fcntl: the output lock made every batch run fail there with ModuleNotFoundError."""
    import sys

    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError, as on Windows
    model, tok = lm
    inp = write_prompts(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    assert run_batch(model, tok, inp, out, config=GREEDY, progress=False).computed == 3
    assert len(results(out)) == 3 and not (tmp_path / "out.jsonl.lock").exists()


def test_a_file_system_without_flock_still_runs(lm, tmp_path, monkeypatch):
    """Some network file systems refuse flock (ENOLCK): the run failed with a bare OSError traceback."""
    import errno
    import fcntl

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    model, tok = lm
    inp = write_prompts(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    assert run_batch(model, tok, inp, out, config=GREEDY, progress=False).computed == 3
    assert len(results(out)) == 3


def test_npz_ids_that_are_equal_as_text_are_refused_before_any_work(encoder, tmp_path):
    """ids 1 and "1" are two ids, but a .npz holds all ids as strings once one is not an int64: both rows were
    named "1"."""
    model, tok = encoder
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": 1, "text": "Rain."}\n{"id": "1", "text": "Cats sleep a lot."}\n')
    with pytest.raises(ValueError, match=r"in.jsonl line 2: id '1' and line 1's id 1 are both '1' in a .npz file"):
        run_batch(model, tok, inp, tmp_path / "v.npz", progress=False)
    assert not list(tmp_path.glob("v.npz*"))
    run_batch(model, tok, inp, tmp_path / "v.jsonl", progress=False)  # JSON keeps them apart
    assert [r["id"] for r in results(tmp_path / "v.jsonl")] == [1, "1"]


@pytest.fixture(scope="module")
def enc_dir(encoder, tmp_path_factory) -> Path:
    """The encoder as a run directory, for the CLI."""
    model, tok = encoder
    out = tmp_path_factory.mktemp("enc")
    RunConfig(model=model.config).to_yaml(out / "config.yaml")
    tok.save(out)
    save_model(out, model.state_dict())
    return out


def test_cli_refuses_the_other_kind_of_models_flags(enc_dir, run_dir, tmp_path, capsys):
    """An encoder embeds: batch read --temperature or --top-k and ignored them without a word; a decoder ignored
    --pooling. Defaults (batch's own --seed 0 too) still pass."""
    from neurallayers.__main__ import main

    inp = write_texts(tmp_path / "in.jsonl")
    args = ["--input", str(inp), "--no-progress"]
    out = tmp_path / "v.npy"
    assert main(["batch", str(enc_dir), *args, "--output", str(out), "--temperature", "0.5", "--top-k", "3",
                 "--stop-token-id", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and ("is an encoder, which embeds: --temperature, --top-k, --stop-token-id are for a "
                                "decoder's generation; leave them out") in err
    assert not out.exists()
    assert main(["batch", str(run_dir), *args, "--output", str(tmp_path / "g.jsonl"), "--pooling", "cls"]) == 2
    assert "is a decoder, which generates: --pooling is for an encoder's embeddings; leave it out" in \
        capsys.readouterr().err
    assert main(["batch", str(enc_dir), *args, "--output", str(out), "--seed", "0", "--pooling", "cls"]) == 0
    assert np.load(out).shape == (len(SENTENCES), 32)


@pytest.mark.parametrize(("flags", "said"), [
    (["--max-length", "1"], "--max-length 1: must be in [2, 64]"),
    (["--max-length", "65"], "--max-length 65: must be in [2, 64]"),
    (["--pooling", "mean+avg"], "--pooling mean+avg: valid are mean, cls, max"),
])
def test_cli_names_the_embedding_flag_it_refuses(enc_dir, tmp_path, capsys, flags, said):
    """The errors named run_batch's arguments ("max_length=1: must be in [2, 64]", "pooling='mean+avg': ..."), which
    the command line never typed."""
    from neurallayers.__main__ import main

    out = tmp_path / "v.npy"
    assert main(["batch", str(enc_dir), "--input", str(write_texts(tmp_path / "in.jsonl")), "--output", str(out),
                 "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"neurallayers batch: error: {said}") and err.count("\n") == 1, err
    assert not out.exists()


def test_a_platform_that_cannot_open_folders_still_runs(lm, tmp_path, monkeypatch):
    """Windows refuses os.open on a folder (PermissionError): syncing the folder after each rename failed every run
    there at its first write ('<folder>: Permission denied'), though the README says batch runs on Windows."""
    model, tok = lm
    inp = write_prompts(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    real_open = os.open

    def windows_open(path, *a, **k):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", windows_open)
    assert run_batch(model, tok, inp, out, config=GREEDY, progress=False).computed == 3
    assert len(results(out)) == 3


def test_a_run_interrupted_before_more_model_files_were_compared_resumes(lm, run_dir, tmp_path, monkeypatch):
    """A progress record written when only the config, tokenizer.json/tokenizer_config.json, the index and the
    top-level weights were compared lacks an HF folder's vocab.json, merges.txt, special_tokens_map.json ...: the
    same unchanged folder resumes (it was refused as "the model's files: merges.txt (new), vocab.json (new)"), and
    a file that did change is still refused."""
    import shutil

    model, tok = lm
    folder = tmp_path / "model"
    shutil.copytree(run_dir, folder)
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json"):  # as an HF GPT-2 folder ships them
        (folder / name).write_text("{}\n")
    old_names = ("config.yaml", "config.json", "tokenizer.json", "tokenizer_config.json",
                 "model.safetensors.index.json")
    old = {name: value for name, value in model_files_identity(folder).items()
           if name in old_names or ("/" not in name and name.endswith(".safetensors"))}
    inp = write_prompts(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    run_interrupted(monkeypatch, "generate", 1, model, tok, inp, out, config=GREEDY, batch_size=2,
                    model_files=old, progress=False)
    record_path = tmp_path / "out.jsonl.progress.json"
    record = json.loads(record_path.read_text())
    record["fingerprint"].pop("files_scheme", None)  # as that version wrote it
    record_path.write_text(json.dumps(record))
    res = run_batch(model, tok, inp, out, config=GREEDY, batch_size=2, model_files=model_files_identity(folder),
                    progress=False)
    assert (res.resumed, res.computed) == (2, 2)
    changed = {**model_files_identity(folder), "tokenizer.json": [1, 2]}
    with pytest.raises(ValueError, match=r"the model.s files: tokenizer\.json \(changed\)"):
        run_batch(model, tok, inp, out, config=GREEDY, model_files=changed, progress=False)


def test_the_model_files_identity_holds_added_tokens_json(tmp_path):
    """A folder of vocab.json + merges.txt takes the tokens added_tokens.json adds (a fine-tune's pad token): another
    tokenizer, which an OpenAI Batch file's resume, keyed by the model files alone, must notice."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"])
    hf.train_from_iterator([TEXT] * 4, trainer)
    hf.model.save(str(tmp_path))  # vocab.json and merges.txt
    before, plain = model_files_identity(tmp_path), Tokenizer.load(tmp_path).encode("a <pad>")
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<pad>": hf.get_vocab_size()}))
    assert Tokenizer.load(tmp_path).encode("a <pad>") != plain  # the file is read ...
    assert model_files_identity(tmp_path) != before  # ... and compared
