"""HF folders: refusals (pickle, corrupt safetensors, wrong weights, bad index, unknown model_type), save_hf
argument checks, and convert() between run directories and HF folders."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers import ModelConfig, build_model  # noqa: E402
from neurallayers.api import load  # noqa: E402
from neurallayers.data.tokenizers import Tokenizer  # noqa: E402
from neurallayers.interop import convert, load_hf, save_hf  # noqa: E402
from neurallayers.weights import CheckpointError  # noqa: E402

VOCAB = 64
KEY = "transformer.h.0.attn.c_attn.weight"


def hf_folder(path, *, shard: str | None = None) -> torch.nn.Module:
    """A tiny GPT-2 saved with save_pretrained (safetensors) in `path`; returns the HF model."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                                  eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, safe_serialization=True, **kw)
    return model


def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))


def rewrite_weights(path, change) -> None:
    sd = load_file(path / "model.safetensors")
    change(sd)
    save_file(sd, path / "model.safetensors", metadata={"format": "pt"})


# ----- pickle -----

class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # loading this creates the marker file


def test_pickle_only_folder_is_refused_unless_opted_in(tmp_path):
    ref = hf_folder(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"allow_pickle=True.*--allow-pickle"):
        load(tmp_path)
    model, _ = load(tmp_path, allow_pickle=True)
    with torch.no_grad():
        torch.testing.assert_close(model(ids()).logits, ref(ids()).logits, atol=1e-5, rtol=0)


@pytest.mark.skipif(os.name != "posix", reason="FIFOs")
def test_a_weights_name_that_is_no_file_is_named_not_skipped_for_the_pickle(tmp_path):
    """A model.safetensors that is a folder or FIFO was "has no weights", or, beside a pytorch_model.bin, the
    pickle was read in its place."""
    hf_folder(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    os.mkfifo(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.safetensors is a FIFO, socket or device, not a weights file"):
        load(tmp_path, allow_pickle=True)


def test_sharded_pickle_weights_load_when_opted_in(tmp_path):
    """Older checkpoints shard pickles (pytorch_model-0000k-of-0000n.bin + pytorch_model.bin.index.json), which
    transformers loads: refused unless opted in, as pytorch_model.bin is, never 'has no weights'; convert --allow-pickle
    turns them into safetensors."""
    src = tmp_path / "hf"
    ref = hf_folder(src, shard="4KB")
    weight_map = {}
    shards = sorted(src.glob("model-*-of-*.safetensors"))
    for shard in shards:
        name = shard.name.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        part = load_file(shard)
        torch.save(part, src / name)
        weight_map.update(dict.fromkeys(part, name))
        shard.unlink()
    (src / "model.safetensors.index.json").unlink()
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert len(shards) > 1
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin.index.json.*allow_pickle=True"):
        load(src)
    model, _ = load(src, allow_pickle=True)
    with torch.no_grad():
        want = transformers.AutoModelForCausalLM.from_pretrained(src).eval()(ids()).logits
        torch.testing.assert_close(ref(ids()).logits, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(ids()).logits, want, atol=1e-5, rtol=0)
    out = convert(src, tmp_path / "out", to="hf", allow_pickle=True)
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin*"))
    weight_map[KEY] = "pytorch_model-00009-of-00009.bin"  # the index is checked as a safetensors one is
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="do not exist: pytorch_model-00009-of-00009.bin"):
        load(src, allow_pickle=True)


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_malicious_pickle_never_runs(tmp_path, allow_pickle):
    hf_folder(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({KEY: _Payload(str(marker))}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError):
        load_hf(tmp_path, allow_pickle=allow_pickle)
    assert not marker.exists()


# ----- corrupt safetensors -----

def _truncate(p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])


def _huge_header(p):
    data = p.read_bytes()
    p.write_bytes(struct.pack("<Q", 2**62) + data[8:])


def _bad_json(p):
    data = p.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    p.write_bytes(data[:8] + b"{" + b" " * (n - 1) + data[8 + n:])


def _unknown_dtype(p):
    data = p.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + n].replace(b'"F32"', b'"Q99"', 1)
    p.write_bytes(data[:8] + header + data[8 + n:])


@pytest.mark.parametrize("corrupt, match", [
    (_truncate, "truncated|past the end|ends at byte"), (_huge_header, "header length"),
    (_bad_json, "JSON"), (_unknown_dtype, "dtype"),
])
def test_corrupt_safetensors_fail_cleanly(tmp_path, corrupt, match):
    hf_folder(tmp_path)
    corrupt(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=match):
        load(tmp_path)


# ----- well-formed but wrong weights -----

@pytest.mark.parametrize("change, match", [
    (lambda sd: sd.pop(KEY), f"missing: {KEY}"),
    (lambda sd: sd.__setitem__("transformer.h.0.attn.surprise", torch.zeros(2)), "unexpected: .*surprise"),
    (lambda sd: sd.__setitem__(KEY, torch.zeros(16, 47)), f"mis-shaped: {KEY}"),
    (lambda sd: sd[KEY].__setitem__((0, 0), float("nan")), f"NaN/Inf.*{KEY}"),
    (lambda sd: sd["transformer.wte.weight"].__setitem__((3, 1), float("inf")), "NaN/Inf.*transformer.wte.weight"),
])
def test_wrong_weights_are_named(tmp_path, change, match):
    hf_folder(tmp_path)
    rewrite_weights(tmp_path, change)
    with pytest.raises(CheckpointError, match=match):
        load(tmp_path)


