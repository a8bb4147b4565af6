"""Fine-tuning from pretrained weights (train.init_from): a run directory, a Hugging Face folder, the bundled MiniLM."""

import dataclasses
import logging
import re
import shutil

import pytest
import torch
from nl_train_helpers import ENCODER, step_losses, tiny_run, write_corpus

from neurallayers import ModelConfig, load
from neurallayers.data import RandomWindows, Tokenizer
from neurallayers.training import RunConfig, fit
from neurallayers.training.prepare import prepare_data
from neurallayers.weights import CheckpointError, read_safetensors


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny char-level decoder trained on one text."""
    tmp = tmp_path_factory.mktemp("source")
    run = tiny_run(tmp, model={"dropout": 0.0}, max_steps=30, eval_interval=0, save_interval=0)
    fit(run, tmp / "run", progress=False)
    return tmp / "run"


def fine_tune(tmp_path, init_from, *, model: dict | None = None, data: dict | None = None, **train) -> RunConfig:
    """A run on another text that starts from `init_from`: its model section holds only `model`."""
    corpus = write_corpus(tmp_path / "other.txt", seed=5)
    settings = dict(init_from=str(init_from), max_steps=6, batch_size=4, lr=1e-3, min_lr=1e-4, warmup_steps=1,
                    eval_interval=3, eval_batches=2, log_interval=1, save_interval=3, sample_tokens=0, device="cpu",
                    precision="fp32", seed=11)
    settings.update(train)
    sections = {"train": settings,
                "data": {"source": str(corpus), "cache_dir": str(tmp_path / "cache"), **(data or {})}}
    if model is not None:
        sections["model"] = model
    return RunConfig.from_dict(sections)


def first_batch_loss(model, run: RunConfig, tokenizer) -> float:
    """The loss of `model` on the run's first training batch (what fit logs at step 1 before any update)."""
    _, tokens, run = prepare_data(run, tokenizer=tokenizer, pretrained=True)
    x, y = RandomWindows(tokens.train, block_size=run.model.block_size, batch_size=run.train.batch_size,
                         seed=run.train.seed).batch(0)
    with torch.no_grad():
        return model(x, targets=y).loss.item()


def test_a_fine_tune_starts_from_the_source_run(source, tmp_path):
    run = fine_tune(tmp_path, source)
    pretrained, tokenizer = load(source)
    assert run.model == pretrained.config  # the model section left out: the source's config
    fit(run, tmp_path / "ft", progress=False)
    first = step_losses(tmp_path / "ft")[1]
    assert first == pytest.approx(first_batch_loss(pretrained, run, tokenizer), abs=1e-5)
    scratch = RunConfig(model=run.model, train=dataclasses.replace(run.train, init_from=None, max_steps=1),
                        data=dataclasses.replace(run.data, tokenizer="char"))
    fresh = fit(scratch, tmp_path / "fresh", progress=False)
    assert first < step_losses(fresh.run_dir)[1] - 0.5  # the pretrained model knows the letters already
    saved = Tokenizer.load(tmp_path / "ft")
    assert saved.vocab_size == tokenizer.vocab_size and saved.encode("the fox") == tokenizer.encode("the fox")
    assert RunConfig.from_yaml(tmp_path / "ft/config.yaml").train.init_from == str(source)


