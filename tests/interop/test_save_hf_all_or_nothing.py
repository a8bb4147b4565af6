"""save_hf over an earlier save is all or nothing: a kill after any file operation leaves a folder that loads as the
old save or the new one (weights, config and tokenizer files together), never a mix, and a write error at any step
leaves the old folder as it was, reported as a WriteError naming the folder."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from neurallayers import ModelConfig, build_model
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.files import WriteError
from neurallayers.interop import load_hf, save_hf

VOCAB = 64
MUTATIONS = ("replace", "rename", "unlink", "remove", "rmdir")  # what a save does to a folder, besides new files


def _model(seed: int, n_layer: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(vocab_size=VOCAB, block_size=16, n_layer=n_layer, n_head=2, n_embd=16)).eval()


def _tokenizer() -> Tokenizer:
    hf = HFTokenizer(WordLevel({"[UNK]": 0, **{f"w{i}": i + 1 for i in range(10)}}, unk_token="[UNK]"))
    hf.pre_tokenizer = Whitespace()
    return Tokenizer.from_hf(hf)


def _state(folder: Path) -> tuple | None:
    """What a load of `folder` gives: its weights and the bytes of its config and tokenizer files; None when it
    does not load."""
    try:
        model, _ = load_hf(folder)
    except (ValueError, FileNotFoundError):
        return None
    files = tuple((name, (folder / name).read_bytes()) for name in ("config.json", "generation_config.json",
                                                                     "tokenizer.json", "tokenizer_config.json"))
    return tuple((k, v.tolist()) for k, v in model.state_dict().items()), files


def _snapshots(monkeypatch, folder: Path, into: Path) -> list[Path]:
    """Copies `folder` after every rename or removal in it: what a kill at that moment leaves."""
    copies: list[Path] = []
    real = {name: getattr(os, name) for name in MUTATIONS}

    def watched(name):
        def op(*args, **kwargs):
            out = real[name](*args, **kwargs)
            if kwargs.get("dir_fd") is None and any(folder in Path(os.fspath(a)).parents for a in args[:2]):
                copies.append(into / f"kill-{len(copies)}")
                shutil.copytree(folder, copies[-1])
            return out
        return op

    for name in MUTATIONS:
        monkeypatch.setattr(os, name, watched(name))
    return copies


LAYOUTS = [(None, None), (3000, 3000), (None, 3000), (3000, None), (3000, 6000), (6000, 3000)]


@pytest.mark.parametrize(("old_shard", "new_shard"), LAYOUTS)
def test_a_kill_at_any_step_leaves_the_old_save_or_the_new_one(tmp_path, monkeypatch, old_shard, new_shard):
    """Shards named as the old ones were renamed over them one after another: a kill between two renames left old and
    new shards under one index, which loaded as neither model."""
    folder = tmp_path / "model"
    save_hf(_model(1), _tokenizer(), tmp_path / "new", max_shard_size=new_shard)
    save_hf(_model(0), _tokenizer(), folder, max_shard_size=old_shard)
    old, new = _state(folder), _state(tmp_path / "new")
    copies = _snapshots(monkeypatch, folder, tmp_path)
    save_hf(_model(1), _tokenizer(), folder, max_shard_size=new_shard)
    monkeypatch.undo()
    assert len(copies) > 3
    states = [_state(copy) for copy in copies]
    mixed = [copy.name for copy, state in zip(copies, states, strict=True) if state not in (old, new)]
    assert not mixed, f"a kill there leaves a folder that loads as neither save: {mixed}"
    assert states[-1] == new and _state(folder) == new


@pytest.mark.parametrize(("old_shard", "new_shard"), LAYOUTS)
def test_a_write_error_at_any_step_is_named_and_leaves_a_whole_save(tmp_path, monkeypatch, old_shard, new_shard):
    folder = tmp_path / "model"
    save_hf(_model(1), _tokenizer(), tmp_path / "new", max_shard_size=new_shard)
    save_hf(_model(0), _tokenizer(), folder, max_shard_size=old_shard)
    old, new = _state(folder), _state(tmp_path / "new")
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    real, calls = os.replace, []

    def full_disk_at(step):
        def replace(*args, **kwargs):
            calls.append(args)
            if len(calls) == step:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kwargs)
        return replace

    step = 1
    while True:
        calls.clear()
        monkeypatch.setattr(os, "replace", full_disk_at(step))
        try:
            save_hf(_model(1), _tokenizer(), folder, max_shard_size=new_shard)
        except WriteError as e:
            assert str(e).startswith(f"could not write the Hugging Face folder {folder}: No space left on device; ")
            assert str(e).endswith(("; the folder is as it was", "; its earlier weights still load"))
        else:
            break  # past the last rename: the save went through
        finally:
            monkeypatch.undo()
        assert _state(folder) in (old, new), step
        if _state(folder) == old:  # failed before the weights switched: the old save, byte for byte, no temp files
            assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
            assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
        step += 1
    assert step > 3 and _state(folder) == new


@pytest.mark.parametrize(("old_shard", "new_shard"), [(None, None), (3000, 3000), (None, 3000)])
def test_convert_overwrite_killed_at_any_step_leaves_the_old_folder_or_the_new_one(tmp_path, monkeypatch, old_shard,
                                                                                   new_shard):
    """convert --overwrite deleted the folder's old entries before it renamed the new ones in: a kill between left
    a folder without a model, or with part of the new one."""
    from neurallayers.interop import convert

    for seed in (0, 1):
        save_hf(_model(seed), _tokenizer(), tmp_path / f"src{seed}")
    folder = convert(tmp_path / "src0", tmp_path / "model", to="hf", max_shard_size=old_shard)
    (folder / "notes.txt").write_text("not the conversion's: overwrite removes it, after")
    old = _state(folder)
    copies = _snapshots(monkeypatch, folder, tmp_path)
    convert(tmp_path / "src1", folder, to="hf", max_shard_size=new_shard, overwrite=True)
    monkeypatch.undo()
    new = _state(folder)
    assert new not in (None, old) and len(copies) > 3
    mixed = [copy.name for copy in copies if _state(copy) not in (old, new)]
    assert not mixed, f"a kill there leaves a folder that loads as neither: {mixed}"
    assert not (folder / "notes.txt").exists()
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_a_folder_that_cannot_be_made_is_a_write_error_naming_it(tmp_path):
    """mkdir's bare "[Errno 20] Not a directory" named no field."""
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(WriteError, match=r"^could not write the Hugging Face folder .*notes\.txt/model: Not a dir"):
        save_hf(_model(0), None, tmp_path / "notes.txt" / "model")


