"""render_chat's options against transformers' apply_chat_template: add_generation_prompt false,
continue_final_message (the text cut right after the final message's content, refused where the template changes
it) and extra template variables (a Qwen3-style `enable_thinking`); the default template's reading of both flags;
and the text-generation pipeline continuing a chat that ends with the assistant's message, as transformers' does."""

from __future__ import annotations

import pytest
import torch

from neurallayers.data.chat import render_chat
from neurallayers.data.tokenizers import Tokenizer

transformers = pytest.importorskip("transformers")

# ChatML as Qwen writes it, with the `enable_thinking: false` tail of Qwen3's template (an empty think block after
# the generation prompt); written here, not copied from the model's files
QWEN_LIKE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and "
             "enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
# trims the content and the blanks around it (as Llama 3's `| trim`), then a turn end
TRIMMING = "{% for m in messages %}[{{ m.role }}] {{ m.content | trim }} {{ eos_token }}\n{% endfor %}"
# loops over content parts, as Gemma 3's does
PARTS = ("{% for m in messages %}{{ m.role }}:{% for p in m['content'] %}<{{ p.text }}>{% endfor %};{% endfor %}"
         "{% if add_generation_prompt %}assistant:{% endif %}")
UPPER = "{% for m in messages %}{{ m.role }}: {{ m.content | upper }}\n{% endfor %}"

PREFILL = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell a story"},
           {"role": "assistant", "content": "Once upon "}]
QUESTION = [{"role": "user", "content": "Hi there"}]
TEXT = "<|im_start|> <|im_end|> </s> Be brief. Tell a story Once upon Hi there assistant user system think"


def tokenizer(template: str | None):
    tok = Tokenizer.train_bpe([TEXT] * 4, vocab_size=300, special_tokens=("<|im_start|>", "<|im_end|>", "</s>"),
                              show_progress=False)
    tok.chat_template = template
    tok.eos_token = "</s>"
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, eos_token="</s>", chat_template=template)
    return tok, hf


@pytest.mark.parametrize("template", [QWEN_LIKE, TRIMMING, PARTS])
@pytest.mark.parametrize("messages", [PREFILL, QUESTION])
@pytest.mark.parametrize("add, cont", [(False, False), (False, True), (True, False)])
def test_text_and_ids_equal_transformers(template, messages, add, cont):
    if template == PARTS:
        messages = [{**m, "content": [{"type": "text", "text": "x"}, {"type": "text", "text": m["content"]}]}
                    for m in messages]
    tok, hf = tokenizer(template)
    want = hf.apply_chat_template(messages, add_generation_prompt=add, continue_final_message=cont, tokenize=False)
    ids = hf.apply_chat_template(messages, add_generation_prompt=add, continue_final_message=cont, tokenize=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    text = render_chat(tok, messages, add_generation_prompt=add, continue_final_message=cont)
    assert text == want
    assert tok.encode(text) == ids


@pytest.mark.parametrize("kwargs", [{"enable_thinking": False}, {"enable_thinking": True}, {}, None])
def test_template_kwargs_reach_the_template_as_in_transformers(kwargs):
    tok, hf = tokenizer(QWEN_LIKE)
    want = hf.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False, **(kwargs or {}))
    text = render_chat(tok, QUESTION, template_kwargs=kwargs)
    assert text == want
    assert text.endswith("<think>\n\n</think>\n\n") == (kwargs == {"enable_thinking": False})


@pytest.mark.parametrize("name", ["messages", "bos_token", "eos_token", "add_generation_prompt", "tools"])
def test_template_kwargs_may_not_replace_what_the_renderer_passes(name):
    tok, _ = tokenizer(QWEN_LIKE)
    with pytest.raises(ValueError, match=f"template_kwargs may not set {name}"):
        render_chat(tok, QUESTION, template_kwargs={name: "x"})
    with pytest.raises(ValueError, match="must be a dict"):
        render_chat(tok, QUESTION, template_kwargs=[("enable_thinking", False)])