def test_resuming_a_fine_tune_is_exact_without_the_source(source, tmp_path):
    """2K steps straight == K steps, stop, resume, K more, the source moved away before the resume (a resume takes
    everything from its checkpoint, and the saved config names every model field)."""
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    run = fine_tune(tmp_path, copy, model={"dropout": 0.1}, max_steps=8, save_interval=4)
    fit(run, tmp_path / "straight", progress=False)
    assert fit(run, tmp_path / "split", progress=False, until_step=4).stopped_reason == "until_step"
    shutil.rmtree(copy)
    saved = RunConfig.from_yaml(tmp_path / "split/config.yaml")  # with what the run decided: no bos before documents
    decided = dataclasses.replace(run.data, document_bos=False, document_frame=False)
    assert saved == dataclasses.replace(run, data=decided)
    fit(saved, tmp_path / "split", resume=True, progress=False)
    a, b = step_losses(tmp_path / "straight"), step_losses(tmp_path / "split")
    assert sorted(a) == list(range(1, 9)) and a == b
    wa = read_safetensors(tmp_path / "straight/checkpoints/step-8/model.safetensors")
    wb = read_safetensors(tmp_path / "split/checkpoints/step-8/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_fine_tune_saved_before_a_model_field_existed_loads_without_its_source(source, tmp_path):
    """A config.yaml written before ModelConfig gained a field (final_norm) lacks it: it is still the saved run's
    whole model section, so loading must not go back to the init_from source (gone: "init_from does not exist")."""
    import yaml

    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    fit(fine_tune(tmp_path, copy, max_steps=2, save_interval=0), tmp_path / "ft", progress=False)
    path = tmp_path / "ft/config.yaml"
    raw = yaml.safe_load(path.read_text())
    del raw["model"]["final_norm"]  # as an older version wrote it
    path.write_text(yaml.safe_dump(raw))
    want = load(tmp_path / "ft")[0].config
    shutil.rmtree(copy)
    assert load(tmp_path / "ft")[0].config == want


def test_a_resume_that_names_another_source_keeps_the_one_the_run_started_from(source, tmp_path, caplog):
    """--resume --init-from OTHER went on from the run's checkpoint, as it must, but wrote OTHER into config.yaml:
    `info` then named a source the weights never came from."""
    other = tmp_path / "other-source"
    shutil.copytree(source, other)
    run = fine_tune(tmp_path, source, max_steps=4, save_interval=2)
    fit(run, tmp_path / "ft", progress=False, until_step=2)
    saved = RunConfig.from_yaml(tmp_path / "ft/config.yaml")
    again = dataclasses.replace(saved, train=dataclasses.replace(saved.train, init_from=str(other)))
    with caplog.at_level(logging.WARNING, logger="neurallayers"):
        assert fit(again, tmp_path / "ft", resume=True, progress=False).steps == 4
    assert f"train.init_from={other} is not used: a resume goes on from the run's own checkpoint (the run started " \
           f"from {source})" in caplog.text
    assert RunConfig.from_yaml(tmp_path / "ft/config.yaml").train.init_from == str(source)


def test_a_fine_tune_starts_from_a_checkpoint_of_a_run(tmp_path):
    """`--init-from RUN/checkpoints/step-N` was refused ("neither config.yaml nor config.json") though load reads such
    a folder: that step's weights, with its run's model config and tokenizer, through a symlink too."""
    fit(tiny_run(tmp_path, model={"dropout": 0.0}, max_steps=4, save_interval=2, eval_interval=0), tmp_path / "src",
        progress=False)
    step2 = tmp_path / "src/checkpoints/step-2"
    (tmp_path / "link").symlink_to(step2)
    run = fine_tune(tmp_path, tmp_path / "link")
    at_step2, tokenizer = load(step2)
    assert run.model == at_step2.config
    fit(run, tmp_path / "ft", progress=False)
    first = step_losses(tmp_path / "ft")[1]
    assert first == pytest.approx(first_batch_loss(at_step2, run, tokenizer), abs=1e-5)
    final, _ = load(tmp_path / "src")  # the run's own weights (step 4's) are not what it started from
    assert abs(first - first_batch_loss(final, run, tokenizer)) > 1e-4


def test_a_corpus_the_sources_tokenizer_cannot_spell_is_named(source, tmp_path, caplog):
    """A char-level source fine-tuned on text with characters it never saw trained on <unk> for each, silently."""
    run = fine_tune(tmp_path, source, max_steps=1)
    with caplog.at_level(logging.WARNING, logger="neurallayers"):
        prepare_data(run, tokenizer=Tokenizer.load(source), pretrained=True)
    assert "unknown token" not in caplog.text  # the same letters
    shouting = tmp_path / "shouting.txt"
    shouting.write_text((tmp_path / "other.txt").read_text().upper())
    run = dataclasses.replace(run, data=dataclasses.replace(run.data, source=str(shouting)))
    with caplog.at_level(logging.WARNING, logger="neurallayers"):
        prepare_data(run, tokenizer=Tokenizer.load(source), pretrained=True)
    assert re.search(r"\d+\.\d% of the training tokens of \S+shouting.txt are the tokenizer's unknown token <unk>",
                     caplog.text), caplog.text


def test_a_fine_tune_from_a_hugging_face_folder_equals_one_from_the_run(source, tmp_path):
    from neurallayers.interop.convert import convert

    convert(source, tmp_path / "hf")
    assert (tmp_path / "hf/config.json").is_file()
    fit(fine_tune(tmp_path, source, max_steps=3), tmp_path / "a", progress=False)
    fit(fine_tune(tmp_path, tmp_path / "hf", max_steps=3), tmp_path / "b", progress=False)
    a, b = step_losses(tmp_path / "a"), step_losses(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-5) for k in a)


