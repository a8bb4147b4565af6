"""Tokenizer files of every kind, built offline with `tokenizers`, against transformers on the same folder: decode
(clean_up_tokenization_spaces as tokenizer_config.json says), special tokens (special_tokens_map.json) and streaming
decode, which must join to the full decode."""

from __future__ import annotations

import functools
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers.implementations import BertWordPieceTokenizer

from neurallayers.data.chat import render_chat
from neurallayers.data.tokenizers import StreamDecoder, Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

CORPUS = ["The quick brown fox jumps over the lazy dog. Hello, world! I'm here; don't go. Étude café 日本 🎉\n"] * 20
PIECES = [
    "a",
    "b",
    " ",
    "x",
    ".",
    ",",
    "'",
    "?",
    "n",
    "t",
    "don't",
    " 's",
    " ' ",
    "</s>",
    "<s>",
    "[SEP]",
    "日",
    "é",
    "  ",
    "\n",
]


def _llama(legacy: bool) -> HFTokenizer:
    """Llama / SentencePiece-style BPE: byte fallback, "▁" for spaces (Metaspace, or the legacy normalizer)."""
    hf = HFTokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    if legacy:
        hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    hf.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    hf.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *bytes_], show_progress=False),
    )
    spec = json.loads(hf.to_str())  # the byte tokens are plain vocabulary, as in Llama's file
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in ("<unk>", "<s>", "</s>")]
    hf = HFTokenizer.from_str(json.dumps(spec))
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return hf


def _unigram() -> HFTokenizer:
    hf = HFTokenizer(models.Unigram())
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    hf.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    hf.train_from_iterator(
        CORPUS,
        trainers.UnigramTrainer(
            vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
        ),
    )
    hf.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return hf


def _wordpiece() -> HFTokenizer:
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(CORPUS, vocab_size=200, show_progress=False)
    return wp._tokenizer


def _byte_level() -> HFTokenizer:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["</s>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return hf


KINDS = {
    "llama": (functools.partial(_llama, False), {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    "llama-legacy": (functools.partial(_llama, True), {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    "unigram": (
        _unigram,
        {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "clean_up_tokenization_spaces": True},
    ),
    "wordpiece": (
        _wordpiece,
        {
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "cls_token": "[CLS]",
            "pad_token": "[PAD]",
            "mask_token": "[MASK]",
            "clean_up_tokenization_spaces": True,
        },
    ),
    "byte-level": (_byte_level, {"eos_token": "</s>", "clean_up_tokenization_spaces": True}),
}


@functools.cache
def folder(kind: str, root: str) -> tuple[Tokenizer, object]:
    """Our tokenizer and transformers' for one folder that transformers wrote."""
    build, specials = KINDS[kind]
    path = os.path.join(root, kind)
    transformers.PreTrainedTokenizerFast(tokenizer_object=build(), **specials).save_pretrained(path)
    return Tokenizer.load(path), transformers.AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tok_parity"))


def streamed(tok: Tokenizer, ids: list[int], skip: bool) -> list[str]:
    decoder = StreamDecoder(tok, skip_special_tokens=skip)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


@pytest.mark.parametrize("kind", list(KINDS))
def test_decode_cleans_up_spaces_as_transformers_does(root, kind):
    """tokenizer_config.json's clean_up_tokenization_spaces was ignored: a word-piece or unigram tokenizer decoded
    "hello , don ' t" where transformers gives "hello, don't" (a BPE tokenizer keeps its spaces in both)."""
    ours, ref = folder(kind, root)
    for text in ("Hello , world . don't ' t", "I'M LOUD ?", "a ' s b 're"):
        ids = ref.encode(text)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), text
    assert ours.clean_up_tokenization_spaces == KINDS[kind][1].get("clean_up_tokenization_spaces", False)


def test_clean_up_setting_survives_save_and_load(root, tmp_path):
    ours, ref = folder("wordpiece", root)
    ours.save(tmp_path)
    again = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ids = ref.encode("don't ' t , ok")
    assert Tokenizer.load(tmp_path).decode(ids) == again.decode(ids, skip_special_tokens=True) == ours.decode(ids)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=20).map("".join), st.booleans())
def test_streaming_joins_to_the_full_decode(root, text, skip):
    """A skipped special token (</s>, [SEP], an unknown) at the start of the decode window made the next token the
    text's first: Metaspace and WordPiece dropped its space ("x</s>y" streamed "xy", decoded "x y")."""
    for kind in KINDS:
        ours, ref = folder(kind, root)
        ids = ref.encode(text)
        full = ref.decode(ids, skip_special_tokens=skip)
        pieces = streamed(ours, ids, skip)
        assert "".join(pieces) == full, (kind, text, pieces)
        assert "\ufffd" in full or not any("\ufffd" in p for p in pieces)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 399), max_size=14), st.booleans())
