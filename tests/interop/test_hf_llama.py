"""Llama / Mistral interop: GQA, RoPE scaling, biases, sliding window, ties; logits equal to 1e-5 both ways."""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers import ModelConfig, build_model  # noqa: E402
from neurallayers.api import load  # noqa: E402
from neurallayers.data.tokenizers import Tokenizer  # noqa: E402
from neurallayers.interop import llama  # noqa: E402
from neurallayers.interop.hf import save_hf  # noqa: E402

VOCAB = 96
SEQ = 12
BASE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16, "rope_theta": 500000.0}
CASES = {  # name -> (HF class, config kwargs)
    "gqa": ("Llama", {}),
    "mqa-tied": ("Llama", {"num_key_value_heads": 1, "tie_word_embeddings": True}),
    "rope-linear": ("Llama", {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0}}),
    "rope-llama3": ("Llama", {"rope_parameters": LLAMA3}),
    # max_position_embeddings 8 < SEQ, so the base grows
    "rope-dynamic": ("Llama", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4},
                               "max_position_embeddings": 8}),
    "bias-headdim": ("Llama", {"attention_bias": True, "mlp_bias": True, "head_dim": 16}),
    "mistral-window": ("Mistral", {"sliding_window": 5}),  # shorter than SEQ, so the window matters
    "mistral-window-tied": ("Mistral", {"sliding_window": 3, "num_key_value_heads": 1, "tie_word_embeddings": True}),
}


def hf_model(case: str, seed: int = 0) -> torch.nn.Module:
    kind, extra = CASES[case]
    cfg = getattr(transformers, f"{kind}Config")(**(BASE | extra))
    torch.manual_seed(seed)
    model = getattr(transformers, f"{kind}ForCausalLM")(cfg).eval()
    with torch.no_grad():  # random norm weights, so a swapped norm cannot pass
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def left_padded(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention_mask, position_ids), each (3, SEQ); rows 1 and 2 left-padded by 3 and 7."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, SEQ), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :7] = 0
    return ids.masked_fill(mask == 0, 0), mask, (mask.cumsum(-1) - 1).clamp(min=0)


def greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """Argmax decoding by full forwards; works for ours and for transformers models alike."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt):].tolist()


def assert_same_logits(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    pristine = copy.deepcopy(ref)  # transformers' dynamic NTK keeps the largest length it has seen (state)
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=1e-5, rtol=0)
        ids, mask, pos = left_padded()
        a = ours(ids, attention_mask=mask, position_ids=pos).logits
        if (ours.config.rope_scaling or {}).get("type") == "dynamic":
            # dynamic NTK scales each row by its own length (the same logits as the row alone); transformers by
            # the batch's longest row: compare each padded row with a fresh transformers model on that row alone
            for r in range(len(ids)):
                keep = mask[r].bool()
                alone = copy.deepcopy(pristine)(ids[r, keep][None]).logits[0]
                torch.testing.assert_close(a[r, keep], alone, atol=1e-5, rtol=0)
            return
        b = ref(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_hf_folder_loads_with_equal_logits(tmp_path, case):
    ref = hf_model(case)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    model, _ = load(tmp_path)
    cfg = model.config
    assert (cfg.n_kv_head, cfg.tie_embeddings) == (ref.config.num_key_value_heads, ref.config.tie_word_embeddings)
    assert cfg.sliding_window == getattr(ref.config, "sliding_window", None)
    assert_same_logits(model, ref)


@pytest.mark.parametrize("case", list(CASES))
def test_save_hf_loads_in_transformers_with_equal_logits(tmp_path, case):
    src = tmp_path / "src"
    hf_model(case).save_pretrained(src, safe_serialization=True)
    model, _ = load(src)
    tok = Tokenizer.train_char(["abcdefghij klmnop"])
    save_hf(model, tok, tmp_path / "out")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(ref).__name__ == f"{CASES[case][0]}ForCausalLM"
    assert ref.config.rope_parameters["rope_type"] == (model.config.rope_scaling or {}).get("type", "default")
    assert ref.config.rope_parameters["rope_theta"] == model.config.rope_theta
    assert ref.config.eos_token_id == tok.eos_id
    assert_same_logits(model, ref)
    # transformers 4.x reads only the top-level rope_theta and rope_scaling (in its {"rope_type": ...} form)
    rope = CASES[case][1].get("rope_parameters")
    hf = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf["rope_theta"] == (rope["rope_theta"] if rope else 10000.0)
    assert hf["rope_scaling"] == ({k: v for k, v in rope.items() if k != "rope_theta"} if rope else None)
    # a folder with only those keys (as 4.x writes it) is the same model to us and to transformers
    legacy = tmp_path / "legacy"
    shutil.copytree(tmp_path / "out", legacy)
    del hf["rope_parameters"]
    (legacy / "config.json").write_text(json.dumps(hf))
    back, _ = load(legacy)
    assert back.config == model.config
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())
    assert_same_logits(back, transformers.AutoModelForCausalLM.from_pretrained(legacy).eval())


def test_our_model_with_rope_scaling_written_and_read_back(tmp_path):
    """Ours -> HF folder -> ours: identical weights, config and greedy generations; transformers agrees."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                      intermediate_size=48, norm="rmsnorm", mlp="swiglu", position="rope", bias=False,
                      tie_embeddings=False, rope_theta=500000.0,
                      rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 16})
    model = build_model(cfg).eval()
    save_hf(model, None, tmp_path, max_shard_size=10_000)
    back, _ = load(tmp_path)
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert back.config.rope_scaling == model.config.rope_scaling
    prompt = [5, 17, 42, 8]
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert greedy(back, prompt, 10) == greedy(model, prompt, 10) == greedy(ref, prompt, 10)