def test_a_learned_position_table_is_cut_to_a_shorter_context(source, tmp_path):
    run = fine_tune(tmp_path, source, model={"block_size": 16, "dropout": 0.2}, max_steps=1, lr=1e-9, min_lr=0)
    assert run.model.block_size == 16 and run.model.dropout == 0.2
    fit(run, tmp_path / "ft", progress=False)
    pretrained, _ = load(source)
    tuned, _ = load(tmp_path / "ft")
    wpe = pretrained.state_dict()["wpe.weight"]
    assert tuned.state_dict()["wpe.weight"].shape[0] == 16
    torch.testing.assert_close(tuned.state_dict()["wpe.weight"], wpe[:16], atol=1e-6, rtol=0)


def test_a_rotary_model_can_be_fine_tuned_to_a_longer_context(tmp_path):
    pre = tiny_run(tmp_path, model={"position": "rope", "block_size": 16}, max_steps=2, eval_interval=0,
                   save_interval=0)
    fit(pre, tmp_path / "pre", progress=False)
    run = fine_tune(tmp_path, tmp_path / "pre", model={"block_size": 32, "rope_scaling": {"type": "linear",
                                                                                          "factor": 2.0}},
                    max_steps=2)
    assert fit(run, tmp_path / "ft", progress=False).steps == 2
    assert load(tmp_path / "ft")[0].config.block_size == 32


def test_an_encoder_fine_tune_keeps_the_masked_lm_head(tmp_path, caplog):
    pre = tiny_run(tmp_path, model=ENCODER, max_steps=4, eval_interval=0, save_interval=0)
    fit(pre, tmp_path / "pre", progress=False)
    run = fine_tune(tmp_path, tmp_path / "pre", max_steps=1, lr=1e-9, min_lr=0)
    with caplog.at_level(logging.INFO, logger="neurallayers.training"):
        fit(run, tmp_path / "ft", progress=False)
    assert "initialised from" in caplog.text and "head is new" not in caplog.text
    a, b = load(tmp_path / "pre")[0].state_dict(), load(tmp_path / "ft")[0].state_dict()
    assert a.keys() == b.keys() and any(k.startswith("head.") for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)


def test_minilm_continues_pretraining_as_a_masked_lm(tmp_path, caplog):
    """The bundled sentence encoder (a bare BERT, no masked-LM head) fine-tuned as a masked LM on a short context:
    its encoder weights carried over, the position table cut, a new head."""
    run = fine_tune(tmp_path, "all-MiniLM-L6-v2", model={"block_size": 32}, max_steps=1, batch_size=2,
                    lr=1e-9, min_lr=0, eval_interval=0, save_interval=0)
    assert not run.model.causal and run.model.n_layer == 6 and run.model.head == "none"
    with caplog.at_level(logging.INFO, logger="neurallayers.training"):
        result = fit(run, tmp_path / "ft", progress=False)
    assert result.steps == 1 and "head is new" in caplog.text
    assert "initialised from all-MiniLM-L6-v2 (" in caplog.text  # the name, not the package's folder
    minilm, tokenizer = load("all-MiniLM-L6-v2")
    tuned, tuned_tok = load(tmp_path / "ft")
    assert tuned.config.head == "mlm" and tuned_tok.mask_id == tokenizer.mask_id is not None
    mine, theirs = tuned.state_dict(), minilm.state_dict()
    assert tuned.encoder.pooler is None  # a masked LM has none (BertForMaskedLM); the source's is left out
    for key, value in theirs.items():
        if key.startswith("pooler."):
            continue
        want = value[:32] if key == "wpe.weight" else value
        torch.testing.assert_close(mine[f"encoder.{key}"], want, atol=1e-6, rtol=0)


def test_init_from_mistakes_are_named(source, tmp_path):
    with pytest.raises(FileNotFoundError, match="init_from"):
        fine_tune(tmp_path, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="n_layer=3 differs from the init_from model's 2"):
        fit(fine_tune(tmp_path, source, model={"n_layer": 3}), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="block_size=64: the init_from model learned positions for 32"):
        fit(fine_tune(tmp_path, source, model={"block_size": 64}), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="DataConfig.tokenizer='char'"):
        fit(fine_tune(tmp_path, source, data={"tokenizer": "char"}), tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="both name the model"):
        fine_tune(tmp_path, source, model={"preset": "tiny"})
    assert not (tmp_path / "a/model.safetensors").exists()