def test_streaming_byte_fallback_ids_joins_to_the_full_decode(root, ids, skip):
    """Byte-fallback tokens decode a run at a time, every byte of a run U+FFFD when one is bad: ["<0x24>" "$",
    "<0x9F>"] decodes as two U+FFFD, but the stream had already sent "$" (any ids: a sampled model emits such runs)."""
    for kind in ("llama", "llama-legacy"):
        ours, _ = folder(kind, root)
        ids = [i % ours.vocab_size for i in ids]
        assert "".join(streamed(ours, ids, skip)) == ours.decode(ids, skip_special_tokens=skip), (kind, ids)


def test_streaming_holds_a_byte_run_until_it_ends(root):
    ours, _ = folder("llama", root)
    dollar, stray, eos = ours.token_to_id("<0x24>"), ours.token_to_id("<0x9F>"), ours.eos_id
    assert "".join(streamed(ours, [dollar, stray], skip=True)) == ours.decode([dollar, stray]) == "\ufffd\ufffd"
    # a skipped special between two bytes leaves them one run, as in the full decode
    assert "".join(streamed(ours, [dollar, eos, stray], skip=True)) == "\ufffd\ufffd"
    ids = ours.encode("中 x")  # not in the training text: three byte tokens
    assert sum(i in range(3, 259) for i in ids) == 3
    pieces = streamed(ours, ids, skip=True)
    assert "".join(pieces) == "中 x" and not any("\ufffd" in p for p in pieces)


def test_streaming_keeps_the_space_after_a_skipped_special(root):
    texts = {
        "llama": "x</s> y</s> z",
        "llama-legacy": "x</s>y</s>z",
        "unigram": "x</s> y</s> z",
        "wordpiece": "x [SEP] y [SEP] z",
    }  # each written so that its full decode is "x y z"
    for kind, text in texts.items():
        ours, ref = folder(kind, root)
        ids = ours.encode(text)
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True) == "x y z", kind
        assert "".join(streamed(ours, ids, skip=True)) == "x y z", kind


def test_streaming_a_cleaned_up_decode_is_still_incremental(root):
    ours, _ = folder("wordpiece", root)
    ids = ours.encode("hello , world . don ' t go here now")
    pieces = streamed(ours, ids, skip=True)
    assert "".join(pieces) == ours.decode(ids) == "hello, world. don't go here now"
    assert len([p for p in pieces if p]) > 3


def test_special_tokens_map_json_names_the_specials_of_an_older_folder(tmp_path):
    """A folder saved before tokenizer_config.json held the specials keeps them in special_tokens_map.json, which
    transformers reads: a chat model's eos <|im_end|> was ignored and <|endoftext|> guessed (generation never
    stopped at the end of a turn), its bos was lost and "<pad>" was guessed for padding."""
    hf = _byte_level()
    hf.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    (tmp_path / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": {
                    "content": "<|im_start|>",
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "single_word": False,
                },
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
            }
        )
    )
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = Tokenizer.load(tmp_path)
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == (ref.bos_token, ref.eos_token, ref.pad_token)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)


