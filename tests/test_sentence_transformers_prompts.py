"""A sentence-transformers folder whose config_sentence_transformers.json names a default prompt: its encode puts the
prompt before each text. embed does not; loading such a folder says so instead of embedding differently in silence."""

import json
import os
import warnings

import pytest

from neurallayers.embeddings import minilm_folder
from neurallayers.interop.hf import sentence_transformers_settings


def _minilm_with(folder, settings: dict) -> None:
    src = minilm_folder()
    for name in os.listdir(src):
        if name != "config_sentence_transformers.json":
            os.symlink(src / name, folder / name)
    (folder / "config_sentence_transformers.json").write_text(json.dumps(settings))


def test_a_default_prompt_is_named_when_the_folder_is_read(tmp_path):
    _minilm_with(tmp_path, {"prompts": {"query": "query: ", "document": "passage: "},
                            "default_prompt_name": "document"})
    # load reads the folder's settings with this (the weights need not load to see it)
    with pytest.warns(UserWarning, match=r"the default prompt 'document' \('passage: '\) is not applied here"):
        sentence_transformers_settings(tmp_path)
    (tmp_path / "config_sentence_transformers.json").write_text(json.dumps({"default_prompt_name": "query"}))
    with pytest.warns(UserWarning, match=r"default_prompt_name 'query' names no entry of its prompts"):
        sentence_transformers_settings(tmp_path)


@pytest.mark.parametrize("settings", [{"prompts": {"query": "query: "}}, {"prompts": {"": ""},
                                                                          "default_prompt_name": ""}])
def test_no_default_prompt_reads_quietly(tmp_path, settings):
    _minilm_with(tmp_path, settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert sentence_transformers_settings(tmp_path)["pooling"] == "mean"