def test_a_corrupt_source_is_refused(source, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        fit(fine_tune(tmp_path, copy), tmp_path / "ft", progress=False)
    assert not (tmp_path / "ft/model.safetensors").exists() and not (tmp_path / "ft/metrics.jsonl").exists()


def test_a_transformers_llama_folder_with_a_padded_vocabulary(tmp_path):
    """A folder transformers wrote (LlamaForCausalLM, GQA, an embedding table 6 rows larger than its tokenizer):
    the run keeps the padded vocabulary, and its first loss is transformers' loss on the same batch."""
    transformers = pytest.importorskip("transformers")
    corpus = write_corpus(tmp_path / "other.txt", seed=5)
    tokenizer = Tokenizer.train_char([corpus.read_text()])
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=tokenizer.vocab_size + 6,
                                   max_position_embeddings=32)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "llama")
    tokenizer.save(tmp_path / "llama")
    run = fine_tune(tmp_path, tmp_path / "llama", max_steps=1)
    assert run.model.vocab_size == tokenizer.vocab_size + 6 and run.model.n_kv_head == 2
    fit(run, tmp_path / "ft", progress=False)
    _, tokens, run = prepare_data(run, tokenizer=tokenizer, pretrained=True)
    x, y = RandomWindows(tokens.train, block_size=32, batch_size=4, seed=run.train.seed).batch(0)
    with torch.no_grad():
        want = hf(input_ids=x).logits.flatten(0, 1)
    want = torch.nn.functional.cross_entropy(want, y.flatten()).item()
    assert step_losses(tmp_path / "ft")[1] == pytest.approx(want, abs=1e-5)
    assert load(tmp_path / "ft")[0].config.vocab_size == tokenizer.vocab_size + 6
    with pytest.raises(ValueError, match="do not belong together"):  # a tokenizer larger than the vocabulary
        prepare_data(run, tokenizer=Tokenizer.load("gpt2"), pretrained=True)


def test_an_optimizer_state_that_does_not_fit_is_refused_and_init_from_goes_on(tmp_path):
    """As a masked-LM checkpoint of a BERT preset from before its pooler was frozen (two more trainable tensors):
    the resume is refused naming the checkpoint and the way on, and a fine-tune from the run starts."""
    run = tiny_run(tmp_path, model={**ENCODER, "pooler": True}, max_steps=4, save_interval=2, eval_interval=0)
    fit(run, tmp_path / "run", progress=False, until_step=2)
    state_path = tmp_path / "run/checkpoints/step-2/state.pt"
    state = torch.load(state_path, weights_only=True)
    groups = state["optimizer"]["param_groups"]
    groups[0]["params"].append(max(max(g["params"]) for g in groups) + 1)  # a parameter this model does not train
    torch.save(state, state_path)
    with pytest.raises(CheckpointError, match="step-2: its optimizer state does not fit .* --init-from"):
        fit(run, tmp_path / "run", resume=True, progress=False)
    assert fit(fine_tune(tmp_path, tmp_path / "run", max_steps=1), tmp_path / "ft", progress=False).steps == 1


def test_a_fine_tune_may_change_which_layers_slide():
    """As the window itself, which layers slide fixes no weight (Qwen2's max_window_layers)."""
    from pathlib import Path

    from neurallayers.training.init_from import Source

    base = ModelConfig.from_name("llama-tiny").replace(n_layer=3, sliding_window=8, sliding_window_layers=[2])
    source = Source(Path("src"), base, {}, None)
    source.check_model(base.replace(sliding_window_layers=[1, 2]))
    source.check_model(base.replace(sliding_window=None, sliding_window_layers=None))
    with pytest.raises(ValueError, match="ModelConfig.n_layer=4 differs"):
        source.check_model(base.replace(n_layer=4))


def test_a_pickle_only_folder_is_refused_with_the_way_on_for_training(source, tmp_path):
    """A Hugging Face folder with only pytorch_model.bin: the refusal offered `allow_pickle=True (CLI: --allow-pickle)`,
    which train does not take (`--allow-pickle belongs to generate, chat, ...`): it names the conversion alone, and
    the pickle is never read (nothing written either)."""
    from neurallayers import save_hf

    folder = tmp_path / "pickled"
    save_hf(*load(source), folder)
    weights = read_safetensors(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as caught:
        fit(fine_tune(tmp_path, folder, max_steps=1), tmp_path / "ft", progress=False)
    message = str(caught.value)
    assert message.startswith(f"TrainConfig.init_from={str(folder)!r}: {folder} has only pickle weights "
                              "(pytorch_model.bin)"), message
    assert f"neurallayers convert {folder} DST --to hf --allow-pickle" in message and "opt in" not in message
    assert not (tmp_path / "ft/metrics.jsonl").exists()
