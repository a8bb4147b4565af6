"""Defaults and figures the README states, read from its sentences and checked against the code (parsing and constants;
no model is trained, and only a tiny random one is served, where the claim is what a server answers)."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from neurallayers.__main__ import build_verb_parser

ROOT = Path(__file__).resolve().parents[1]
README = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())  # sentences span lines
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
           "ten": 10, "eleven": 11, "twelve": 12}


def stated(pattern: str) -> tuple[str, ...]:
    """The groups of the README's one sentence part that `pattern` matches."""
    found = re.findall(pattern, README)
    assert len(found) == 1, f"the README should state {pattern!r} once, found {found}"
    return found[0] if isinstance(found[0], tuple) else (found[0],)


def defaults(verb: str) -> dict[str, object]:
    """Each option of `neurallayers VERB` and its default."""
    _, parser = build_verb_parser(verb)
    return {option: action.default for action in parser._actions for option in action.option_strings}


def test_the_generation_defaults_of_the_api_and_of_the_cli():
    from neurallayers.cli.generate import generation_config
    from neurallayers.generation import GenerationConfig

    api_tokens, api_temperature = stated(r"`nl\.GenerationConfig`'s defaults are `max_new_tokens=(\d+)` and "
                                         r"`temperature=([\d.]+)`")
    assert (GenerationConfig().max_new_tokens, GenerationConfig().temperature) == (int(api_tokens),
                                                                                   float(api_temperature))
    cli_tokens, cli_temperature = stated(r"the CLI's are (\d+) tokens at ([\d.]+)")
    for verb in ("generate", "chat", "batch"):  # the verbs that sample text, through one generation_config()
        _, parser = build_verb_parser(verb)
        args = parser.parse_args(["runs/x", *(["--input", "in.jsonl", "--output", "out.jsonl"] * (verb == "batch"))])
        config = generation_config(args)
        assert (config.max_new_tokens, config.temperature) == (int(cli_tokens), float(cli_temperature)), verb


