"""A sentence-transformers modules.json whose module path leads outside the model folder is refused, naming the file
and the path, by load_hf and `info` (sentence_transformers_settings) alike: the pooling config was read from wherever
it pointed."""

from __future__ import annotations

import json

import pytest

from neurallayers import ModelConfig, build_model
from neurallayers.interop import load_hf, save_hf
from neurallayers.interop.hf import sentence_transformers_settings

ENCODER = ModelConfig.from_name("bert-tiny").replace(vocab_size=64, block_size=16, n_embd=16, n_head=2)


def _folder(tmp_path, pooling_path: object):
    folder = tmp_path / "model"
    save_hf(build_model(ENCODER), None, folder)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": pooling_path, "type": "sentence_transformers.models.Pooling"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder


@pytest.mark.parametrize("path", ["../outside", "1_Pooling/../../outside", "{outside}"])
def test_a_module_path_outside_the_folder_is_refused(tmp_path, path):
    folder = _folder(tmp_path, path.format(outside=tmp_path / "outside"))
    match = r"modules\.json: the Pooling module's path '.*outside' leads outside the model folder"
    with pytest.raises(ValueError, match=match):
        load_hf(folder)
    with pytest.raises(ValueError, match=match):
        sentence_transformers_settings(folder)


def test_a_linked_module_folder_is_the_users_arrangement_and_is_read(tmp_path):
    """The name in modules.json is checked, not where links lead (a folder of links, as the HF cache keeps files)."""
    folder = _folder(tmp_path, "1_Pooling")
    (folder / "1_Pooling").symlink_to(tmp_path / "outside")
    assert load_hf(folder)[0].config.extra["pooling"] == "cls"


def test_module_paths_inside_the_folder_are_read(tmp_path):
    folder = _folder(tmp_path, "./1_Pooling")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    assert sentence_transformers_settings(folder)["pooling"] == "max"
    assert load_hf(folder)[0].config.extra["pooling"] == "max"


def test_a_module_path_that_is_no_string_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"the Pooling module's path must be a string, got \['x'\]"):
        sentence_transformers_settings(_folder(tmp_path, ["x"]))
