"""The text-generation pipeline against transformers' own pipeline on the same Hugging Face folder: the same text for
the same arguments (greedy and beam search, so no random draws differ)."""

import importlib
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers.config import ModelConfig  # noqa: E402
from neurallayers.data.tokenizers import Tokenizer  # noqa: E402
from neurallayers.interop.hf import save_hf  # noqa: E402
from neurallayers.models import build_model  # noqa: E402
from neurallayers.pipelines import pipeline  # noqa: E402

CORPUS = ["the cat sat on the mat. a dog ran in the park, héllo wörld 😀 ünïcode!"] * 20
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
# reads the tools, documents and an extra variable, as transformers' pipeline hands them to apply_chat_template
# (short: the models read 32 positions)
TOOLS_TEMPLATE = ("{% if tools %}{{ tools[0].function.name[0] }}{% endif %}{% for d in documents or [] %}{{ d.title }}"
                  "{% endfor %}{{ greeting | default('') }}" + TEMPLATE)
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}
LONG = "the cat sat on the mat. a dog ran in the park. the cat sat on the mat."  # 20+ of the 32 positions


def gpt2_folder(folder) -> None:
    """Our GPT-2 and byte-level BPE, written by save_hf (model_max_length 32 in tokenizer_config.json: what "hole"
    reads there)."""
    tok = Tokenizer.train_bpe(CORPUS, vocab_size=300, show_progress=False)
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    save_hf(model, tok, folder)