def test_verbs_that_load_a_model_take_device_and_dtype():
    device, dtypes = stated(r"Verbs that load a model take `--device` \(default `(\w+)`: cuda, then mps, then cpu\) "
                            r"and `--dtype` \(([\w, ]+)\)")
    for verb in ("generate", "chat", "eval", "serve", "batch", "ui"):
        _, parser = build_verb_parser(verb)
        options = {option: action for action in parser._actions for option in action.option_strings}
        assert options["--device"].default == device, verb
        assert options["--dtype"].choices == dtypes.split(", "), verb


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    import torch

    from neurallayers.training.runtime import resolve_device

    for cuda, mps, picked in ((True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda mps=mps: mps)
        assert resolve_device("auto").type == picked


def test_training_defaults_the_readme_states():
    from neurallayers.training.config import DataConfig, TrainConfig

    train = TrainConfig()
    assert train.keep_last == int(stated(r"\(the run keeps its last (\d+)\)")[0])
    assert train.mask_prob == float(stated(r"`train\.mask_prob` \(([\d.]+)\)")[0])
    skips = stated(r"`max_consecutive_skips` \((\d+); `null`: never\)")[0]
    assert train.max_consecutive_skips == int(skips)
    assert TrainConfig(max_consecutive_skips=None).max_consecutive_skips is None  # null is taken
    assert DataConfig().text_field == stated(r"`--data\.text_field`, default `(\w+)`")[0]


def test_eval_masks_other_data_at_the_stated_rate():
    from neurallayers.cli import eval as eval_verb

    assert eval_verb.MASK_PROB == float(stated(r"\(`--mask-prob`, default ([\d.]+)\)")[0])


def test_the_token_cache_lives_where_the_readme_says(monkeypatch):
    from neurallayers.files import default_cache_dir

    home, env = stated(r"into a token cache \(`([^`]+)`, `\$(\w+)`\)")
    monkeypatch.delenv(env, raising=False)
    assert Path(default_cache_dir()) == Path(home).expanduser()
    monkeypatch.setenv(env, "/elsewhere")
    assert default_cache_dir() == "/elsewhere"


def test_serve_batch_and_ui_defaults():
    from neurallayers.serve.middleware import MAX_BODY_BYTES
    from neurallayers.ui.logic import ATTENTION_MAX_TOKENS

    assert defaults("serve")["--host"] == stated(r"It listens on ([\d.]+) unless told otherwise")[0]
    assert defaults("serve")["--shutdown-timeout"] == float(stated(r"`--shutdown-timeout` \(default (\d+) s\)")[0])
    assert MAX_BODY_BYTES == int(stated(r"a body over (\d+) MiB is 413")[0]) * 2**20
    assert defaults("serve")["--max-body-mb"] * 2**20 == MAX_BODY_BYTES
    assert defaults("batch")["--seed"] == int(stated(r"Sampling is seeded \(`--seed`, default (\d+)\)")[0])
    host, port = stated(r"neurallayers ui runs/demo # http://([\d.]+):(\d+) \(--host, --port\)")
    assert (defaults("ui")["--host"], defaults("ui")["--port"]) == (host, int(port))
    assert ATTENTION_MAX_TOKENS == int(stated(r"for a text \(up to (\d+) tokens\)")[0])


def test_the_demo_plan_gives_the_step_counts_the_readme_derives(monkeypatch):
    # "the demo now plans 85% ..., so at the same step times it trains 1,397 and 277 steps": the step times are
    # those of the two quoted runs' first lines
    from neurallayers.cli import demo

    runs = [(int(batch), float(ms)) for batch, ms in
            re.findall(r"one step of (\d+) sequences takes (\d+) ms here: training", README)]
    share, *counts = stated(r"the demo now plans (\d+)% \(below\), so at the same step times it trains ([\d,]+) and "
                            r"([\d,]+) steps")
    assert len(runs) == len(counts) == 2 and int(share) == 85
    for (batch, ms), count in zip(runs, counts, strict=True):
        monkeypatch.setattr(demo, "measure_step_seconds", lambda cfg, b=batch, s=ms: cfg.train.batch_size / b * s / 1e3)
        assert demo.plan(4.0)[:2] == (batch, int(count.replace(",", "")))


class _FitCalled(Exception):
    pass


def test_the_demo_stops_training_at_the_stated_cap(tmp_path, monkeypatch):
    from neurallayers.cli import demo
    from neurallayers.training import trainer

    minutes, cap = stated(r"the schedule finishes in about (\d+) minutes on any machine.*?training stops at ([\d.]+) "
                          r"minutes in any case")
    assert defaults("demo")["--minutes"] == float(minutes)
    seen = []

    def fit(run_cfg, out_dir, *, resume):
        seen.append(run_cfg.train.max_minutes)
        raise _FitCalled  # stop before any training

    monkeypatch.setattr(trainer, "fit", fit)
    monkeypatch.setattr(demo, "plan", lambda minutes: (16, 1000, 0.1))
    with pytest.raises(_FitCalled):
        demo.run(argparse.Namespace(out=str(tmp_path / "demo"), minutes=float(minutes), max_steps=None, resume=False))
    assert seen == [float(cap)]


def test_the_count_of_chat_templates_is_the_families_the_oracle_renders():
    # "N published chat templates ... render the prompt and ids apply_chat_template gives": the families of
    # tests/serve/test_chat_templates_hf.py, each rendered and encoded by both
    tree = ast.parse((ROOT / "tests" / "serve" / "test_chat_templates_hf.py").read_text(encoding="utf-8"))
    (families,) = [node.value for node in tree.body
                   if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["FAMILIES"]]
    assert NUMBERS[stated(r"(\w+) published chat templates")[0]] == len(families.keys)


def test_a_batch_line_overrides_the_settings_the_readme_lists():
    from neurallayers.batch import LINE_PARAMS

    listed = stated(r"a line may override any sampling setting \(([^)]*)\)")[0]
    names = set(re.findall(r"`(\w+)`", listed))
    assert "the penalties" in listed  # repetition, presence and frequency
    assert set(LINE_PARAMS) == names | {"repetition_penalty", "presence_penalty", "frequency_penalty"}


def test_the_server_has_the_routes_the_readme_lists_and_no_others():
    pytest.importorskip("fastapi")
    from neurallayers.config import ModelConfig
    from neurallayers.data.tokenizers import Tokenizer
    from neurallayers.models.decoder import DecoderLM
    from neurallayers.serve.app import create_app

    paragraph = README.split("Routes: ", 1)[1].split("`/openapi.json`", 1)[0] + "`/openapi.json`"  # the last named
    listed = set(re.findall(r"`(?:POST )?(/[\w/{}.]+)", paragraph))
    tok = Tokenizer.train_char(["abc"])
    model = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=1, n_embd=8))
    served = {re.sub(r"\{\w+(:\w+)?\}", "{id}", route.path) for route in create_app((model.eval(), tok)).routes}
    assert listed == served - {"/docs", "/docs/oauth2-redirect", "/redoc"}  # FastAPI's own pages