def test_saving_over_an_older_folder_keeps_the_special_tokens_it_saves(tmp_path):
    """Its special_tokens_map.json wins over the tokenizer_config.json that `save` writes (no added_tokens_decoder),
    in transformers and in `load`: saving a changed tokenizer over it brought the old tokens back."""
    hf = _byte_level()
    hf.add_special_tokens(["<|im_start|>", "<|im_end|>", "<pad>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    old = {"eos_token": "</s>", "pad_token": "<pad>", "additional_special_tokens": ["<|im_start|>"]}
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(old))
    tok = Tokenizer.load(tmp_path)
    assert (tok.eos_token, tok.pad_token) == ("</s>", "<pad>")
    tok.eos_token, tok.pad_token = "<|im_end|>", None
    tok.save(tmp_path)
    ref, ours = transformers.AutoTokenizer.from_pretrained(tmp_path), Tokenizer.load(tmp_path)
    assert (ours.eos_token, ours.pad_token) == (ref.eos_token, ref.pad_token) == ("<|im_end|>", None)
    kept = json.loads((tmp_path / "special_tokens_map.json").read_text())
    assert kept["additional_special_tokens"] == ["<|im_start|>"]


@pytest.mark.parametrize("options", ["separators=(',', ':')", "sort_keys=true", "indent=2, sort_keys=true"])
def test_chat_template_tojson_takes_transformers_options(options):
    """transformers' tojson takes separators and sort_keys (tool-call templates use them): here they failed the
    template with a TypeError."""
    template = (
        "{% for m in messages %}{{ m.role }}:{{ {'b': 1, 'a': [m.content, 'é']} | tojson("
        + options
        + ") }}\n{% endfor %}"
    )
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=_byte_level(), eos_token="</s>")
    messages = [{"role": "user", "content": "Hi"}]
    want = hf.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False)
    tok = Tokenizer.from_hf(hf.backend_tokenizer, eos_token="</s>", chat_template=template)
    assert render_chat(tok, messages) == want


def test_chat_template_jinja_wins_over_tokenizer_config_as_in_transformers(tmp_path):
    """A folder whose template was updated in chat_template.jinja while tokenizer_config.json still held the old
    one: transformers renders the file's, here the old one was used."""
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=_byte_level(), eos_token="</s>")
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = "OLD{{ messages[0].content }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "chat_template.jinja").write_text("NEW{{ messages[0].content }}")
    messages = [{"role": "user", "content": "Hi"}]
    want = transformers.AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(messages, tokenize=False)
    assert render_chat(Tokenizer.load(tmp_path), messages) == want == "NEWHi"


def test_saving_over_a_folder_with_chat_template_jinja_keeps_the_new_template(tmp_path):
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=_byte_level(), eos_token="</s>")
    hf.chat_template = "OLD{{ messages[0].content }}"
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").exists()
    tok = Tokenizer.load(tmp_path)
    tok.chat_template = "NEW{{ messages[0].content }}"
    tok.save(tmp_path)
    messages = [{"role": "user", "content": "Hi"}]
    want = transformers.AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(messages, tokenize=False)
    assert render_chat(Tokenizer.load(tmp_path), messages) == want == "NEWHi"
    tok.chat_template = None
    tok.save(tmp_path)
    assert Tokenizer.load(tmp_path).chat_template is None