@pytest.mark.parametrize("n_layer", [2, 100_000])
def test_a_config_with_more_layers_than_the_weights_is_refused_before_any_model_is_built(tmp_path, monkeypatch,
                                                                                         n_layer):
    """config.json's n_layer past the weights' layers was found only by comparing them with a model built for it, on
    the meta device but one Python module a layer: n_layer 100000 ran for minutes, 10**9 until memory ran out (the
    map of weight names was listed for every layer first)."""
    import neurallayers.models

    hf_folder(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "n_layer": n_layer}))

    def no_build(config):
        raise AssertionError(f"built a model of {config.n_layer} layers before refusing the weights")

    monkeypatch.setattr(neurallayers.models, "build_model", no_build)
    with pytest.raises(CheckpointError, match=rf"n_layer={n_layer}.* weights of 1 layer.* missing: layer 1\b"):
        load_hf(tmp_path)


def test_unknown_model_type_is_named(tmp_path):
    hf_folder(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg | {"model_type": "falcon"}))
    with pytest.raises(ValueError, match=r"'falcon'.*gpt2, llama, mistral, bert"):
        load(tmp_path)


def test_missing_weights_and_bad_config(tmp_path):
    hf_folder(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_hf(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_hf(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["config.json", "generation_config.json", "tokenizer_config.json",
                                  "model.safetensors.index.json"])
def test_a_json_file_nested_too_deep_is_one_line(tmp_path, name):
    """json.loads recurses a level a bracket: a file of 100,000 '[' was a RecursionError traceback from load and the
    CLI, as safetensors headers were before (weights.validate_safetensors)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    hf_folder(tmp_path, shard="1KB" if name == "model.safetensors.index.json" else None)
    HFTokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / name).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=rf"{name}'? is not valid JSON: nested too deep"):
        load_hf(tmp_path)


def test_dtype_and_device_arguments(tmp_path):
    ref = hf_folder(tmp_path)
    ref.to(torch.bfloat16).save_pretrained(tmp_path, safe_serialization=True)  # a bf16 checkpoint
    model, _ = load_hf(tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # default: fp32 whatever the file holds
    assert torch.equal(model.wte.weight, ref.transformer.wte.weight.float())
    half, _ = load_hf(tmp_path, dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.lm_head.weight is half.wte.weight and not half.training
    for name in ("bf16", "bfloat16", "torch.bfloat16"):  # names, as transformers takes them
        assert next(load(tmp_path, dtype=name)[0].parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype='half16': expected a torch.dtype or one of fp32"):
        load(tmp_path, dtype="half16")
    # fp16 on a CPU ran generate/eval/serve silently ~60x slower than fp32 (training refuses it there)
    with pytest.warns(UserWarning, match="fp16 weights on a CPU: .* use fp32"):
        assert next(load(tmp_path, dtype="fp16")[0].parameters()).dtype == torch.float16
    with pytest.raises(ValueError, match=r"dtype=torch.int8: weights need a floating-point dtype"):
        load(tmp_path, dtype=torch.int8)  # not torch's TypeError after every weight was read
    with pytest.raises(ValueError, match=r"dtype=torch.float8_e4m3fn: weights need a floating-point dtype"):
        load(tmp_path, dtype=torch.float8_e4m3fn)  # loaded, then failed in the first forward ("not implemented")


# ----- sharded index -----

def _edit_index(path, edit) -> None:
    index_path = path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    edit(index["weight_map"])
    index_path.write_text(json.dumps(index))


def test_sharded_index_is_validated(tmp_path):
    ref = hf_folder(tmp_path, shard="4KB")
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    model, _ = load_hf(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(model(ids()).logits, ref(ids()).logits, atol=1e-5, rtol=0)
    index = (tmp_path / "model.safetensors.index.json").read_text()

    _edit_index(tmp_path, lambda m: m.__setitem__(KEY, "../elsewhere.safetensors"))
    with pytest.raises(CheckpointError, match="not a file in this folder"):
        load_hf(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(index)
    _edit_index(tmp_path, lambda m: m.__setitem__(KEY, "model-00009-of-00009.safetensors"))
    with pytest.raises(CheckpointError, match="do not exist: model-00009-of-00009"):
        load_hf(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(index)
    other = next(s.name for s in shards if s.name != json.loads(index)["weight_map"][KEY])
    _edit_index(tmp_path, lambda m: m.__setitem__(KEY, other))  # listed in the wrong shard
    with pytest.raises(CheckpointError, match=KEY):
        load_hf(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(index)
    _edit_index(tmp_path, lambda m: m.pop(KEY))  # present in a shard, absent from the index
    with pytest.raises(CheckpointError, match=f"not listed.*{KEY}"):
        load_hf(tmp_path)


def _sharded_without_config_dtype(path) -> None:
    """A sharded folder whose config.json names no dtype: dtype="auto" then reads the index's metadata."""
    hf_folder(path, shard="4KB")
    config = json.loads((path / "config.json").read_text())
    config = {k: v for k, v in config.items() if k not in ("dtype", "torch_dtype")}
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("metadata", [["x"], "bfloat16", 5])
def test_an_index_whose_metadata_is_no_object_is_named(tmp_path, metadata):
    """dtype="auto" reads the index's metadata dtype: metadata of another kind was an AttributeError traceback ("'list'
    object has no attribute 'get'"), from the CLI's --dtype auto too; transformers fails on such an index as well."""
    _sharded_without_config_dtype(tmp_path)
    index_path = tmp_path / "model.safetensors.index.json"
    index_path.write_text(json.dumps({**json.loads(index_path.read_text()), "metadata": metadata}))
    for dtype in ("auto", None):
        with pytest.raises(CheckpointError, match=r"index.json: 'metadata' must be an object"):
            load_hf(tmp_path, dtype=dtype)


def test_an_index_metadata_dtype_that_names_no_dtype_leaves_it_to_the_weights(tmp_path):
    """A dtype of another kind (a list: "unhashable type" before) names no dtype, as an unknown name does."""
    _sharded_without_config_dtype(tmp_path)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    for named in (["bfloat16"], "int8"):
        index_path.write_text(json.dumps({**index, "metadata": {"dtype": named}}))
        model, _ = load_hf(tmp_path, dtype="auto")
        assert next(model.parameters()).dtype == torch.float32


# ----- save_hf arguments -----

def _gpt2_ours(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16, **kw)).eval()


def test_save_hf_rejects_bad_arguments(tmp_path):
    model = _gpt2_ours()
    with pytest.raises(ValueError, match="max_shard_size"):
        save_hf(model, None, tmp_path, max_shard_size=0)
    with pytest.raises(ValueError, match="ModelConfig"):
        save_hf(torch.nn.Linear(2, 2), None, tmp_path)
    with pytest.raises(ValueError, match="tokenizer has 50257 ids"):
        save_hf(model, Tokenizer.gpt2(), tmp_path)
    with pytest.raises(ValueError, match="position='alibi'"):
        save_hf(_gpt2_ours(position="alibi"), None, tmp_path)
    with pytest.raises(ValueError, match="n_kv_head=1"):
        save_hf(_gpt2_ours(n_kv_head=1), None, tmp_path)


@pytest.mark.parametrize(("size", "in_bytes"), [("4KB", 4000), ("4KiB", 4096), (" 4 KB ", 4000)])
def test_save_hf_and_convert_take_a_shard_size_as_transformers_does(tmp_path, size, in_bytes):
    """save_pretrained(max_shard_size="5GB") is how transformers users shard; save_hf and convert refused the string
    (the CLI alone read units), so a script moved from transformers failed after loading the whole model."""
    from transformers.utils.hub import convert_file_size_to_int

    assert convert_file_size_to_int(size.replace(" ", "")) == in_bytes  # the oracle: transformers' reading of it
    model = _gpt2_ours()
    save_hf(model, None, tmp_path / "str", max_shard_size=size)
    save_hf(model, None, tmp_path / "int", max_shard_size=in_bytes)
    index = json.loads((tmp_path / "str" / "model.safetensors.index.json").read_text())
    assert index == json.loads((tmp_path / "int" / "model.safetensors.index.json").read_text())
    out = convert(tmp_path / "int", tmp_path / "conv", to="hf", max_shard_size=size)
    assert json.loads((out / "model.safetensors.index.json").read_text())["weight_map"] == index["weight_map"]


@pytest.mark.parametrize("size", ["4", "1.5GB", "2TB", "500mb", "0KB", "big", True])
def test_a_bad_shard_size_string_is_named(tmp_path, size):
    """A size without its unit (transformers refuses one too; the CLI's plain numbers are MB), a fraction, an unknown
    unit, lowercase bits (megabits to transformers) or zero: one line naming it, before any file is written."""
    with pytest.raises(ValueError, match=r"max_shard_size=.*: (must be|expected)"):
        save_hf(_gpt2_ours(), None, tmp_path / "out", max_shard_size=size)
    assert not (tmp_path / "out").exists()


def test_save_hf_replaces_stale_weights(tmp_path):
    model = _gpt2_ours()
    save_hf(model, None, tmp_path, max_shard_size=4000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    save_hf(model, None, tmp_path)  # now one file: the old shards must not linger beside it
    assert not list(tmp_path.glob("model-*-of-*.safetensors"))
    assert not (tmp_path / "model.safetensors.index.json").exists()
    back, _ = load_hf(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values(),
                                                 strict=True))


# ----- convert -----

def test_convert_keeps_the_recommended_sampling(tmp_path):
    """HF -> run -> HF and HF -> HF keep generation_config.json's sampling settings (they were dropped: a converted
    Llama-3-Instruct sampled at the CLI's defaults, and do_sample false became sampling)."""
    from neurallayers import generation_defaults

    model = hf_folder(tmp_path / "hf")
    Tokenizer.train_char(["abcdefgh"] * 3).save(tmp_path / "hf")
    model.generation_config.update(do_sample=True, temperature=0.6, top_p=0.9)
    model.generation_config.save_pretrained(tmp_path / "hf")
    want = {"temperature": 0.6, "top_p": 0.9}
    assert generation_defaults(tmp_path / "hf") == want
    convert(tmp_path / "hf", tmp_path / "run", to="run")
    assert generation_defaults(tmp_path / "run") == want
    convert(tmp_path / "run", tmp_path / "back", to="hf")
    assert generation_defaults(tmp_path / "back") == want
    back = transformers.GenerationConfig.from_pretrained(tmp_path / "back")
    assert (back.do_sample, back.temperature, back.top_p) == (True, 0.6, 0.9)  # transformers reads them too
    convert(tmp_path / "hf", tmp_path / "hf2", to="hf")
    assert generation_defaults(tmp_path / "hf2") == want


def test_convert_keeps_every_generation_setting(tmp_path):
    """HF -> HF and HF -> run -> HF keep the whole generation_config.json as transformers reads it, not only the
    sampling knobs: max_new_tokens / max_length were dropped (the text-generation pipeline and transformers' generate
    on the copy ran 256 / 20 tokens instead of 7), and so were num_beams, no_repeat_ngram_size and the rest."""
    from neurallayers.pipelines.text_generation import folder_generation

    model = hf_folder(tmp_path / "hf")
    Tokenizer.train_char(["abcdefgh"] * 3).save(tmp_path / "hf")
    model.generation_config.update(do_sample=False, max_new_tokens=7, max_length=50, num_beams=2,
                                   no_repeat_ngram_size=3, length_penalty=0.5, repetition_penalty=1.2)
    model.generation_config.save_pretrained(tmp_path / "hf")
    keys = ("do_sample", "max_new_tokens", "max_length", "num_beams", "no_repeat_ngram_size", "length_penalty",
            "repetition_penalty")
    want = transformers.GenerationConfig.from_pretrained(tmp_path / "hf").to_dict()
    convert(tmp_path / "hf", tmp_path / "hf2", to="hf")
    convert(tmp_path / "hf", tmp_path / "run", to="run")
    convert(tmp_path / "run", tmp_path / "back", to="hf")
    for out in ("hf2", "run", "back"):
        got = transformers.GenerationConfig.from_pretrained(tmp_path / out).to_dict()
        assert {k: got[k] for k in keys} == {k: want[k] for k in keys}, out
        assert folder_generation(tmp_path / out) == folder_generation(tmp_path / "hf"), out


def test_save_hf_keeps_the_generation_settings_load_hf_read(tmp_path):
    """load_hf -> save_hf keeps generation_config.json's settings, as transformers' from_pretrained -> save_pretrained
    does (they were dropped: a model loaded, fine-tuned and saved sampled at the defaults, ran 20 tokens in
    transformers' generate, and beam search became greedy)."""
    from neurallayers import generation_defaults

    model = hf_folder(tmp_path / "hf")
    model.generation_config.update(do_sample=True, temperature=0.6, top_p=0.9, max_new_tokens=7, num_beams=2)
    model.generation_config.save_pretrained(tmp_path / "hf")
    ours, tokenizer = load_hf(tmp_path / "hf")
    save_hf(ours, tokenizer, tmp_path / "ours")
    model.save_pretrained(tmp_path / "theirs")  # the oracle: transformers' own round trip
    keys = ("do_sample", "temperature", "top_p", "max_new_tokens", "num_beams")
    want = transformers.GenerationConfig.from_pretrained(tmp_path / "theirs").to_dict()
    got = transformers.GenerationConfig.from_pretrained(tmp_path / "ours").to_dict()
    assert {k: got[k] for k in keys} == {k: want[k] for k in keys}
    assert generation_defaults(tmp_path / "ours") == generation_defaults(tmp_path / "hf") == {"temperature": 0.6,
                                                                                               "top_p": 0.9}


def test_save_hf_keeps_the_generation_settings_of_a_run_load_read(tmp_path):
    """A run converted from a Hugging Face folder holds its generation_config.json (convert run -> hf writes it back);
    load(run) -> save_hf dropped it, where the README says save_hf writes back the settings of the folder load read
    (the exported model sampled at transformers' defaults, and beam search became greedy)."""
    model = hf_folder(tmp_path / "hf")
    model.generation_config.update(do_sample=True, temperature=0.6, top_p=0.9, max_new_tokens=7, num_beams=2)
    model.generation_config.save_pretrained(tmp_path / "hf")
    tok = Tokenizer.train_char(["some text for a char tokenizer"])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, eos_token=tok.eos_token).save_pretrained(
        tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "run", to="run")
    ours, tokenizer = load(tmp_path / "run")
    save_hf(ours, tokenizer, tmp_path / "ours")
    convert(tmp_path / "run", tmp_path / "converted", to="hf")  # the oracle: convert's own run -> hf
    keys = ("do_sample", "temperature", "top_p", "max_new_tokens", "num_beams")
    want = transformers.GenerationConfig.from_pretrained(tmp_path / "converted").to_dict()
    got = transformers.GenerationConfig.from_pretrained(tmp_path / "ours").to_dict()
    assert {k: got[k] for k in keys} == {k: want[k] for k in keys} == {
        "do_sample": True, "temperature": 0.6, "top_p": 0.9, "max_new_tokens": 7, "num_beams": 2}


