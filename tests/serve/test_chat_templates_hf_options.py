"""The published chat templates of test_chat_templates_hf with add_generation_prompt false and continue_final_message:
prompt text and ids equal transformers' apply_chat_template, and where transformers refuses a conversation ours does
too."""

from __future__ import annotations

import pytest
from test_chat_templates_hf import CHATS, FAMILIES, tokenizer_folder

from neurallayers.data.chat import render_chat
from neurallayers.data.tokenizers import Tokenizer

transformers = pytest.importorskip("transformers")

PREFILLS = {
    "prefill": [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "I am"}],
    "prefill, trailing blank": [{"role": "system", "content": "Be nice"}, {"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "Hello! How "}],
    "multi-turn prefill": [*CHATS["multi-turn"], {"role": "assistant", "content": "café 🙂"}],
}


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_without_a_generation_prompt_or_continuing_equal_transformers(family, tmp_path):
    folder = tokenizer_folder(tmp_path / family, family)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    ours = Tokenizer.load(folder)
    for name, messages in {**CHATS, **PREFILLS}.items():
        for cont in (False, True):
            try:
                want = hf.apply_chat_template(messages, add_generation_prompt=False, continue_final_message=cont,
                                              tokenize=False)
                ids = hf.apply_chat_template(messages, add_generation_prompt=False, continue_final_message=cont,
                                             tokenize=True)
            except Exception:  # the template refuses the conversation, or cannot be cut after the final message
                with pytest.raises(ValueError):
                    render_chat(ours, messages, add_generation_prompt=False, continue_final_message=cont)
                continue
            text = render_chat(ours, messages, add_generation_prompt=False, continue_final_message=cont)
            assert text == want, (name, cont)
            assert ours.encode(text) == (ids if isinstance(ids, list) else ids["input_ids"]), (name, cont)
