"""A run's own config.yaml is a record of the run: a train or data value that a later version refuses (an empty
sample prompt, refused since runs were saved with one) or a field it no longer has must not stop the run's model
from loading. A user's config file is refused at its first bad field, named as the file writes it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

import neurallayers as nl
from neurallayers import ModelConfig
from neurallayers.training.config import RunConfig, SavedConfigWarning, TrainConfig, file_words

EMPTY_PROMPT = {"sample_prompts": [""]}


def saved_run(folder: Path, *, train: dict | None = None, data: dict | None = None, **sections: dict) -> Path:
    """A run directory's config.yaml (beside its tokenizer.json), as train saves it, with `train` / `data` fields
    (an empty sample prompt by default) and other `sections` changed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text("{}")
    saved = RunConfig(model=ModelConfig.from_name("tiny")).to_dict()
    saved["train"].update(EMPTY_PROMPT if train is None else train)
    saved["data"].update(data or {})
    for name, fields in sections.items():
        saved[name] = {**saved.get(name, {}), **fields}
    (folder / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    return folder / "config.yaml"


def test_a_value_refused_since_warns_naming_the_key_and_the_model_reads(tmp_path):
    path = saved_run(tmp_path / "run")
    with pytest.warns(SavedConfigWarning) as caught:
        run = RunConfig.from_yaml(path, saved=True)
    (message,) = [str(w.message) for w in caught]
    assert message.startswith(f"{path}: train.sample_prompts[0]='': a sample prompt needs at least one character")
    assert "--train.sample_prompts" in message and "TrainConfig" not in message
    assert run.model == ModelConfig.from_name("tiny") and run.train.sample_prompts == TrainConfig().sample_prompts


def test_each_refused_field_warns_and_the_others_are_kept(tmp_path):
    path = saved_run(tmp_path / "run", train={**EMPTY_PROMPT, "lr": 0.5, "loggers": ["tensorboard", "csv"]},
                     data={"val_fraction": 1.5})
    with pytest.warns(SavedConfigWarning) as caught:
        run = RunConfig.from_yaml(path, saved=True)
    keys = sorted(str(w.message).split(": ")[1].split("=")[0] for w in caught)
    assert keys == ["data.val_fraction", "train.loggers", "train.sample_prompts[0]"]
    assert run.train.lr == 0.5 and run.train.loggers == [] and run.data.val_fraction == 0.1


def test_a_field_or_section_this_version_does_not_know_is_not_read(tmp_path):
    path = saved_run(tmp_path / "run", train={"label_smoothing": 0.1}, eval={"tasks": ["wikitext"]})
    with pytest.warns(SavedConfigWarning) as caught:
        run = RunConfig.from_yaml(path, saved=True)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2
    assert "train has no field 'label_smoothing'" in messages[0] and "remove it from the file" in messages[0]
    assert "unknown config section 'eval'" in messages[1]
    assert run.model == ModelConfig.from_name("tiny")


def test_the_model_section_must_still_validate_named_as_the_file_writes_it(tmp_path):
    path = saved_run(tmp_path / "run", model={"n_embd": 65})
    with pytest.raises(ValueError, match=rf"^{path}: model.n_embd=65: must be divisible by n_head"):
        RunConfig.from_yaml(path, saved=True)


def test_a_users_config_file_is_refused_at_its_first_bad_field(tmp_path):
    """Read as a config to train with (the default), a run's own file too: strict, named by file and key."""
    path = saved_run(tmp_path / "run")
    user = tmp_path / "my.yaml"
    user.write_text(path.read_text())
    for source, saved in ((user, False), (path, False)):
        with pytest.raises(ValueError, match=rf"^{source}: train.sample_prompts\[0\]='': a sample prompt needs"):
            RunConfig.from_yaml(source, saved=saved)
    with pytest.raises(ValueError, match=rf"^{path}: train.sample_prompts\[0\]=''"):  # nl.train from the file
        nl.train(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_valid_saved_config_warns_nothing(tmp_path):
    path = saved_run(tmp_path / "run", train={})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert RunConfig.from_yaml(path, saved=True).train == TrainConfig()


def test_file_words_names_fields_only():
    assert file_words("TrainConfig.lr=0: must be > 0; ModelConfig.rope_scaling.factor, not ModelConfig.from_dict") \
        == "train.lr=0: must be > 0; model.rope_scaling.factor, not ModelConfig.from_dict"