@pytest.mark.parametrize("text", ["[1]", '{"temperature": 0.5,'])
def test_convert_names_a_bad_generation_config(tmp_path, text):
    """A folder that load() reads without its generation_config.json (no tokenizer here) still gets the file named
    when convert copies its sampling settings, not an AttributeError or a bare JSONDecodeError."""
    hf_folder(tmp_path / "hf")
    (tmp_path / "hf" / "generation_config.json").write_text(text)
    with pytest.raises(ValueError, match=r"generation_config.json (must hold a JSON object|is not valid JSON)"):
        convert(tmp_path / "hf", tmp_path / "out", to="hf")
    assert not (tmp_path / "out").exists()


def test_convert_hf_to_run_and_back(tmp_path):
    src = tmp_path / "hf"
    ref = hf_folder(src)
    tok = Tokenizer.train_char(["some text for a char tokenizer"])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, eos_token=tok.eos_token).save_pretrained(src)
    run = convert(src, tmp_path / "run")  # to: the other kind than src
    assert {"config.yaml", "model.safetensors", "tokenizer.json"} <= set(os.listdir(run))
    model, run_tok = load(run)
    assert run_tok.encode("some text") == tok.encode("some text")
    with torch.no_grad():
        torch.testing.assert_close(model(ids()).logits, ref(ids()).logits, atol=1e-5, rtol=0)
    assert model.lm_head.weight is model.wte.weight

    out = convert(run, tmp_path / "hf2", max_shard_size=4000)
    assert (out / "model.safetensors.index.json").is_file()
    again = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids()).logits, ref(ids()).logits, atol=1e-5, rtol=0)
    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(out)
    assert hf_tok("some text").input_ids == tok.encode("some text")