def test_legacy_rope_scaling_config_is_read(tmp_path):
    """Configs written before transformers 5 keep `rope_scaling` + a top-level `rope_theta`."""
    ref = hf_model("rope-linear")
    ref.save_pretrained(tmp_path, safe_serialization=True)
    hf = json.loads((tmp_path / "config.json").read_text())
    hf.pop("rope_parameters")
    hf.update(rope_scaling={"type": "linear", "factor": 4.0}, rope_theta=1000.0)
    cfg = llama.config_from_hf(hf)
    assert cfg.rope_theta == 1000.0 and cfg.rope_scaling == {"type": "linear", "factor": 4.0}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    model, _ = load(tmp_path)
    assert_same_logits(model, ref)


@pytest.mark.parametrize("change, match", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_parameters": {"rope_type": "proportional", "factor": 2.0, "rope_theta": 1e4}}, "proportional"),
    ({"attention_bias": True, "mlp_bias": False}, "attention_bias"),
    ({"model_type": "qwen2"}, "model_type"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "beta": 1}}, "beta"),
    # the refusal names the field the type came from
    ({"rope_parameters": {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}},
     "rope_parameters rope_type='longrope'"),
    ({"rope_scaling": {"type": "longrope", "factor": 2.0}}, "rope_scaling rope_type='longrope'"),
])
def test_config_from_hf_refuses_what_we_do_not_build(change, match):
    hf = llama.config_to_hf(llama.config_from_hf(dict(BASE, model_type="llama"))) | change
    with pytest.raises(ValueError, match=match):
        llama.config_from_hf(hf)


@pytest.mark.parametrize("arch", ["LlamaForSequenceClassification", "LlamaForTokenClassification", "LlamaModel",
                                  "MistralForSequenceClassification"])
def test_a_folder_without_a_language_model_head_is_refused_naming_its_architecture(tmp_path, arch):
    """A classifier (or a bare LlamaModel) is not a language model: refused naming `architectures`."""
    kind = "Mistral" if arch.startswith("Mistral") else "Llama"
    cfg = getattr(transformers, f"{kind}Config")(**(BASE | {"num_labels": 3, "pad_token_id": 0}))
    torch.manual_seed(0)
    getattr(transformers, arch)(cfg).save_pretrained(tmp_path, safe_serialization=True)
    with pytest.raises(ValueError, match=rf"architectures=\['{arch}'\].*{kind}ForCausalLM"):
        load(tmp_path)


