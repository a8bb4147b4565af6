"""Chat templates in files of their own, read as transformers reads them: its named templates, which transformers 5
writes to additional_chat_templates/ (none named default: chats fell back to `role: content` lines with no warning),
and a chat_template.jinja beside vocab.json + merges.txt (ignored: chats used `role: content` lines)."""

from __future__ import annotations

import json
import os

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from neurallayers.data.tokenizers import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def byte_level() -> HFTokenizer:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(["hello world, the quick brown fox\n"] * 20,
                           trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"], show_progress=False,
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return hf


def saved_with_templates(folder, templates: dict[str, str]) -> None:
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_object=byte_level(), eos_token="</s>")
    theirs.chat_template = templates
    theirs.save_pretrained(folder)


def test_named_templates_without_a_default_are_named_in_a_warning(tmp_path, caplog):
    saved_with_templates(tmp_path, {"tool_use": "T" + TEMPLATE, "rag": "R" + TEMPLATE})
    assert (tmp_path / "additional_chat_templates").is_dir()  # transformers' layout, not tokenizer_config.json
    with caplog.at_level("WARNING", logger="neurallayers"):
        assert Tokenizer.load(tmp_path).chat_template is None
    assert "lists chat templates 'rag', 'tool_use' and none named 'default'" in caplog.text


def test_the_default_of_named_template_files_is_the_chat_template(tmp_path):
    saved_with_templates(tmp_path, {"default": TEMPLATE, "tool_use": "T" + TEMPLATE})
    assert Tokenizer.load(tmp_path).chat_template == TEMPLATE


def test_a_vocab_and_merges_folder_reads_its_template_file(tmp_path):
    byte_level().model.save(str(tmp_path))  # vocab.json and merges.txt
    config = {"tokenizer_class": "GPT2Tokenizer", "eos_token": "</s>", "bos_token": "</s>", "unk_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "chat_template.jinja").write_text(TEMPLATE)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path).chat_template == TEMPLATE
    assert Tokenizer.load(tmp_path).chat_template == TEMPLATE