def test_convert_without_a_tokenizer_keeps_the_sources_special_ids(tmp_path):
    """A weights-only HF folder (no tokenizer files) rewritten as HF (resharded, or pickle -> safetensors) keeps
    config.json's and generation_config.json's bos/eos/pad ids: written as null, transformers' generate on the copy
    ran past the eos the source stops at."""
    src = tmp_path / "hf"
    ref = hf_folder(src)
    prompt = torch.tensor([[5, 9, 30, 7]])
    with torch.no_grad():
        free = ref.generate(prompt, do_sample=False, max_new_tokens=8, eos_token_id=None, pad_token_id=0)[0, 4:]
    ref.generation_config.eos_token_id = [0, int(free[3])]  # a token greedy reaches: the source stops there
    ref.generation_config.pad_token_id = 3
    ref.save_pretrained(src, safe_serialization=True)
    out = convert(src, tmp_path / "out", to="hf", max_shard_size=4000)
    again = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert (again.config.bos_token_id, again.config.eos_token_id) == (0, 0)
    settings = transformers.GenerationConfig.from_pretrained(out)
    assert (settings.eos_token_id, settings.pad_token_id) == ([0, int(free[3])], 3)
    with torch.no_grad():
        want = ref.generate(prompt, do_sample=False, max_new_tokens=8)
        assert again.generate(prompt, do_sample=False, max_new_tokens=8).tolist() == want.tolist()
    assert want.shape[1] < 4 + 8


