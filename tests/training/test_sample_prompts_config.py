"""train.sample_prompts: an empty prompt is refused when the config is made, naming its index; it was accepted, and
only after training did sampling fail ("prompt 0 is empty") and write no samples for any prompt. Whitespace is text
generate() accepts (the default prompt is "\\n"), so it stays allowed."""

from __future__ import annotations

import contextlib
import io

import pytest
from nl_train_helpers import tiny_run

from neurallayers.__main__ import main
from neurallayers.training import RunConfig, TrainConfig, fit


@pytest.mark.parametrize(("prompts", "index"), [(["", "Once"], 0), (["Once", ""], 1), ([""], 0), (["a", "b", ""], 2)])
def test_an_empty_prompt_is_refused_by_index(prompts, index):
    with pytest.raises(ValueError, match=rf"^TrainConfig\.sample_prompts\[{index}\]='': a sample prompt needs at "
                                         r"least one character"):
        TrainConfig(sample_prompts=prompts)


def test_a_yaml_config_names_the_field():
    with pytest.raises(ValueError, match=r"sample_prompts\[0\]=''"):
        RunConfig.from_dict({"model": {"preset": "tiny"}, "train": {"sample_prompts": ["", "Once"]}})


def test_the_cli_names_the_override(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path / "cache"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["train", "--preset", "tiny", "--train.sample_prompts", '["", Once]', "--out", "run"])
        except SystemExit as e:
            code = e.code
    assert code == 2
    assert err.getvalue().startswith("neurallayers train: error: --train.sample_prompts[0]='': a sample prompt needs")
    assert not (tmp_path / "run").exists()


def test_whitespace_prompts_are_sampled(tmp_path):
    """generate() is the oracle of what a prompt may be: whitespace prompts get their samples written."""
    run = tiny_run(tmp_path, max_steps=2, eval_interval=0, save_interval=0, sample_prompts=[" ", "\n", "the"],
                   sample_tokens=4)
    fit(run, tmp_path / "run", progress=False)
    samples = (tmp_path / "run/samples.txt").read_text()
    assert all(f"=== prompt: {p!r}" in samples for p in (" ", "\n", "the"))


def test_no_prompts_still_mean_no_samples(tmp_path):
    assert TrainConfig(sample_prompts=[]).sample_prompts == []


def test_a_prompt_longer_than_the_context_leaves_the_others_their_samples(tmp_path, caplog):
    """One prompt over the context (or one the tokenizer turns into no tokens) wrote no samples for any prompt ("sample
    prompts fill the context"), and a long one cut every other prompt's budget to what was left of its own context.
    Each prompt that fits is sampled as generate() samples it alone; the others are named."""
    import logging

    import torch

    from neurallayers import ModelConfig, build_model
    from neurallayers.data import Tokenizer
    from neurallayers.generation import GenerationConfig, generate
    from neurallayers.training.samples import write_samples

    tokenizer = Tokenizer.train_char(["the quick brown fox jumps over the lazy dog\n"])
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                                    dropout=0.0)).eval()
    long = "the lazy dog jumps" * 2  # 36 tokens: no room in a context of 16
    cfg = TrainConfig(sample_prompts=["\n", long, "the fox"], sample_tokens=12, seed=1)
    with caplog.at_level(logging.WARNING, logger="neurallayers.training"):
        write_samples(model, tokenizer, cfg, tmp_path / "samples.txt", torch.device("cpu"))
    assert (f"sample prompt 1 ({long!r}) has 36 tokens, more than the context (block_size=16): not sampled"
            in caplog.text)
    samples, lengths = (tmp_path / "samples.txt").read_text(), []
    for prompt in ("\n", "the fox"):
        alone = generate(model, tokenizer, prompt, GenerationConfig(max_new_tokens=12, temperature=0.8, top_k=50,
                                                                     seed=1))[0]
        assert f"=== prompt: {prompt!r}\n{prompt}{alone.text}\n" in samples
        lengths.append(len(alone.token_ids))
    assert repr(long) not in samples
    assert lengths[0] > 16 - len(tokenizer.encode("the fox"))  # not cut to what the longer prompt leaves


def test_a_prompt_the_tokenizer_turns_into_no_tokens_leaves_the_others_their_samples(tmp_path, caplog):
    """A word-level tokenizer has no token for whitespace: the prompt " " became no tokens, generate() refused it
    ("prompt 0 is empty") and the run wrote no samples for any prompt."""
    import logging

    import torch
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    from neurallayers import ModelConfig, build_model
    from neurallayers.data import Tokenizer
    from neurallayers.training.samples import write_samples

    words = ["<eos>", "<unk>", "the", "fox", "jumps"]
    hf = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = Tokenizer(hf, eos_token="<eos>")
    assert tokenizer.encode(" ", add_special_tokens=True) == []
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=len(words), block_size=16, n_layer=1, n_head=2, n_embd=16,
                                    dropout=0.0)).eval()
    cfg = TrainConfig(sample_prompts=[" ", "the fox"], sample_tokens=4, seed=1)
    with caplog.at_level(logging.WARNING, logger="neurallayers.training"):
        write_samples(model, tokenizer, cfg, tmp_path / "samples.txt", torch.device("cpu"))
    assert "sample prompt 0 (' ') has no tokens in the run's tokenizer: not sampled" in caplog.text
    assert (tmp_path / "samples.txt").read_text().startswith("=== prompt: 'the fox'\nthe fox")