def test_a_special_token_the_vocabulary_lacks_is_named_not_dropped_silently(tmp_path):
    """transformers adds a config's eos that tokenizer.json lacks as a new id (past the model's embeddings); we leave
    it unset, which silently meant a generation that never stops at the end of a turn."""
    hf = _byte_level()
    hf.add_special_tokens(["<|endoftext|>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    with pytest.warns(UserWarning, match=r"eos_token='<\|im_end\|>' is not in the vocabulary"):
        assert Tokenizer.load(tmp_path).eos_token is None


@pytest.mark.parametrize("kind", ["llama", "llama-legacy"])
def test_a_continuation_keeps_the_space_of_its_first_word(root, kind):
    """A SentencePiece decoder strips the space of the text's first token, so a continuation decoded alone read
    "Hello world" + "br go" (the server's completions, chat replies and batch outputs alike); it is decoded after the
    prompt's last tokens, as vLLM does: " br go". generate, stream, stop strings and the server's engine agree."""
    import torch

    from neurallayers.config import ModelConfig
    from neurallayers.data.tokenizers import continuation_text
    from neurallayers.generation import generate, stream
    from neurallayers.models import build_model

    tok, _ = folder(kind, root)
    spaced = [i for t, i in tok.hf.get_vocab().items() if t.startswith("▁") and len(t) > 1]
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # only "▁word" tokens can be chosen: the first one starts with a space
        model.lm_head.weight.zero_()
        model.lm_head.weight[spaced] = torch.randn(len(spaced), 16)
    prompt = tok.encode("Hello world")
    (gen,) = generate(model, tok, ["Hello world"], temperature=0, max_new_tokens=6)
    want = tok.decode(prompt + gen.token_ids)[len(tok.decode(prompt)) :]
    assert want.startswith(" ") and gen.text == want == continuation_text(tok, prompt, gen.token_ids)
    assert "".join(e.text for e in stream(model, tok, "Hello world", temperature=0, max_new_tokens=6)) == want
    stop = want[3:5]  # the first occurrence cuts: a repeated word (" br br") may hold it before index 3
    (cut,) = generate(model, tok, ["Hello world"], temperature=0, max_new_tokens=6, stop=[stop])
    assert cut.text == want[: want.index(stop)]
    decoder = StreamDecoder(tok, context=prompt)
    assert "".join([decoder.push(i) for i in gen.token_ids] + [decoder.flush()]) == want


@pytest.mark.parametrize("kind", ["byte-level", "llama"])
def test_a_prompt_ending_inside_a_character_streams_as_generate_decodes(root, kind):
    """Prompt ids may end inside a character ("日" split across tokens). The stream's window then started at the
    prompt's U+FFFD and dropped the character the continuation completed ("本 x" for generate's "\ufffd本 x"), so a
    stream, stop strings and the server's text lost it while generate() without stop strings kept it."""
    from neurallayers.data.tokenizers import continuation_text
    from neurallayers.generation.stop_strings import _RowText

    tok, _ = folder(kind, root)
    ids = tok.encode("ab 日本 x \U0001f389 y", add_special_tokens=False)
    for cut in range(1, len(ids)):
        prompt, cont = ids[:cut], ids[cut:]
        want = continuation_text(tok, prompt, cont)
        assert "".join(streamed_after(tok, prompt, cont)) == want, (cut, want)
        row = _RowText(tok, ["zzz"], prompt)
        assert "".join([row.push(i) for i in cont] + [row.finish()]) == want == row.text
    if kind == "byte-level":  # byte-level BPE decodes a continuation as it did alone
        assert all(continuation_text(tok, ids[:c], ids[c:]) == tok.decode(ids[c:]) for c in range(len(ids)))


def test_a_stray_byte_after_a_prompts_byte_tokens_streams_as_generate_decodes(root):
    """A prompt ending in byte-fallback tokens (an emoji: <0xF0> ... <0x82>) and a continuation starting with a stray
    byte: the bytes joined one run, which the decoder turned into U+FFFD whole, prompt's bytes included; generate()
    gave "\ufffd x y" and a stream (or generate with a stop string, or the server) "\ufffd\ufffd\ufffd\ufffd x y"."""
    from neurallayers.data.tokenizers import continuation_text
    from neurallayers.generation.stop_strings import _RowText

    tok, _ = folder("llama", root)
    prompt = tok.encode("ab \U0001f642", add_special_tokens=False)
    assert tok.id_to_token(prompt[-1]) == "<0x82>"
    cont = [prompt[-1], *tok.encode(" x y", add_special_tokens=False)]
    assert continuation_text(tok, prompt, cont) == "\ufffd x y"
    assert "".join(streamed_after(tok, prompt, cont)) == "\ufffd x y"
    row = _RowText(tok, ["zzz"], prompt)
    assert "".join([row.push(i) for i in cont] + [row.finish()]) == "\ufffd x y"


def test_a_continuation_after_a_prompt_of_byte_tokens_only_keeps_its_space(root):
    """A prompt whose only text is byte-fallback tokens (ids given as such, or bos then an emoji's bytes): with its
    bytes left out of the context nothing was left to decode after, and Llama's decoder stripped the continuation's
    first space: "x y" where transformers (decode of all less decode of the prompt) gives " x y"."""
    from neurallayers.data.tokenizers import continuation_text
    from neurallayers.generation.stop_strings import _RowText

    tok, ref = folder("llama", root)
    emoji = tok.encode("\U0001f642", add_special_tokens=False)[1:]  # without the "▁" before it
    assert [tok.id_to_token(i) for i in emoji] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]
    cont = tok.encode(" x y", add_special_tokens=False)
    for prompt in (emoji, [tok.bos_id, *emoji]):
        want = ref.decode(prompt + cont, skip_special_tokens=True)[len(ref.decode(prompt, skip_special_tokens=True)):]
        assert want == " x y"
        assert continuation_text(tok, prompt, cont) == want
        assert "".join(streamed_after(tok, prompt, cont)) == want
        row = _RowText(tok, ["zzz"], prompt)
        assert "".join([row.push(i) for i in cont] + [row.finish()]) == want
        assert continuation_text(tok, prompt, [emoji[-1], *cont]) == "\ufffd x y"  # a stray byte still alone


@pytest.mark.parametrize("prompt", ["the dog '", "hello ,", "don"])
def test_a_continuation_is_cleaned_up_as_its_stream_is(root, prompt):
    """Spaces were cleaned up in the prompt and continuation together: "dog '" + " hello" became "dog'hello", which
    does not start with the prompt's text, so generate() fell back to the continuation alone ("hello world") while a
    stream, which cleans only its own pieces, gave " hello world", and so did generate() with any stop string."""
    from neurallayers.data.tokenizers import continuation_text
    from neurallayers.generation.stop_strings import _RowText

    tok, _ = folder("wordpiece", root)
    ids, cont = tok.encode(prompt, add_special_tokens=False), tok.encode("hello world", add_special_tokens=False)
    want = "".join(streamed_after(tok, ids, cont))
    row = _RowText(tok, ["zzz"], ids)
    assert continuation_text(tok, ids, cont) == want == "".join([row.push(i) for i in cont] + [row.finish()])
    assert want == " hello world"


def streamed_after(tok: Tokenizer, prompt: list[int], ids: list[int]) -> list[str]:
    decoder = StreamDecoder(tok, context=prompt)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


@pytest.mark.parametrize("kind", ["unigram", "wordpiece"])
def test_a_stream_with_stop_strings_still_streams_when_spaces_are_cleaned_up(root, kind):
    """A tokenizer that cleans up spaces holds its last word back (its spaces may still go), and the stream held
    every token event while the decoder held anything: with any stop string (the chat CLI always has one), nothing
    came until the reply ended. Events come as without stop strings; a stop string still ends the stream as
    generate() ends."""
    import torch

    from neurallayers.config import ModelConfig
    from neurallayers.generation import generate, stream
    from neurallayers.models import build_model

    tok, _ = folder(kind, root)
    assert tok.cleans_up_spaces
    words = [i for t, i in tok.hf.get_vocab().items() if t.lstrip("▁").isalpha() and len(t) > 1]
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # a constant final state and logits for words only, so the text has spaces to clean up
        model.norm_f.weight.zero_()
        model.norm_f.bias.fill_(1.0)
        model.lm_head.weight.fill_(-10.0)
        model.lm_head.weight[words] = torch.randn(len(words), 16)
    steps, forward = [0], model.forward

    def counted(*args, **kwargs):
        steps[0] += 1
        return forward(*args, **kwargs)

    model.forward = counted

    def events(stop):
        steps[0] = 0
        return [
            (steps[0], e.text, e.token_id) for e in stream(model, tok, "hello", stop=stop, seed=1, max_new_tokens=10)
        ]

    plain = events([])
    assert events(["zzzz"]) == plain and plain[2][0] < 10
    text = "".join(t for _, t, _ in plain)
    stop = text.split()[len(text.split()) // 2]
    (gen,) = generate(model, tok, ["hello"], stop=[stop], seed=1, max_new_tokens=10)
    cut = events([stop])
    assert "".join(t for _, t, _ in cut) == gen.text and [i for _, _, i in cut[:-1]] == gen.token_ids


def test_a_space_that_cleaning_up_gives_to_a_stop_string_is_not_streamed_as_a_token(root):
    """Tokens "the dog" + "▁" + "," with the stop string ",": cleaning up " ," drops the space, so the "▁" token
    belongs to the stop string and generate() drops it; the stream had already sent it (its text was only a held
    space), so the stream's tokens (and the server's streamed logprobs) had one more than generate()'s."""
    import torch

    from neurallayers.config import ModelConfig
    from neurallayers.generation import generate, stream
    from neurallayers.models import build_model

    tok, _ = folder("unigram", root)
    script = tok.encode("the dog , x")
    assert [tok.id_to_token(i) for i in script[-4:-2]] == ["▁", ","]
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    forward, step = model.forward, [0]

    def scripted(*args, **kwargs):  # chooses the script's tokens in turn
        out = forward(*args, **kwargs)
        step[0] = 0 if "input_pos" not in kwargs else step[0] + 1
        out.logits[..., script[step[0]]] = 1e4
        return out

    model.forward = scripted
    (gen,) = generate(model, tok, ["hello"], temperature=0, stop=[","], max_new_tokens=8)
    events = list(stream(model, tok, "hello", temperature=0, stop=[","], max_new_tokens=8))
    assert gen.token_ids == script[:-4] and gen.text == " the dog" and gen.finish_reason == "stop"
    assert [e.token_id for e in events[:-1]] == gen.token_ids
    assert "".join(e.text for e in events) == gen.text and events[-1].finish_reason == "stop"


def test_a_stop_string_in_the_last_word_ends_a_stream_as_it_ends_generate(root):
    """A tokenizer that cleans up spaces holds its last word until the stream ends; a stop string in it was found only
    then, after the stream had sent its tokens and said "length", where generate() cut them and said "stop"."""
    import torch

    from neurallayers.config import ModelConfig
    from neurallayers.generation import GenerationConfig, generate, stream
    from neurallayers.models import build_model
    from neurallayers.serve.engine import Engine

    tok, _ = folder("wordpiece", root)  # whole words as single tokens
    vocab = tok.hf.get_vocab()
    word = next(
        t
        for t in sorted(vocab)
        if t.lstrip("▁").isalpha()
        and len(t.lstrip("▁")) > 2
        and t[-1] != "n"
        and tok.decode([vocab[t], vocab[t]]).split() == [t.lstrip("▁")] * 2
    )
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # a constant final state: greedy decoding repeats `word`
        model.norm_f.weight.zero_()
        model.norm_f.bias.fill_(1.0)
        model.lm_head.weight.fill_(-1.0)
        model.lm_head.weight[vocab[word]] = 1.0
    stop = " ".join([word.lstrip("▁")] * 3)  # complete only with the last token
    (gen,) = generate(model, tok, ["hello"], stop=[stop], temperature=0, max_new_tokens=3)
    events = list(stream(model, tok, "hello", stop=[stop], temperature=0, max_new_tokens=3))
    assert gen.finish_reason == events[-1].finish_reason == "stop"
    assert [e.token_id for e in events[:-1]] == gen.token_ids and "".join(e.text for e in events) == gen.text
    engine = Engine(model, tok, max_batch=1)  # the server's engine ends its requests so too
    engine.start()
    try:
        served = list(
            engine.submit(tok.encode("hello"), GenerationConfig(stop=[stop], temperature=0, max_new_tokens=3))
        )
    finally:
        engine.shutdown()
    assert [(e.text, e.token_id, e.finish_reason) for e in served] == [
        (e.text, e.token_id, e.finish_reason) for e in events
    ]


def test_a_saved_llama_tokenizer_gives_transformers_no_token_type_ids(tmp_path):
    """Llama's post-processor gives a pair's second text type 1 (transformers' LlamaConverter writes it so), and
    saving wrote model_input_names with token_type_ids for it: transformers' tokenizer then returned them, and
    LlamaForCausalLM.generate(**tokenizer(text)) refused them ("model_kwargs are not used by the model")."""
    hf = _llama(False)
    hf.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    transformers.PreTrainedTokenizerFast(tokenizer_object=hf, bos_token="<s>", eos_token="</s>").save_pretrained(
        tmp_path / "hf"
    )
    Tokenizer.load(tmp_path / "hf").save(tmp_path / "ours")
    assert list(transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")("Hello world")) == [
        "input_ids",
        "attention_mask",
    ]


def test_beam_search_sees_a_stop_string_that_begins_with_the_first_words_space(root):
    """Beam search finishes a hypothesis whose text holds a stop string; it decoded the tokens alone, so after a
    SentencePiece prompt " the" never matched "▁the" (the final text, decoded after the prompt, was cut there)."""
    from neurallayers.generation.stop_strings import _stop_check

    tok, _ = folder("llama", root)
    piece = max((t for t in tok.hf.get_vocab() if t.startswith("▁") and t[1:].isalpha()), key=len)  # "▁quick"...
    prompt, stop = tok.encode("Hello world"), " " + piece[1:]
    holds = _stop_check(tok, [stop], [prompt])
    word = tok.token_to_id(piece)
    assert stop not in tok.decode([word])  # decoded alone, the space is stripped
    assert holds(0, [word]) and not holds(0, [])