def test_eos_ids_outside_the_vocabulary_are_not_used_nor_refused(tmp_path):
    """transformers' GPT2Config names eos 50256 at any vocab_size, so a tiny reference model's folder lists an id its
    model never generates; transformers loads and generates from it, and so did load() until the eos ids of a folder
    without tokenizer files were read (it then refused the folder). The id is left out with a warning."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    ref.generation_config.eos_token_id = [cfg.eos_token_id, 5]
    ref.save_pretrained(tmp_path, safe_serialization=True)
    with pytest.warns(UserWarning, match=r"eos_token_id \[50256\] is outside the model's vocabulary \[0, 64\)"):
        model, tok = load(tmp_path)
    assert tok is None and model.generation_eos_ids == [5]
    (tmp_path / "generation_config.json").unlink()  # config.json's 50256 alone
    with pytest.warns(UserWarning, match="outside the model's vocabulary"):
        assert load(tmp_path)[0].generation_eos_ids == []
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": "2"}))
    with pytest.raises(ValueError, match=r"generation_config.json: eos_token_id='2' must be a token id"):
        load(tmp_path)


def test_save_hf_writes_where_the_file_system_refuses_chmod(tmp_path, monkeypatch):
    """Giving model.safetensors the umask's permissions is a courtesy: a vfat or exFAT drive (Linux) answers chmod
    with EPERM for modes it cannot store, and saving there failed (it worked before the permissions were set)."""
    model = build_model(ModelConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16))

    def refuse(path, mode, **kw):
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(os, "chmod", refuse)
    save_hf(model, None, tmp_path / "out")
    assert load_file(tmp_path / "out" / "model.safetensors").keys()
    assert not [p.name for p in (tmp_path / "out").iterdir() if ".tmp" in p.name]


def test_convert_rejects_bad_arguments(tmp_path):
    src = tmp_path / "hf"
    hf_folder(src)
    with pytest.raises(ValueError, match="to='onnx'"):
        convert(src, tmp_path / "x", to="onnx")
    with pytest.raises(ValueError, match="neither"):
        convert(tmp_path, tmp_path / "x", to="hf")
    with pytest.raises(FileNotFoundError):
        convert(tmp_path / "missing", tmp_path / "x", to="hf")
    with pytest.raises(ValueError, match="max_shard_size"):
        convert(src, tmp_path / "x", to="run", max_shard_size=1000)
    with pytest.raises(ValueError, match="no tokenizer"):
        convert(src, tmp_path / "x", to="run")  # save_pretrained of a bare model wrote no tokenizer
    assert not (tmp_path / "x").exists()
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty.*overwrite=True"):
        convert(src, dst, to="hf")
    assert (dst / "keep.txt").read_text() == "mine"
    (dst / "checkpoints").mkdir()  # a training run: overwrite never deletes one
    with pytest.raises(ValueError, match="holds a training run"):
        convert(src, dst, to="hf", overwrite=True)
    (dst / "checkpoints").rmdir()
    convert(src, dst, to="hf", overwrite=True)
    assert not (dst / "keep.txt").exists() and (dst / "config.json").is_file()
    assert not list(tmp_path.glob(".taken.tmp-*"))


def test_a_folder_named_gpt2_loads_its_own_tokenizer(tmp_path, monkeypatch):
    """`./gpt2` (and `gpt2` as a path) loaded GPT-2's stock vocabulary instead of the folder's tokenizer."""
    import string

    from neurallayers.data.tokenizers import Tokenizer

    hf_folder(tmp_path / "gpt2")
    Tokenizer.train_char([string.printable[:VOCAB - 2]]).save(tmp_path / "gpt2")
    monkeypatch.chdir(tmp_path)
    for name in ("gpt2", "./gpt2"):
        _, tok = load(name)
        assert tok.vocab_size <= VOCAB and tok.kind != "gpt2", name
    assert Tokenizer.load("gpt2").vocab_size == 50257  # the string still names GPT-2's vocabulary


def test_generation_defaults_read_transformers_sampling_settings(tmp_path):
    """What transformers' GenerationConfig.save_pretrained writes is read back as GenerationConfig fields."""
    from neurallayers import generation_defaults

    model = hf_folder(tmp_path / "hf")
    assert generation_defaults(tmp_path / "hf") == {}  # save_pretrained writes only the special ids
    model.generation_config.update(do_sample=True, temperature=0.6, top_p=0.9, top_k=20, min_p=0.05,
                                   repetition_penalty=1.1)
    model.generation_config.save_pretrained(tmp_path / "hf")
    assert generation_defaults(tmp_path / "hf") == {"temperature": 0.6, "top_k": 20, "top_p": 0.9, "min_p": 0.05,
                                                    "repetition_penalty": 1.1}
    path = tmp_path / "hf" / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "do_sample": False}))  # older transformers wrote it
    # greedy in transformers, which still applies the file's repetition_penalty (and samples with the rest when a
    # caller turns sampling on)
    assert generation_defaults(tmp_path / "hf") == {"temperature": 0.0, "top_k": 20, "top_p": 0.9, "min_p": 0.05,
                                                    "repetition_penalty": 1.1}
    assert generation_defaults(tmp_path / "hf", sampling=True)["temperature"] == 0.6
    # a value transformers loads but GenerationConfig refuses: left out, with a warning (the model stays usable)
    path.write_text(json.dumps({"top_k": "20", "temperature": -1, "top_p": 0.5}))
    with pytest.warns(UserWarning, match=r"generation_config.json: temperature=-1 is not used \(must be >= 0"):
        assert generation_defaults(tmp_path / "hf") == {"top_p": 0.5}
    path.write_text(json.dumps({"top_k": -1}))  # vLLM's "off"
    assert generation_defaults(tmp_path / "hf") == {"top_k": 0}
    with pytest.raises(FileNotFoundError, match="no such run directory or model folder"):
        generation_defaults(tmp_path / "typo")
    with pytest.raises(ValueError, match="generation_config.json is a file; give a run directory"):
        generation_defaults(path)  # it exists: not "no such folder"


