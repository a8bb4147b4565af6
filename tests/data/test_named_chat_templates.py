"""Named chat templates ("tool_use", "rag" besides "default") kept through load -> save, in both of transformers'
layouts (a list in tokenizer_config.json; chat_template.jinja + additional_chat_templates/), checked against
transformers' AutoTokenizer on the original and the saved folder."""

from __future__ import annotations

import json
import os

import pytest
from test_chat_template_files import byte_level

from neurallayers.data.tokenizers import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

# non-ASCII, trailing newlines and Jinja whitespace control: the text must come back exactly
TEMPLATES = {
    "default": "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}\n",
    "tool_use": "{%- for m in messages -%}[tool ✓]{{ m['content'] }}\n{%- endfor -%}\n\n",
    "rag": "{% for m in messages %}«rag» {{ m.role }}: {{ m.content }}  {% endfor %}",
}
MESSAGES = [{"role": "user", "content": "héllo"}, {"role": "assistant", "content": "hi"}]


def transformers_folder(folder, templates: dict[str, str], *, jinja_files: bool) -> None:
    """A folder as transformers saves it: 5's files, or the list in tokenizer_config.json (save_jinja_files=False)."""
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_object=byte_level(), eos_token="</s>")
    theirs.chat_template = dict(templates)
    theirs.save_pretrained(folder, save_jinja_files=jinja_files)


def rendered(folder, name: str | None) -> str:
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    return tok.apply_chat_template(MESSAGES, chat_template=name, tokenize=False)


def template_files(folder) -> dict[str, bytes]:
    files = {"default": folder / "chat_template.jinja"}
    files |= {p.stem: p for p in (folder / "additional_chat_templates").glob("*.jinja")}
    return {name: p.read_bytes() for name, p in files.items() if p.exists()}


@pytest.mark.parametrize("jinja_files", [True, False], ids=["template-files", "config-list"])
@pytest.mark.parametrize("names", [("default", "tool_use", "rag"), ("tool_use", "rag")])
def test_named_templates_survive_load_and_save(tmp_path, jinja_files, names):
    templates = {n: TEMPLATES[n] for n in names}
    src, out = tmp_path / "src", tmp_path / "out"
    transformers_folder(src, templates, jinja_files=jinja_files)
    tok = Tokenizer.load(src)
    assert tok.chat_template == templates.get("default")
    assert tok.named_chat_templates == {n: t for n, t in templates.items() if n != "default"}
    tok.save(out)
    # the layout transformers 5 writes, byte for byte; the list stays in tokenizer_config.json for older readers
    assert template_files(out) == {n: t.encode() for n, t in templates.items()}
    listed = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    assert {e["name"]: e["template"] for e in listed} == templates
    for name in templates:
        assert rendered(out, name) == rendered(src, name)
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == transformers.AutoTokenizer.from_pretrained(
        src).chat_template
    again = Tokenizer.load(out)  # and ours reads back what it wrote
    assert (again.chat_template, again.named_chat_templates) == (tok.chat_template, tok.named_chat_templates)


def test_saving_without_named_templates_removes_stale_files(tmp_path):
    transformers_folder(tmp_path, TEMPLATES, jinja_files=True)
    tok = Tokenizer.load(tmp_path)
    tok.named_chat_templates = {"rag": TEMPLATES["rag"]}
    tok.save(tmp_path)  # over the folder: a stale tool_use.jinja would still be read by transformers
    assert set(template_files(tmp_path)) == {"default", "rag"}
    assert set(transformers.AutoTokenizer.from_pretrained(tmp_path).chat_template) == {"default", "rag"}
    tok.named_chat_templates = {}
    tok.save(tmp_path)
    assert not (tmp_path / "additional_chat_templates").exists()
    assert transformers.AutoTokenizer.from_pretrained(tmp_path).chat_template == TEMPLATES["default"]
    assert Tokenizer.load(tmp_path).named_chat_templates == {}


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "..", "", "default"])
def test_a_name_that_is_no_file_name_is_refused_before_anything_is_written(tmp_path, name):
    tok = Tokenizer.from_hf(byte_level(), eos_token="</s>")
    tok.chat_template = TEMPLATES["default"]
    tok.named_chat_templates = {name: TEMPLATES["rag"]}
    with pytest.raises(ValueError, match="chat template name|named_chat_templates holds 'default'"):
        tok.save(tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.jinja").exists()


@pytest.mark.parametrize("entry", [{"name": "rag"}, {"template": "x"}, "rag", {"name": 3, "template": "x"}])
def test_a_malformed_template_list_entry_is_refused(tmp_path, entry):
    Tokenizer.from_hf(byte_level(), eos_token="</s>").save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": "x"}, entry]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"chat_template\[1\] must be \{\"name\": str, \"template\": str\}"):
        Tokenizer.load(tmp_path)