def test_config_to_hf_names_fields_llama_cannot_express():
    cfg = ModelConfig(vocab_size=VOCAB, block_size=32, n_layer=1, n_head=4, n_embd=32)  # GPT-2 style
    with pytest.raises(ValueError, match="norm='layernorm'.*mlp='gelu'.*position='learned'"):
        llama.config_to_hf(cfg)
    windowed = ModelConfig(vocab_size=VOCAB, block_size=32, n_layer=1, n_head=4, n_embd=32, norm="rmsnorm",
                           mlp="swiglu", position="rope", sliding_window=4, bias=True)
    with pytest.raises(ValueError, match="mistral: bias=True"):
        llama.config_to_hf(windowed)


def test_generation_config_eos_ids_end_a_generation_as_in_transformers(tmp_path):
    """generation_config.json may list several eos ids (Llama 3 Instruct ends a turn with <|eot_id|>): generate and
    stream stop at each, as transformers' generate does, and save_hf writes the list back."""
    import string

    from neurallayers.generation import generate, stream

    tok = Tokenizer.train_char([string.printable[:94]])  # 96 ids, as the model's vocabulary
    ref = hf_model("gqa")
    prompt = [5, 9, 30, 7]
    with torch.no_grad():
        free = ref.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=8, eos_token_id=None,
                            pad_token_id=0)[0, len(prompt):].tolist()
    turn_end = next(t for t in free[2:] if t not in free[:2] and t != tok.eos_id)  # a token greedy reaches later
    ref.generation_config.eos_token_id = [tok.eos_id, turn_end]
    ref.save_pretrained(tmp_path / "src", safe_serialization=True)
    tok.save(tmp_path / "src")
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=8, pad_token_id=0)
    want = want[0, len(prompt):].tolist()
    assert want[-1] == turn_end and len(want) < 8

    model, loaded = load(tmp_path / "src")
    assert loaded.eos_ids == [tok.eos_id, turn_end]
    (gen,) = generate(model, loaded, [prompt], temperature=0, max_new_tokens=8)
    assert gen.token_ids == want[:-1] and gen.finish_reason == "stop"  # the eos itself is not returned
    assert list(stream(model, loaded, prompt, temperature=0, max_new_tokens=8))[-1].finish_reason == "stop"
    # ids in without the tokenizer it loaded: the same stop (it ran on to 8 tokens where tokenizer files exist)
    (gen,) = generate(model, None, [prompt], temperature=0, max_new_tokens=8)
    assert gen.token_ids == want[:-1] and gen.finish_reason == "stop"
    save_hf(model, loaded, tmp_path / "out")
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "out").eos_token_id == [tok.eos_id, turn_end]
    # a folder without tokenizer files (weights and configs only): ids in, the same stop (it ran on to 8 tokens)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "src" / name).unlink(missing_ok=True)
    bare, none = load(tmp_path / "src")
    assert none is None
    (gen,) = generate(bare, None, [prompt], temperature=0, max_new_tokens=8)
    assert gen.token_ids == want[:-1] and gen.finish_reason == "stop"