FAMILY_CONFIGS = {  # family -> (a small config.json as transformers writes it, a float key, its class)
    "gpt2": ({"model_type": "gpt2", "vocab_size": VOCAB, "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2},
             "layer_norm_epsilon", "GPT2LMHeadModel"),
    "llama": ({"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 1,
               "num_attention_heads": 2, "intermediate_size": 24, "max_position_embeddings": 16},
              "rms_norm_eps", "LlamaForCausalLM"),
    "bert": ({"model_type": "bert", "vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 24, "max_position_embeddings": 16},
             "layer_norm_eps", "BertModel"),
}


@pytest.mark.parametrize("name", list(FAMILY_CONFIGS))
def test_config_values_of_the_wrong_kind_are_named(name, tmp_path):
    """A string where config.json needs a number failed with float()'s "could not convert string to float: 'x'" (no
    key, no file), a null one with a TypeError traceback (transformers builds such a config with its default), and
    `architectures` as a lone string was read by its first letter, refusing the folder as a task head."""
    from neurallayers.interop.hf import family

    hf, number_key, arch = FAMILY_CONFIGS[name]
    fam = family(name)
    with pytest.raises(ValueError, match=f"config {number_key}='x': expected a number"):
        fam.config_from_hf({**hf, number_key: "x"})
    with pytest.raises(ValueError, match=f"config {number_key}=1000+: expected a number"):  # was an OverflowError
        fam.config_from_hf({**hf, number_key: 10**400})
    assert fam.config_from_hf({**hf, number_key: None, "initializer_range": None}) == fam.config_from_hf(hf)
    assert fam.config_from_hf({**hf, "architectures": arch}) == fam.config_from_hf({**hf, "architectures": [arch]})
    with pytest.raises(ValueError, match="config architectures=.*expected a list of class names"):
        fam.config_from_hf({**hf, "architectures": {"a": 1}})


@pytest.mark.parametrize("name", list(FAMILY_CONFIGS))
@pytest.mark.parametrize("value", [["gelu"], {"name": "gelu"}])
def test_a_list_or_object_where_config_names_a_kind_is_named(name, value, tmp_path):
    """A list or an object as model_type or the activation's name was a TypeError traceback ("unhashable type:
    'list'"), from the lookup in the table of supported names, instead of the line naming the key and those names."""
    from neurallayers.interop.hf import family

    hf, _, _ = FAMILY_CONFIGS[name]
    hf_folder(tmp_path)  # a folder with weights, so that load_hf gets as far as config.json's model_type
    (tmp_path / "config.json").write_text(json.dumps({**hf, "model_type": value}))
    with pytest.raises(ValueError, match=r"config.json model_type=.* is not supported; supported model types: gpt2"):
        load_hf(tmp_path)
    act = {"gpt2": "activation_function", "llama": "hidden_act", "bert": "hidden_act"}[name]
    with pytest.raises(ValueError, match=rf"config {act}=.*: (supported are|only) "):
        family(name).config_from_hf({**hf, act: value})


def test_dynamic_rope_scaling_without_a_numeric_factor_is_named():
    """Dynamic scaling without a factor failed with KeyError('factor'), which the CLI printed as "error: factor"; a
    string factor multiplied the context length into a string of digits."""
    from neurallayers.interop import llama

    hf, _, _ = FAMILY_CONFIGS["llama"]
    for params in ({"rope_type": "dynamic"}, {"rope_type": "dynamic", "factor": "2"}):
        with pytest.raises(ValueError, match="config rope_parameters factor=.*rope_type 'dynamic' needs a number"):
            llama.config_from_hf({**hf, "rope_parameters": params})


def test_convert_never_overwrites_the_folder_that_holds_its_source(tmp_path):
    """`convert models/a/hf models/a --overwrite` loaded the source, then deleted models/a with the source in it."""
    src = tmp_path / "models" / "hf"
    hf_folder(src)
    with pytest.raises(ValueError, match="holds the source folder"):
        convert(src, tmp_path / "models", to="hf", overwrite=True)
    with pytest.raises(ValueError, match="holds the source folder"):
        convert(src, tmp_path, to="hf", overwrite=True)
    assert (src / "config.json").is_file() and (src / "model.safetensors").is_file()


@pytest.mark.skipif(os.name != "posix", reason="resource limits")
@pytest.mark.parametrize("to", ["hf", "run"])
def test_convert_onto_a_full_disk_is_one_line(tmp_path, to):
    """safetensors reports a failed write (a full disk, a file size limit) as its own SafetensorError, which the CLI
    showed as a traceback; the weights are the first large file convert writes."""
    import resource
    import signal
    import subprocess
    import sys

    src = tmp_path / "src"
    hf_folder(src)
    tok = Tokenizer.train_char(["some text for a char tokenizer"])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, eos_token=tok.eos_token).save_pretrained(src)

    def small_files():  # writes past 8 kB fail with EFBIG, as on a full disk, rather than kill the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    command = [sys.executable, "-m", "neurallayers", "convert", str(src), str(tmp_path / "out"), "--to", to]
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=small_files, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"neurallayers convert: error: could not write {tmp_path / 'out'}: File too large"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_convert_into_the_current_folder_or_its_parent(tmp_path, monkeypatch):
    """`convert SRC .` from an empty folder failed with "PosixPath('.') has an empty name"; `convert SRC .. --overwrite`
    built its temporary folder inside dst, deleted dst with it and wrote nothing."""
    src = tmp_path / "hf"
    ref = hf_folder(src)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    convert(src, ".", to="hf")
    (tmp_path / "parent" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "parent" / "sub")
    convert(src, "..", to="hf", overwrite=True)
    for out in (tmp_path / "here", tmp_path / "parent"):
        again = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        with torch.no_grad():
            torch.testing.assert_close(again(ids()).logits, ref(ids()).logits, atol=1e-5, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "hf", "parent"]


def test_convert_into_the_current_folder_writes_into_that_folder(tmp_path, monkeypatch):
    """`convert SRC .` replaced the current folder by another one of the same name: the shell that ran it sat in a
    deleted folder, where `ls` showed nothing; an existing folder is filled in place (with overwrite too)."""
    src = tmp_path / "hf"
    hf_folder(src)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    before = os.stat(".").st_ino
    convert(src, ".", to="hf")
    (tmp_path / "here" / "old.txt").write_text("replaced")
    convert(src, ".", to="hf", overwrite=True)
    assert os.stat(".").st_ino == before
    here = set(os.listdir("."))  # the folder this process is in
    assert {"config.json", "model.safetensors"} <= here and "old.txt" not in here
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "hf"]