def llama_folder(folder) -> None:
    """transformers' Llama and a tokenizer that puts <s> first, as Llama's does: "hole" and the prefix see it too."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator(CORPUS, trainer)
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=hf, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                         model_max_length=32, chat_template=TEMPLATE).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                      bos_token_id=1, eos_token_id=2)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)


@pytest.fixture(scope="module", params=[gpt2_folder, llama_folder], ids=["gpt2", "llama"])
def pipelines(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param.__name__)
    request.param(folder)
    theirs = transformers.pipeline("text-generation", model=str(folder), device="cpu")
    return pipeline("text-generation", model=folder), theirs


CASES = [
    ("hello", dict(max_new_tokens=6)),
    ("", dict(max_new_tokens=6)),  # generated from the bos token alone
    (["\n", " "], dict(max_new_tokens=6)),
    ("héllo wörld 😀", dict(max_new_tokens=6, return_full_text=False)),
    (["the cat", "a dog ran in the park"], dict(max_new_tokens=5)),
    (["the cat", "a dog ran in the park"], dict(max_new_tokens=5, return_full_text=False)),
    # max_length counts prompt and new tokens together, per prompt; max_new_tokens wins over it
    ("the cat", dict(max_length=9)),
    (["the cat", "a dog ran in the park"], dict(max_length=14, return_full_text=False)),
    ("the cat", dict(max_length=9, max_new_tokens=3)),
    (["the cat", "a dog"], dict(max_new_tokens=5, num_beams=3, num_return_sequences=2)),
    # a prompt that leaves too little room: "hole" drops its oldest tokens, the full text keeps it whole
    (LONG, dict(max_new_tokens=14, handle_long_generation="hole")),
    (LONG, dict(max_new_tokens=14, handle_long_generation="hole", return_full_text=False)),
    ("hello", dict(max_new_tokens=14, handle_long_generation="hole")),  # room enough: nothing dropped
    # the prefix is generated from but not returned; max_length does not count it
    ("sat on", dict(max_new_tokens=5, prefix="the cat ")),
    ("sat on", dict(max_length=8, prefix="the cat ")),
    ([{"role": "user", "content": "the cat"}], dict(max_new_tokens=5)),
    ([{"role": "user", "content": "the cat"}], dict(max_length=24, return_full_text=False)),
    ([{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat"}], dict(max_new_tokens=5)),
    # tools, documents and tokenizer_encode_kwargs (a chat_template, a template variable) reach the template
    ([{"role": "user", "content": "the cat"}], dict(max_new_tokens=5, tools=[WEATHER], documents=[{"title": "mat"}],
                                                    tokenizer_encode_kwargs={"chat_template": TOOLS_TEMPLATE,
                                                                             "greeting": "hi"})),
    ([{"role": "user", "content": "the cat"}], dict(max_new_tokens=5, return_full_text=False,
                                                    tokenizer_encode_kwargs={"chat_template": TOOLS_TEMPLATE})),
]


@pytest.mark.parametrize("inputs, kwargs", CASES, ids=[f"{str(x)[:24]!r} {kw}" for x, kw in CASES])
def test_equals_transformers_pipeline(pipelines, inputs, kwargs):
    ours, theirs = pipelines
    assert ours(inputs, do_sample=False, **kwargs) == theirs(inputs, do_sample=False, **kwargs)


def test_its_length_options_refuse_what_cannot_run(pipelines):
    ours, _ = pipelines
    with pytest.raises(ValueError, match=r"^max_length=3: inputs\[1\] already has \d+ tokens, leaving no room"):
        ours(["the", "a dog ran in the park"], max_length=3)
    with pytest.raises(ValueError, match=r"^max_length=0: must be an int >= 1"):
        ours("the cat", max_length=0)
    with pytest.raises(ValueError, match=r"^handle_long_generation='hole': 32 new tokens fill the whole context"):
        ours("the cat", max_new_tokens=32, handle_long_generation="hole")
    with pytest.raises(ValueError, match=r"^handle_long_generation='cut': must be None or 'hole'"):
        ours("the cat", handle_long_generation="cut")
    with pytest.raises(ValueError, match=r"^prefix=3: must be a string"):
        ours("the cat", prefix=3)
    # transformers' stop_sequence keeps the stop string in the text; pointed at stop=, not at num_return_sequences
    with pytest.raises(ValueError, match=r"^stop_sequence: give stop=\[\.\.\.\] instead"):
        ours("the cat", stop_sequence=".")


TENSOR_CASES = [
    ("hello", dict(max_new_tokens=6)),
    (["the cat", "a dog ran"], dict(max_new_tokens=4)),
    ("sat on", dict(max_new_tokens=4, prefix="the cat ")),  # the prefix's ids are in them
    ([{"role": "user", "content": "the cat"}], dict(max_new_tokens=4)),  # the rendered chat's ids
    (["the cat"], dict(max_new_tokens=4, num_beams=3, num_return_sequences=2)),
]


@pytest.mark.parametrize("inputs, kwargs", TENSOR_CASES, ids=[f"{str(x)[:24]!r} {kw}" for x, kw in TENSOR_CASES])
def test_return_tensors_gives_transformers_token_ids(pipelines, inputs, kwargs):
    ours, theirs = pipelines
    got = ours(inputs, do_sample=False, return_tensors=True, **kwargs)
    assert got == theirs(inputs, do_sample=False, return_tensors=True, **kwargs)
    assert "generated_token_ids" in (got[0] if isinstance(got[0], dict) else got[0][0])
    # return_text=True is the default: text
    assert ours(inputs, do_sample=False, return_text=True, **kwargs) == theirs(inputs, do_sample=False,
                                                                               return_text=True, **kwargs)


def test_return_tensors_ends_with_the_eos_that_stopped_it(pipelines):
    ours, theirs = pipelines
    eos = ours.tokenizer.eos_id
    got = ours("hello", do_sample=False, max_new_tokens=6, logit_bias={eos: 100.0}, return_tensors=True)
    assert got[0]["generated_token_ids"][-1] == eos
    assert got == theirs("hello", do_sample=False, max_new_tokens=6, sequence_bias={(eos,): 100.0},
                         return_tensors=True)


@pytest.mark.parametrize("clean_up", [None, True, False])
def test_clean_up_tokenization_spaces_as_transformers_decodes(pipelines, clean_up):
    ours, theirs = pipelines
    space, dot = ours.tokenizer.token_to_id("Ġ"), ours.tokenizer.token_to_id(".")  # text with spaces before dots
    got = ours("hello", do_sample=False, max_new_tokens=12, logit_bias={space: 9.0, dot: 9.0},
               return_full_text=False, clean_up_tokenization_spaces=clean_up)
    assert got == theirs("hello", do_sample=False, max_new_tokens=12, sequence_bias={(space,): 9.0, (dot,): 9.0},
                         return_full_text=False, clean_up_tokenization_spaces=clean_up)


def test_return_switches_are_exclusive_as_in_transformers(pipelines):
    ours, _ = pipelines
    with pytest.raises(ValueError, match=r"^return_full_text and return_tensors: give one of"):
        ours("the cat", return_full_text=False, return_tensors=True)
    with pytest.raises(ValueError, match=r"^return_tensors and return_text: give one of"):
        ours("the cat", return_tensors=True, return_text=True)
    with pytest.raises(ValueError, match=r"^return_text=False: give return_tensors=True"):
        ours("the cat", return_text=False)
    with pytest.raises(ValueError, match=r"^return_tensors=1: must be True or False"):
        ours("the cat", return_tensors=1)
    with pytest.raises(ValueError, match=r"^clean_up_tokenization_spaces='no': must be True or False"):
        ours("the cat", clean_up_tokenization_spaces="no")


def test_sampled_return_sequences_with_a_seed_are_generates_and_batch_alike(pipelines):
    # transformers' draws differ from ours: the oracle is generate() with the same seed, and the prompt alone
    from neurallayers.generation import GenerationConfig, generate

    ours, _ = pipelines
    kw = dict(do_sample=True, num_return_sequences=3, seed=5, max_new_tokens=8, return_full_text=False)
    got = ours(["the cat", "a dog"], **kw)
    gens = generate(ours.model, ours.tokenizer, ["the cat", "a dog"],  # the pipeline's defaults: 0.7, top_k 50
                    GenerationConfig(num_return_sequences=3, seed=5, max_new_tokens=8, temperature=0.7, top_k=50))
    assert [[r["generated_text"] for r in rows] for rows in got] == [[g.text for g in gens[:3]],
                                                                     [g.text for g in gens[3:]]]
    assert len({r["generated_text"] for r in got[0]}) > 1  # three draws, not one copied
    assert ours("the cat", **kw) == got[0]


@pytest.fixture(scope="module")
def two_eos(tmp_path_factory):
    """The Llama folder with generation_config.json's eos_token_id [</s>, end], `end` the third token greedy decoding
    gives "hello" (so the second of the two ids ends a generation), and both libraries' pipelines on it."""
    folder = tmp_path_factory.mktemp("two_eos")
    llama_folder(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    ids = tok("hello", return_tensors="pt").input_ids
    new = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:].tolist()
    end = new[2]
    assert end != 2 and end not in new[:2]
    transformers.GenerationConfig(bos_token_id=1, eos_token_id=[2, end]).save_pretrained(folder)
    theirs = transformers.pipeline("text-generation", model=str(folder), device="cpu")
    return pipeline("text-generation", model=folder), theirs, end