def test_config_json_eos_ids_end_a_generation_without_a_generation_config(tmp_path):
    """A folder without generation_config.json (as merge tools write them): transformers' generate takes config.json's
    eos_token_id (an id, or a list such as Llama 3.1 Instruct's) and stops at each; so do generate and stream."""
    import string

    from neurallayers.generation import generate, stream

    tok = Tokenizer.train_char([string.printable[:94]])
    ref = hf_model("gqa")
    prompt = [5, 9, 30, 7]
    with torch.no_grad():
        free = ref.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=8, eos_token_id=None,
                            pad_token_id=0)[0, len(prompt):].tolist()
    turn_end = next(t for t in free[2:] if t not in free[:2] and t != tok.eos_id)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    tok.save(tmp_path)
    (tmp_path / "generation_config.json").unlink()
    edit_config(tmp_path, eos_token_id=[tok.eos_id, turn_end])
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=8, pad_token_id=0)
    want = want[0, len(prompt):].tolist()
    assert want[-1] == turn_end and len(want) < 8
    model, loaded = load(tmp_path)
    assert loaded.eos_ids == [tok.eos_id, turn_end]
    (gen,) = generate(model, loaded, [prompt], temperature=0, max_new_tokens=8)
    assert gen.token_ids == want[:-1] and gen.finish_reason == "stop"
    assert list(stream(model, loaded, prompt, temperature=0, max_new_tokens=8))[-1].finish_reason == "stop"


def test_extra_eos_ids_survive_a_run_directory(tmp_path):
    """A run directory has no generation_config.json: the tokenizer keeps the extra eos ids, so HF -> run -> HF
    still stops where transformers does and writes the list back."""
    import string

    from neurallayers.interop.convert import convert

    tok = Tokenizer.train_char([string.printable[:94]])  # 96 ids, as the model's vocabulary
    model = hf_model("gqa")
    model.generation_config.eos_token_id = [tok.eos_id, 7]
    model.save_pretrained(tmp_path / "src", safe_serialization=True)
    tok.save(tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "run", to="run")
    assert load(tmp_path / "run")[1].eos_ids == [tok.eos_id, 7]
    convert(tmp_path / "run", tmp_path / "back", to="hf")
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "back").eos_token_id == [tok.eos_id, 7]
    assert load(tmp_path / "back")[1].eos_ids == [tok.eos_id, 7]


def test_eos_ids_of_a_tokenizer_without_an_eos_token_survive_a_run_directory(tmp_path):
    """A folder whose generation_config.json names the eos but whose tokenizer names none: HF -> run -> HF wrote
    eos_token_id null, so neither transformers' generate nor ours stopped on the copy."""
    import string

    from neurallayers.interop.convert import convert

    model = hf_model("gqa")
    model.generation_config.eos_token_id = 7
    model.save_pretrained(tmp_path / "src", safe_serialization=True)
    Tokenizer.train_char([string.printable[:94]]).save(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "tokenizer_config.json").read_text())
    (tmp_path / "src" / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": None}))
    assert load(tmp_path / "src")[1].eos_ids == [7]
    convert(tmp_path / "src", tmp_path / "run", to="run")
    convert(tmp_path / "run", tmp_path / "back", to="hf")
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "back").eos_token_id == 7
    assert load(tmp_path / "back")[1].eos_ids == [7]


def test_bad_extra_eos_ids_in_a_tokenizer_config_are_refused(tmp_path):
    tok = Tokenizer.train_char(["abc"])
    tok.extra_eos_ids = [3]
    tok.save(tmp_path)
    assert Tokenizer.load(tmp_path).extra_eos_ids == [3]
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["neurallayers_extra_eos_ids"] = [10**6]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="neurallayers_extra_eos_ids"):
        Tokenizer.load(tmp_path)