def test_convert_over_a_folder_on_another_file_system_renames_its_files_into_place(tmp_path, monkeypatch):
    """`convert SRC link --overwrite`, the link to a folder on another file system (or a mount point given as `.`): the
    new files were built beside the link, the old ones deleted, then copied across; on a full disk that left a
    truncated model.safetensors where the old model was. They are built inside the folder now, and renamed."""
    import errno
    import shutil
    from pathlib import Path

    from neurallayers.files import WriteError

    src, usb = tmp_path / "hf", tmp_path / "usb"
    hf_folder(src)
    convert(src, usb / "out", to="hf")
    (usb / "out" / "old.txt").write_text("old")
    (tmp_path / "link").symlink_to(usb / "out")

    def on_usb(path) -> bool:
        return usb in Path(os.path.realpath(path)).parents

    def across(move):  # usb is another file system: a rename across its edge fails, and it has no room for a copy
        def moved(a, b, **kw):
            if on_usb(a) != on_usb(b):
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
            return move(a, b, **kw)
        return moved

    def full(a, b, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "rename", across(os.rename))
    monkeypatch.setattr(os, "replace", across(os.replace))
    monkeypatch.setattr(shutil, "copyfile", full)
    convert(src, tmp_path / "link", to="hf", overwrite=True)
    kept = {p.name: p.read_bytes() for p in (usb / "out").iterdir()}
    assert sorted(kept) == ["config.json", "generation_config.json", "model.safetensors"]
    load_hf(tmp_path / "link")

    def no_room(model, tokenizer, folder, **kw):  # the disk fills while the new files are written
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("neurallayers.interop.hf.save_hf", no_room)
    with pytest.raises(WriteError, match="No space left on device"):
        convert(src, tmp_path / "link", to="hf", overwrite=True)
    assert {p.name: p.read_bytes() for p in (usb / "out").iterdir()} == kept  # the old files whole, no temp left


