"""save_hf into a folder that holds an earlier save: a failed write leaves the old weights loadable, only transformers'
shard names are cleaned up, stale tokenizer files are named; wrong tokenizer objects and dtype names in load_hf."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import warnings

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers import ModelConfig, build_model  # noqa: E402
from neurallayers.data.tokenizers import Tokenizer  # noqa: E402
from neurallayers.interop import hf_write, load_hf, save_hf  # noqa: E402

VOCAB = 64


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def _hf_tokenizer() -> HFTokenizer:
    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(10)}}
    hf = HFTokenizer(WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = Whitespace()
    return hf


def _disk_full_after(monkeypatch, n: int) -> None:
    """save_safetensors writes n files, then the disk is full."""
    real = hf_write.save_safetensors
    calls = []

    def save(sd, path, **kw):
        calls.append(path)
        if len(calls) > n:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(sd, path, **kw)

    monkeypatch.setattr(hf_write, "save_safetensors", save)


@pytest.mark.parametrize(("old_shard", "new_shard"), [(None, None), (None, 3000), (3000, 3000), (3000, None)])
def test_a_full_disk_mid_save_leaves_the_old_weights_loadable(tmp_path, monkeypatch, old_shard, new_shard):
    """The old weight files were deleted before the new ones were written: a full disk (or a kill) then left a folder
    with no weights, or half of the new shards."""
    old, new = _model(0), _model(1)
    save_hf(old, None, tmp_path, max_shard_size=old_shard)
    before = sorted(p.name for p in tmp_path.iterdir())
    _disk_full_after(monkeypatch, 1 if new_shard else 0)  # the second shard fails, or the only file
    with pytest.raises(OSError, match="No space left"):
        save_hf(new, None, tmp_path, max_shard_size=new_shard)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file left either
    back, _ = load_hf(tmp_path)
    assert _same_weights(back, old)
    save_hf(new, None, tmp_path, max_shard_size=new_shard)  # and once the disk has room, the new weights load
    assert _same_weights(load_hf(tmp_path)[0], new)


KILLED_SAVE = """
import os, signal, sys, torch
from neurallayers import ModelConfig, build_model
from neurallayers.interop import hf_write, save_hf
real = hf_write.save_safetensors
def save(sd, path, **kw):
    real(sd, path, **kw)
    os.kill(os.getpid(), signal.SIGKILL)  # once the first new file is whole
hf_write.save_safetensors = save
torch.manual_seed(1)
model = build_model(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
save_hf(model, None, sys.argv[1], max_shard_size=int(sys.argv[2]) or None)
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="no SIGKILL here")
@pytest.mark.parametrize("new_shard", [0, 3000])
def test_a_save_killed_mid_way_leaves_the_old_weights_and_the_next_save_clears_its_files(tmp_path, new_shard):
    old = _model(0)
    save_hf(old, None, tmp_path, max_shard_size=3000)
    before = sorted(p.name for p in tmp_path.iterdir())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(tmp_path), str(new_shard)], env=env, check=False)
    assert done.returncode == -9
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # its temporary file stays behind
    assert _same_weights(load_hf(tmp_path)[0], old)
    save_hf(_model(1), None, tmp_path, max_shard_size=3000)
    after = sorted(p.name for p in tmp_path.iterdir())
    assert not [name for name in after if name.startswith(".")]  # the killed save's files are gone
    assert len(after) == len(before)  # and the earlier shards (a save with as many takes other names)
    assert _same_weights(load_hf(tmp_path)[0], _model(1))