def test_continue_refusals_as_in_transformers():
    tok, hf = tokenizer(UPPER)
    # the template changes the final content: it cannot be found to cut after, so both refuse
    with pytest.raises(ValueError, match="does not appear"):
        hf.apply_chat_template(PREFILL, add_generation_prompt=False, continue_final_message=True, tokenize=False)
    with pytest.raises(ValueError, match="does not render the final message as it is"):
        render_chat(tok, PREFILL, add_generation_prompt=False, continue_final_message=True)
    for template in (QWEN_LIKE, None):
        tok, _ = tokenizer(template)
        with pytest.raises(ValueError, match="cannot both be true"):
            render_chat(tok, PREFILL, continue_final_message=True)
        with pytest.raises(ValueError, match="no content to continue"):
            render_chat(tok, [*QUESTION, {"role": "assistant", "content": None}], add_generation_prompt=False,
                        continue_final_message=True)
    tok, _ = tokenizer("{% for m in messages %}{{ m.role }}{% endfor %}")
    with pytest.raises(ValueError, match="never reads a message's content"):
        render_chat(tok, PREFILL, add_generation_prompt=False, continue_final_message=True)


def test_the_default_template_honours_both_flags():
    tok, _ = tokenizer(None)
    lines = "system: Be brief.\nuser: Tell a story\nassistant: Once upon \n"
    assert render_chat(tok, PREFILL) == lines + "assistant:"
    assert render_chat(tok, PREFILL, add_generation_prompt=False) == lines
    assert render_chat(tok, PREFILL, add_generation_prompt=False, continue_final_message=True) == lines[:-1]
    assert render_chat(tok, PREFILL, template_kwargs={"enable_thinking": False}) == lines + "assistant:"


@pytest.fixture(scope="module")
def generator():
    from neurallayers.config import ModelConfig
    from neurallayers.models import build_model
    from neurallayers.pipelines import TextGenerationPipeline

    tok, _ = tokenizer(None)
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=16,
                                    init_std=0.3)).eval()
    return TextGenerationPipeline(model, tok), model, tok


def test_the_pipeline_continues_a_chat_ending_with_the_assistants_message(generator):
    """transformers' pipeline continues such a chat (continue_final_message defaults to whether the last message is
    the assistant's) and appends the reply to its content; ours started a new assistant turn after it."""
    from neurallayers.generation.generate import generate

    pipe, model, tok = generator
    prompt = render_chat(tok, PREFILL, add_generation_prompt=False, continue_final_message=True)
    reply = generate(model, tok, [tok.encode(prompt)], max_new_tokens=5, temperature=0)[0].text
    for option in ({}, {"continue_final_message": True}):
        out = pipe(PREFILL, max_new_tokens=5, temperature=0, **option)[0]["generated_text"]
        assert out == [*PREFILL[:-1], {"role": "assistant", "content": "Once upon " + reply}]
        assert pipe(PREFILL, max_new_tokens=5, temperature=0, return_full_text=False, **option)[0][
            "generated_text"] == reply
    # asked not to continue: a new assistant message after the last, as transformers does
    new = generate(model, tok, [tok.encode(render_chat(tok, PREFILL))], max_new_tokens=5, temperature=0)[0].text
    out = pipe(PREFILL, max_new_tokens=5, temperature=0, continue_final_message=False)[0]["generated_text"]
    assert out == [*PREFILL, {"role": "assistant", "content": new.lstrip()}]
    with pytest.raises(ValueError, match="continue_final_message=1: must be True or False"):
        pipe(PREFILL, continue_final_message=1)


def test_the_chat_command_passes_template_kwargs(tmp_path, monkeypatch, capsys):
    import io

    from neurallayers.__main__ import main
    from neurallayers.cli import chat
    from neurallayers.config import ModelConfig
    from neurallayers.models import build_model
    from neurallayers.training.checkpoint import save_model
    from neurallayers.training.config import RunConfig

    tok, _ = tokenizer(QWEN_LIKE)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16)
    RunConfig(model=cfg).to_yaml(tmp_path / "config.yaml")
    tok.save(tmp_path)
    save_model(tmp_path, build_model(cfg).state_dict())
    prompts: list[str] = []
    monkeypatch.setattr(chat, "reply", lambda model, tok, prompt, config: prompts.append(tok.decode(prompt)) or "ok")
    for kwargs in ('{"enable_thinking": false}', "{}"):
        monkeypatch.setattr("sys.stdin", io.StringIO("Hi there\n"))
        assert main(["chat", str(tmp_path), "--temperature", "0", "--chat-template-kwargs", kwargs]) == 0
    assert prompts[0].endswith("assistant\n<think>\n\n</think>\n\n") and prompts[1].endswith("assistant\n")
    for bad, why in (('{"bos_token": "x"}', "may not set bos_token"), ("[1]", "must be a JSON object"),
                     ("{", "not JSON")):
        with pytest.raises(SystemExit):
            main(["chat", str(tmp_path), "--chat-template-kwargs", bad])
        assert why in capsys.readouterr().err