def test_a_text_prompt_gets_the_tokenizers_bos_as_in_transformers(tmp_path):
    """A Llama tokenizer.json puts <s> before a prompt (its post-processor); text prompts went in without it, so a
    model trained with it generated something else than transformers' pipeline."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    from neurallayers.generation import generate

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=hf, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**(BASE | {"vocab_size": hf.get_vocab_size()})))
    ref.save_pretrained(tmp_path / "src")
    fast.save_pretrained(tmp_path / "src")
    model, tok = load(tmp_path / "src")
    ids = fast("the fox")["input_ids"]
    assert ids[0] == 1 and tok.encode("the fox", add_special_tokens=True) == ids
    with torch.no_grad():
        want = ref.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=10, eos_token_id=None,
                            pad_token_id=0)[0, len(ids):].tolist()
    (gen,) = generate(model, tok, "the fox", temperature=0, max_new_tokens=10, ignore_eos=True)
    assert gen.token_ids == want and gen.prompt_tokens == len(ids)


def test_a_dynamic_ntk_context_survives_the_round_trip(tmp_path):
    """A Hugging Face config keeps one length (the original, where dynamic NTK starts); the import took the context
    as factor times it, so block_size 128 with original 100 and factor 2 came back as 200."""
    from neurallayers import ModelConfig, build_model

    cfg = ModelConfig(vocab_size=VOCAB, block_size=128, n_layer=1, n_head=2, n_embd=16, position="rope",
                      norm="rmsnorm", mlp="swiglu", bias=False,
                      rope_scaling={"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 100})
    save_hf(build_model(cfg), None, tmp_path / "hf")
    assert load(tmp_path / "hf")[0].config.block_size == 128
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert ref.config.max_position_embeddings == 100  # where transformers starts the scaling
    as_usual = cfg.replace(block_size=200)  # factor x original: no extra key, as before
    save_hf(build_model(as_usual), None, tmp_path / "usual")
    assert "neurallayers_block_size" not in (tmp_path / "usual/config.json").read_text()
    assert load(tmp_path / "usual")[0].config.block_size == 200


def edit_config(folder, **changes) -> None:
    """Sets (or, for None, removes) top-level keys of a folder's config.json."""
    hf = json.loads((folder / "config.json").read_text())
    hf.update(changes)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in hf.items() if v is not None}))


def test_rope_scaling_next_to_rope_parameters_is_read_as_transformers_reads_it(tmp_path):
    """A transformers 5 folder (rope_parameters, unscaled) whose config.json a user extended the 4.x way, with
    `rope_scaling`: transformers 4 and 5 both run the scaled model; reading rope_parameters gave another one."""
    ref = hf_model("gqa")
    ref.save_pretrained(tmp_path, safe_serialization=True)
    edit_config(tmp_path, rope_scaling={"type": "linear", "factor": 4.0})
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert ref.config.rope_parameters["rope_type"] == "linear"
    model, _ = load(tmp_path)
    assert model.config.rope_scaling == {"type": "linear", "factor": 4.0}
    assert_same_logits(model, ref)


@pytest.mark.parametrize("field", ["rope_parameters", "rope_scaling"])
def test_llama3_scaling_without_its_original_length_takes_max_position_embeddings(tmp_path, field):
    """transformers falls back to max_position_embeddings for llama3's original_max_position_embeddings."""
    hf_model("gqa").save_pretrained(tmp_path, safe_serialization=True)
    rope = {k: v for k, v in LLAMA3.items() if k != "original_max_position_embeddings"}
    edit_config(tmp_path, rope_parameters=rope if field == "rope_parameters" else None,
                rope_scaling=rope if field == "rope_scaling" else None)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    model, _ = load(tmp_path)
    assert model.config.rope_scaling["original_max_position_embeddings"] == BASE["max_position_embeddings"]
    assert_same_logits(model, ref)
    save_hf(model, None, tmp_path / "out")
    assert_same_logits(model, transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval())


def test_a_mistral_config_without_optional_keys_takes_transformers_defaults():
    """A config.json that leaves out sliding_window means MistralConfig's 4096-token window, not none (and its
    other defaults differ from Llama's): otherwise the model silently attends further back than transformers."""
    given = {"model_type": "mistral", "hidden_size": 64, "num_attention_heads": 8, "num_hidden_layers": 2,
             "vocab_size": VOCAB}
    ref = transformers.MistralConfig(**given)
    cfg = llama.config_from_hf(given)
    assert (cfg.sliding_window, cfg.n_kv_head, cfg.intermediate_size, cfg.block_size) == (
        ref.sliding_window, ref.num_key_value_heads, ref.intermediate_size, ref.max_position_embeddings)
    assert llama.config_from_hf(given | {"sliding_window": None}).sliding_window is None  # explicit null: no window