def test_new_metadata_goes_in_before_the_weights_switch_and_never_after(tmp_path, monkeypatch):
    """A save whose config or tokenizer files change too: the one point a kill leaves a mix is the moment between the
    metadata renames and the weights' switch (new files beside the old weights), never old files beside new weights
    or part of the new shards."""
    folder = tmp_path / "model"
    tok = _tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    save_hf(_model(1), tok, tmp_path / "new", max_shard_size=3000)
    save_hf(_model(0), _tokenizer(), folder, max_shard_size=3000)
    old, new = _state(folder), _state(tmp_path / "new")
    assert old[1] != new[1]  # the tokenizer's files differ
    copies = _snapshots(monkeypatch, folder, tmp_path)
    save_hf(_model(1), tok, folder, max_shard_size=3000)
    monkeypatch.undo()
    states = [_state(copy) for copy in copies]
    window = (old[0], new[1])  # the old weights, the new files
    assert all(s in (old, window, new) for s in states)
    first_new = next(i for i, s in enumerate(states) if s != old)
    assert all(s != old for s in states[first_new:])  # once past the old save, never back
    assert states[-1] == new


def test_shards_under_other_names_load_in_transformers_and_its_save_clears_them(tmp_path):
    """A save with as many shards as the loadable ones takes model-b-0000k-of-0000n names: transformers loads them,
    and its save_pretrained into the folder removes them as its own shard files."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "model"
    save_hf(_model(0), None, folder, max_shard_size=3000)
    save_hf(_model(1), None, folder, max_shard_size=3000)
    names = sorted(p.name for p in folder.glob("model*.safetensors"))
    assert names and all(name.startswith("model-b-") for name in names)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    x = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, _model(1)(x).logits, atol=1e-5, rtol=0)
    hf.save_pretrained(folder, max_shard_size="20KB")
    assert not list(folder.glob("model-b-*"))
    save_hf(_model(0), None, folder, max_shard_size=3000)  # and back: transformers' names are free again
    assert all(not p.name.startswith("model-b-") for p in folder.glob("model*.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(load_hf(folder)[0].state_dict().values(),
                                                 _model(0).state_dict().values(), strict=True))