TWO_EOS_CASES = [
    ("hello", dict(max_new_tokens=8)),
    (["hello", "the cat", "a dog ran"], dict(max_new_tokens=8)),
    ("the cat", dict(max_new_tokens=8, num_beams=3, num_return_sequences=2)),
    ([{"role": "user", "content": "hello"}], dict(max_new_tokens=8)),
]


@pytest.mark.parametrize("inputs, kwargs", TWO_EOS_CASES, ids=[f"{str(x)[:24]!r} {kw}" for x, kw in TWO_EOS_CASES])
def test_return_tensors_keeps_whichever_eos_ended_it(two_eos, inputs, kwargs):
    """With several ids that end a generation (Llama 3's eos and <|eot_id|>), the one that ended each sequence closes
    its ids, as in transformers' pipeline: it was left out, since which one it was went unrecorded. The text holds
    the ending token's text too, as transformers' does where it is no special token."""
    ours, theirs, _ = two_eos
    got = ours(inputs, do_sample=False, return_tensors=True, **kwargs)
    assert got == theirs(inputs, do_sample=False, return_tensors=True, **kwargs)
    assert ours(inputs, do_sample=False, **kwargs) == theirs(inputs, do_sample=False, **kwargs)


def test_generate_records_the_eos_that_ended_it(two_eos):
    """Generation.stopped_by names the token (either eos id, or a stop_token_id) or the stop string that ended a
    sequence, None where it ran to its length."""
    from neurallayers.generation import GenerationConfig, generate, stream

    ours, _, end = two_eos
    model, tok = ours.model, ours.tokenizer
    assert sorted(tok.eos_ids) == sorted([2, end])
    (g,) = generate(model, tok, "hello", GenerationConfig(temperature=0, max_new_tokens=8))
    assert (g.finish_reason, g.stopped_by, len(g.token_ids), g.completion_tokens) == ("stop", end, 2, 3)
    (by_id,) = generate(model, tok, "hello", GenerationConfig(temperature=0, max_new_tokens=8, ignore_eos=True,
                                                              stop_token_ids=[g.token_ids[1]]))
    assert (by_id.finish_reason, by_id.stopped_by, by_id.token_ids) == ("stop", g.token_ids[1], g.token_ids[:1])
    (by_len,) = generate(model, tok, "hello", GenerationConfig(temperature=0, max_new_tokens=2))
    assert (by_len.finish_reason, by_len.stopped_by) == ("length", None)
    for method in ({"num_beams": 2}, {"penalty_alpha": 0.5, "top_k": 3}, {}):  # greedy's stop string last: stream's
        cfg = GenerationConfig(temperature=0, max_new_tokens=8, ignore_eos=True, **method)
        text = generate(model, tok, "hello", cfg)[0].text
        stop = text[1:3]
        (by_str,) = generate(model, tok, "hello", cfg.replace(stop=["never", stop]))
        assert (by_str.finish_reason, by_str.stopped_by, by_str.text) == ("stop", stop, text[:text.index(stop)])
    last = list(stream(model, tok, "hello", temperature=0, max_new_tokens=8))[-1]
    assert (last.finish_reason, last.stopped_by) == ("stop", end)
    last = list(stream(model, tok, "hello", temperature=0, max_new_tokens=8, ignore_eos=True, stop=[stop]))[-1]
    assert (last.finish_reason, last.stopped_by) == ("stop", stop)