@pytest.mark.parametrize(("old_shard", "new_shard"), [(3000, None), (None, 3000), (3000, 6000), (6000, 3000)])
def test_a_resave_keeps_only_the_new_weight_files(tmp_path, old_shard, new_shard):
    new = _model(1)
    save_hf(_model(0), None, tmp_path, max_shard_size=old_shard)
    save_hf(new, None, tmp_path, max_shard_size=new_shard)
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    if new_shard is None:
        assert not shards and not (tmp_path / "model.safetensors.index.json").exists()
    else:
        assert len(shards) > 1 and not (tmp_path / "model.safetensors").exists()
        assert all(name.endswith(f"-of-{len(shards):05d}.safetensors") for name in shards)
    assert _same_weights(load_hf(tmp_path)[0], new)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()  # the oracle reads the same folder
    x = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, new(x).logits, atol=1e-5, rtol=0)


def test_a_users_own_files_that_look_like_shards_stay(tmp_path):
    """model-*-of-*.safetensors also matched (and deleted) a user's model-best-of-3.safetensors."""
    mine = ["model-best-of-3.safetensors", "model-1-of-2.safetensors", "model-00001-of-00002.safetensors.bak"]
    for name in mine:
        (tmp_path / name).write_bytes(b"mine")
    save_hf(_model(0), None, tmp_path, max_shard_size=3000)
    save_hf(_model(0), None, tmp_path)
    assert all((tmp_path / name).read_bytes() == b"mine" for name in mine)
    assert not list(tmp_path.glob("model-0*-of-0*.safetensors"))  # the save's own shards are gone


def test_a_model_saved_alone_names_the_tokenizer_files_it_leaves(tmp_path):
    """An earlier save's tokenizer stayed and load_hf paired it with the new model without a word."""
    tok = Tokenizer.from_hf(_hf_tokenizer())
    save_hf(_model(0), tok, tmp_path)
    with pytest.warns(UserWarning, match=r"keeps tokenizer\.json, tokenizer_config\.json from an earlier save"):
        save_hf(_model(1), None, tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()  # left, as transformers' save_pretrained leaves it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_hf(_model(1), tok, tmp_path)  # with its tokenizer: nothing stale
        save_hf(_model(1), None, tmp_path / "other")


def test_a_decoder_saved_over_a_sentence_pipeline_names_its_files(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        (tmp_path / name).write_text("{}")
    with pytest.warns(UserWarning, match=r"keeps modules\.json, sentence_bert_config\.json, 1_Pooling/config\.json"):
        save_hf(_model(0), None, tmp_path)


@pytest.mark.parametrize("kind", ["tokenizers", "transformers"])
def test_a_tokenizer_of_another_library_is_named(tmp_path, kind):
    """tokenizers.Tokenizer and transformers' tokenizers failed with AttributeError: 'vocab_size' / 'bos_id'."""
    hf = _hf_tokenizer()
    other = hf if kind == "tokenizers" else transformers.PreTrainedTokenizerFast(tokenizer_object=hf)
    with pytest.raises(ValueError, match=r"^tokenizer: expected a neurallayers Tokenizer or None, got .*Tokenizer.*"
                                         r"Tokenizer\.load\(path\)"):
        save_hf(_model(0), other, tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize(("name", "dtype"), [("float16", torch.float16), ("fp16", torch.float16),
                                             ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16),
                                             ("float32", torch.float32), ("fp32", torch.float32),
                                             ("torch.bfloat16", torch.bfloat16)])
def test_load_hf_takes_dtype_names(tmp_path, name, dtype):
    """A name failed in torch's .to() with TypeError, after every weight was read."""
    model = _model(0)
    save_hf(model, None, tmp_path)
    back, _ = load_hf(tmp_path, dtype=name)
    assert {p.dtype for p in back.parameters()} == {dtype}
    assert all(torch.equal(a.to(dtype), b) for a, b in zip(model.state_dict().values(), back.state_dict().values(),
                                                            strict=True))


@pytest.mark.parametrize("bad", ["half16", "int8", torch.int8, 16])
def test_load_hf_refuses_other_dtypes_naming_the_field(tmp_path, bad):
    save_hf(_model(0), None, tmp_path)
    with pytest.raises(ValueError, match=r"^dtype="):
        load_hf(tmp_path, dtype=bad)