def test_the_eval_that_repeats_trainings_val_loss_takes_the_configs_batches():
    import yaml

    from neurallayers.training.config import TrainConfig

    batch, batches = stated(r"neurallayers eval runs/llama --batch-size (\d+) --max-batches (\d+)")
    assert "neurallayers train --config configs/llama-shakespeare.yaml --out runs/llama" in README
    train = yaml.safe_load((ROOT / "configs" / "llama-shakespeare.yaml").read_text(encoding="utf-8"))["train"]
    assert int(batch) == train["batch_size"]
    assert "eval_batches" not in train and int(batches) == TrainConfig().eval_batches


def test_a_served_model_is_named_by_its_folder(tmp_path):
    # the CLI tour serves runs/llama while the Serving examples send "demo": a newcomer's first request got a 404
    import torch
    from fastapi.testclient import TestClient

    from neurallayers.config import ModelConfig
    from neurallayers.data.tokenizers import Tokenizer
    from neurallayers.models import build_model
    from neurallayers.serve.app import create_app
    from neurallayers.training.checkpoint import save_model
    from neurallayers.training.config import RunConfig

    name, other = stated(r'requests name the model by its folder.s name, "(\w+)" here, "(\w+)" in Serving')
    assert f"neurallayers serve runs/{name} " in README and f"neurallayers serve runs/{other} " in README
    assert f'"model": "{other}"' in README and f'model="{other}"' in README
    run = tmp_path / name
    tok = Tokenizer.train_char(["To be, or not to be, that is the question.\n"])
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    run.mkdir()
    RunConfig(model=cfg).to_yaml(run / "config.yaml")
    save_model(run, build_model(cfg).state_dict())
    tok.save(run)
    with TestClient(create_app(str(run))) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [name]
        asked = {"model": other, "prompt": "To", "max_tokens": 1}
        assert client.post("/v1/completions", json=asked).json()["error"]["param"] == "model"
        assert client.post("/v1/completions", json={**asked, "model": name}).status_code == 200


def test_every_compiled_decode_speed_up_claim_states_the_one_range_the_serving_benchmark_measured():
    # the Serving block and `serve --help` said 1.3-2x where the same README said the server decodes 1.5-3x faster
    # compiled and its benchmark measured 2.03x-2.78x: one claim of the one step, holding the figures behind it
    span = r"(\d+(?:\.\d+)?-\d+(?:\.\d+)?)x"
    ranges = {*stated(rf"the server then decode {span} faster on CPU"),
              *stated(rf"compile the decode step before serving: {span} the tokens/s on CPU")}
    for verb in ("generate", "serve"):
        _, parser = build_verb_parser(verb)
        (action,) = [action for action in parser._actions if "--compile" in action.option_strings]
        ranges |= set(re.findall(rf"{span} the (?:decode )?tokens/s", action.help))
    assert len(ranges) == 1, f"the compiled decode step's speed-up is stated as {sorted(ranges)}"
    low, high = map(float, ranges.pop().split("-"))
    measured = stated(r"`serve --compile` against the same batching server without it \([^)]*\): ([^;]*);")[0]
    ratios = [float(ratio) for ratio in re.findall(r"\((\d+\.\d+)x\)", measured)]
    assert len(ratios) == 3 and all(low <= ratio <= high for ratio in ratios)