class _Called(Exception):
    """Raised by a stand-in for generate(), once it has the settings: no tokens are needed to compare them."""


FOLDER_SETTINGS = [{}, {"do_sample": False}, {"temperature": 0.6, "top_p": 0.9},
                   {"do_sample": True, "top_k": 7, "repetition_penalty": 1.3}, {"max_new_tokens": 12},
                   {"max_length": 20}, {"do_sample": False, "repetition_penalty": 1.5, "max_new_tokens": 9}]
CALLS = [{}, {"do_sample": True}, {"do_sample": False}, {"max_new_tokens": 5}, {"temperature": 0.9},
         {"max_length": 9}, {"do_sample": True, "top_k": 3}]


@pytest.fixture(scope="module")
def defaults_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("defaults")
    gpt2_folder(folder)
    return folder, transformers.pipeline("text-generation", model=str(folder), device="cpu")


@pytest.mark.parametrize("settings", FOLDER_SETTINGS, ids=[str(s) for s in FOLDER_SETTINGS])
def test_unset_options_default_as_transformers_pipeline_layers_them(defaults_folder, settings, tmp_path, monkeypatch):
    """The settings generate() gets, against those transformers' pipeline hands its generate(): the call's options over
    the folder's generation_config.json over the pipeline's own (256 new tokens, sampling at 0.7) over generate()'s
    (top_k 50). Ours sampled at 1.0 without top_k for 128 tokens, and ignored the file's lengths."""
    import json
    import shutil

    generate_module = importlib.import_module("neurallayers.generation.generate")  # the package shadows it

    base, theirs = defaults_folder
    shutil.copytree(base, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **settings}))
    ours = pipeline("text-generation", model=tmp_path)
    theirs.model.generation_config = transformers.GenerationConfig.from_pretrained(tmp_path)

    def ours_gets(config=None, **_):
        raise _Called(config)

    def theirs_gets(**kwargs):
        raise _Called(kwargs)

    monkeypatch.setattr(generate_module, "generate", lambda model, tok, prompts, config: ours_gets(config))
    monkeypatch.setattr(theirs.model, "generate", theirs_gets)
    for call in CALLS:
        with pytest.raises(_Called) as got:
            ours("the cat", **call)
        with pytest.raises(_Called) as want:
            theirs("the cat", **call)
        kwargs = dict(want.value.args[0])
        prompt_len = kwargs["input_ids"].shape[1]
        cfg, _ = theirs.model._prepare_generation_config(kwargs.pop("generation_config", None), **{
            k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask")})
        new = cfg.max_new_tokens if cfg.max_new_tokens is not None else cfg.max_length - prompt_len
        c = got.value.args[0]
        assert (c.temperature > 0, c.max_new_tokens, c.repetition_penalty) == (
            bool(cfg.do_sample), new, cfg.repetition_penalty), call
        if cfg.do_sample:
            assert (c.temperature, c.top_k, c.top_p) == pytest.approx((cfg.temperature, cfg.top_k, cfg.top_p)), call


def test_batch_size_chunks_the_generate_calls(pipelines, monkeypatch):
    """batch_size was taken and never used: every prompt went to one generate() call. Chunks change no greedy text."""
    generate_module = importlib.import_module("neurallayers.generation.generate")  # the package shadows it

    ours, _ = pipelines
    prompts = ["the cat", "a dog ran", "hello", "the mat", "sat on"]
    whole = ours(prompts, do_sample=False, max_new_tokens=4)
    sizes, real = [], generate_module.generate
    monkeypatch.setattr(generate_module, "generate", lambda m, t, p, c: sizes.append(len(p)) or real(m, t, p, c))
    assert ours(prompts, do_sample=False, max_new_tokens=4, batch_size=2) == whole
    assert sizes == [2, 2, 1]


def test_transformers_call_options_are_taken_or_refused_as_there(pipelines):
    """pad_token_id was refused with "did you mean 'stop_token_ids'", add_special_tokens with "did you mean
    'num_speculative_tokens'"; greedy num_return_sequences=2 gave two copies of one text, where transformers refuses."""
    ours, theirs = pipelines
    for kw in (dict(add_special_tokens=False), dict(add_special_tokens=True), dict(pad_token_id=0)):
        assert ours("the cat", do_sample=False, max_new_tokens=4, **kw) == theirs("the cat", do_sample=False,
                                                                                  max_new_tokens=4, **kw)
    with pytest.raises(ValueError, match=r"^num_return_sequences=2 with greedy decoding"):
        ours("the cat", do_sample=False, num_return_sequences=2)
    with pytest.raises(ValueError, match="num_return_sequences"):
        theirs("the cat", do_sample=False, num_return_sequences=2, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"^pad_token_id=-1: must be a token id in \[0, 300\)$"):
        ours("the cat", pad_token_id=-1)
    with pytest.raises(ValueError, match=r"^do_sample=True with num_beams=2: beam sampling is not built here"):
        ours("the cat", do_sample=True, num_beams=2)
    with pytest.raises(ValueError, match=r"^eos_token_id: give stop_token_ids=\[\.\.\.\] instead"):
        ours("the cat", eos_token_id=2)
    with pytest.raises(ValueError, match=r"^min_length: give min_new_tokens instead"):
        ours("the cat", min_length=4)