def test_a_conversion_killed_while_it_wrote_into_an_empty_folder_needs_no_overwrite_again(tmp_path):
    """The files are built inside an existing folder: what a killed conversion left there is no one's model, so the
    same command again fills the folder and removes it, without --overwrite."""
    import subprocess
    import sys

    src, out = tmp_path / "hf", tmp_path / "out"
    hf_folder(src)
    out.mkdir()
    killed = ("import os, sys; import neurallayers.interop.hf as hf; from neurallayers.interop import convert; "
              "real = hf.save_hf; hf.save_hf = lambda *a, **k: (real(*a, **k), os.kill(os.getpid(), 9)); "
              "convert(sys.argv[1], sys.argv[2], to='hf')")
    done = subprocess.run([sys.executable, "-c", killed, str(src), str(out)], capture_output=True, timeout=300)
    left = [p.name for p in out.iterdir()]  # its temporary folder and its lock
    assert done.returncode == -9 and left and all(name.startswith(".convert.tmp-") for name in left), left
    convert(src, out, to="hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]


def test_a_second_conversion_into_a_folder_being_filled_is_refused(tmp_path):
    """The second took the first one's temporary folder inside the folder for a killed run's and deleted it; the first
    then deleted the second's files and failed: the folder was left empty, though the second had said it was written."""
    import subprocess
    import sys
    import time

    src, out = tmp_path / "hf", tmp_path / "out"
    hf_folder(src)
    out.mkdir()
    built, go = tmp_path / "built", tmp_path / "go"
    waits = ("import pathlib, sys, time; import neurallayers.interop.hf as hf\n"
             "from neurallayers.interop import convert; built, go = map(pathlib.Path, sys.argv[3:])\n"
             "real = hf.save_hf\n"
             "def save(*a, **k):\n real(*a, **k); built.touch()\n while not go.exists(): time.sleep(0.05)\n"
             "hf.save_hf = save; convert(sys.argv[1], sys.argv[2], to='hf')")
    first = subprocess.Popen([sys.executable, "-c", waits, str(src), str(out), str(built), str(go)],
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not built.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert built.exists(), first.stderr.read() if first.poll() is not None else "timed out"
        with pytest.raises(ValueError, match="another conversion is writing"):
            convert(src, out, to="hf")
    finally:
        go.touch()
        assert first.wait(timeout=120) == 0, first.stderr.read()
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]


def test_convert_mistakes_are_named_as_the_user_gave_them(tmp_path):
    """`convert hf hf` said "not empty; pass --overwrite", and with --overwrite that it is the source; `convert hf run
    --max-shard-size 2` named max_shard_size=2097152, a number the user never typed."""
    import subprocess
    import sys

    src = tmp_path / "hf"
    hf_folder(src)
    with pytest.raises(ValueError, match="is the source folder"):
        convert(src, src)
    command = [sys.executable, "-m", "neurallayers", "convert", str(src), str(tmp_path / "run"),
               "--max-shard-size", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--max-shard-size" in done.stderr and "2097152" not in done.stderr, done.stderr
    assert "--to hf" in done.stderr


def test_a_quantized_checkpoint_is_refused_by_name(tmp_path):
    """An fp8 checkpoint (config.json quantization_config, float8 weights) crashed with NotImplementedError from the
    NaN check; GPTQ/AWQ folders were refused as a list of missing and unexpected weights, as if corrupt."""
    hf_folder(tmp_path)
    rewrite_weights(tmp_path, lambda sd: sd.update({KEY: sd[KEY].to(torch.float8_e4m3fn)}))
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: quantization_config \(quant_method='fp8'\): quantized"):
        load_hf(tmp_path)


def test_convert_hf_to_hf_keeps_half_precision_weights(tmp_path):
    """Resharding a bf16 folder (convert SRC DST --to hf) wrote float32 weights, twice the size, and said so in
    config.json: load() reads an HF folder as float32."""
    ref = hf_folder(tmp_path / "src")
    ref.to(torch.bfloat16).save_pretrained(tmp_path / "src")
    out = convert(tmp_path / "src", tmp_path / "out", to="hf", max_shard_size=4000)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    written = {}
    for shard in set(index["weight_map"].values()):
        written.update(load_file(out / shard))
    source = load_file(tmp_path / "src" / "model.safetensors")
    assert {k: (v.dtype, v.shape) for k, v in written.items()} == {k: (v.dtype, v.shape) for k, v in source.items()}
    assert all(torch.equal(written[k], source[k]) for k in source)


def test_tied_weights_saved_under_the_heads_name_only_load(tmp_path):
    """A tied checkpoint whose one copy of the shared matrix is named lm_head.weight (as a writer that drops the other
    name of a shared tensor may keep it): transformers ties it back to the embedding; it was refused as missing the
    embedding."""
    ref = hf_folder(tmp_path)
    rewrite_weights(tmp_path, lambda sd: sd.update({"lm_head.weight": sd.pop("transformer.wte.weight")}))
    model, _ = load_hf(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(model(ids()).logits, ref(ids()).logits, atol=1e-5, rtol=0)
    assert model.lm_head.weight is model.wte.weight


@pytest.mark.parametrize("size", ["1gib", "100mib", "4kib", "1GIB", "3Kib", "2gB"])
def test_a_binary_unit_in_any_case_is_read_as_transformers_reads_it(size):
    """transformers reads KiB, MiB and GiB in any case (only a lowercase final 'b' of KB, MB, GB means bits): "1gib"
    given to save_pretrained shards at 1 GiB, and was refused here as a bad size."""
    from transformers.utils.hub import convert_file_size_to_int

    from neurallayers.interop.hf_write import shard_bytes

    assert shard_bytes(size) == convert_file_size_to_int(size)
