"""A model whose vocabulary is padded past its tokenizer's (Qwen2: 151936 rows for 151665 tokens): an id there has no
text, yet is a generated token. transformers' generate + decode on the same weights is the oracle (its tokenizer skips
an id it lacks): greedy ids and text, the text of beam, contrastive and speculative search, stop strings, streaming,
byte-level tokens split by padded ids; the CLI's generate and chat and the batch verb print that text. Before, each
raised mid-generation. Tokenizer.decode (and a StreamDecoder not told otherwise) still refuses such an id."""

from __future__ import annotations

import functools
import io
import json

import pytest
import torch
from nl_search_helpers import hf_and_ours

from neurallayers.data.stream_decode import StreamDecoder, continuation_text
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.generation import GenerationConfig, generate, stream

transformers = pytest.importorskip("transformers")

TEXT = "the quick brown fox jumps over the lazy dog."
PADDING = 24  # model rows past the tokenizer's vocabulary
PROMPTS = ["the ", "fox", "lazy dog", "o"]
SEEDS = (0, 1)


@functools.cache
def char_tok() -> Tokenizer:
    return Tokenizer.train_char([TEXT])


@functools.cache
def twins(seed: int):
    """transformers' GPT2LMHeadModel and ours on the same random weights, vocab_size = the tokenizer's + PADDING."""
    return hf_and_ours(seed=seed, vocab=char_tok().vocab_size + PADDING, init_range=0.5)


@functools.cache
def hf_tok():
    return transformers.PreTrainedTokenizerFast(tokenizer_object=char_tok().hf)


@functools.cache
def hf_generate(seed: int, prompt: str) -> list[int]:
    """transformers' greedy ids after `prompt` on twins(seed) (its eos, the tokenizer's, left off)."""
    tok, (hf, _) = char_tok(), twins(seed)
    ids = torch.tensor([tok.encode(prompt)])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=10,
                      eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)[0, ids.shape[1]:]
    out = out.tolist()
    return out[:out.index(tok.eos_id)] if tok.eos_id in out else out


def test_greedy_equals_transformers_generate_and_decode() -> None:
    """transformers' greedy ids and decoded text, over prompts where the model picks padded and real ids alike."""
    tok, padded, plain = char_tok(), 0, 0
    for seed in SEEDS:
        _, ours = twins(seed)
        for prompt in PROMPTS:
            want = hf_generate(seed, prompt)
            (got,) = generate(ours, tok, prompt, temperature=0, max_new_tokens=10)
            assert got.token_ids == want, (seed, prompt)
            assert got.text == hf_tok().decode(want, skip_special_tokens=True), (seed, prompt, want)
            padded += sum(i >= tok.vocab_size for i in want)
            plain += sum(i < tok.vocab_size for i in want)
    assert padded > 10 and plain > 5  # both kinds of ids were chosen and decoded


def test_search_methods_decode_padded_ids_as_transformers_does() -> None:
    """Beam search and contrastive search (whose ids transformers' own tests here check on plain vocabularies) pass
    through padded ids: their text is transformers' decode of their ids; speculative decoding (a draft with the same
    padded vocabulary) keeps the target's greedy tokens and text."""
    tok, (_, ours), padded = char_tok(), twins(0), 0
    for prompt in PROMPTS[:2]:
        searched = [*generate(ours, tok, prompt, temperature=0, max_new_tokens=10, num_beams=3, num_return_sequences=3),
                    *generate(ours, tok, prompt, max_new_tokens=10, penalty_alpha=0.6, top_k=4)]
        for g in searched:
            assert g.text == hf_tok().decode(g.token_ids, skip_special_tokens=True), prompt
            padded += sum(i >= tok.vocab_size for i in g.token_ids)
        (greedy,) = generate(ours, tok, prompt, temperature=0, max_new_tokens=10)
        (spec,) = generate(ours, tok, prompt, temperature=0, max_new_tokens=10, draft_model=twins(1)[1])
        assert (spec.token_ids, spec.text) == (greedy.token_ids, greedy.text)
        # beam search checks every candidate's text for a stop string
        stop = greedy.text[-1:] or "d"
        (beam,) = generate(ours, tok, prompt, temperature=0, max_new_tokens=10, num_beams=2, stop=[stop])
        assert beam.text == hf_tok().decode(beam.token_ids, skip_special_tokens=True) and stop not in beam.text
    assert padded > 5


def test_stop_strings_and_stream_cut_transformers_text() -> None:
    """A stop string found across padded ids cuts the text where it does in transformers' text; the stream's pieces
    join to generate()'s text, one event per generated token (padded ones too, with their logprobs)."""
    tok, checked = char_tok(), 0
    for seed in SEEDS:
        _, ours = twins(seed)
        for prompt in PROMPTS:
            ids = hf_generate(seed, prompt)
            full = hf_tok().decode(ids, skip_special_tokens=True)
            for stop in {full[1:3], full[-1:]} - {""}:
                want = full[:full.find(stop)]
                (got,) = generate(ours, tok, prompt, temperature=0, max_new_tokens=10, stop=[stop])
                events = list(stream(ours, tok, prompt, temperature=0, max_new_tokens=10, stop=[stop], logprobs=2))
                assert got.text == "".join(e.text for e in events) == want, (seed, prompt, stop)
                assert got.finish_reason == events[-1].finish_reason == "stop" and got.stopped_by == stop
                assert len(got.token_ids) <= got.generated_tokens <= len(ids)
                assert ids[:len(got.token_ids)] == got.token_ids
                streamed = [e.token_id for e in events if e.token_id is not None]
                assert streamed == got.token_ids == [e.logprob.token_id for e in events if e.logprob is not None]
                checked += 1
    assert checked >= 8


def test_logit_bias_forcing_a_padded_id_gives_empty_text_and_counts_its_tokens() -> None:
    tok, (_, ours) = char_tok(), twins(0)
    pad = tok.vocab_size + 3
    config = GenerationConfig(temperature=0, max_new_tokens=5, logit_bias={pad: 100.0}, logprobs=1)
    for gen in generate(ours, tok, ["the ", "fox"], config):
        assert gen.token_ids == [pad] * 5 and gen.text == "" and gen.generated_tokens == 5
        assert [lp.token_id for lp in gen.logprobs] == [pad] * 5
    events = list(stream(ours, tok, "the ", config))
    assert [e.token_id for e in events] == [pad] * 5 + [None] and "".join(e.text for e in events) == ""
    # a prompt given as ids may hold padded ids too: they read as nothing there as well
    (gen,) = generate(ours, tok, [[*tok.encode("the"), pad]], temperature=0, max_new_tokens=6)
    assert gen.text == continuation_text(tok, tok.encode("the"), gen.token_ids, skip_padded_ids=True)


def test_stream_decoder_skips_padded_ids_between_the_bytes_of_a_character() -> None:
    """Byte-level BPE: padded ids between the bytes of one character, in the prompt and in the continuation, read as
    transformers' decode reads them (skipped, the bytes still join)."""
    from neurallayers.data.token_ids import text_id

    tok = Tokenizer.train_bpe(["héllo wörld 🙂 日本語 " * 4], vocab_size=280, show_progress=False)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf)
    prompt, cont = tok.encode("héllo 🙂"), tok.encode(" wörld 🙂 日本語")
    pads = [tok.vocab_size, tok.vocab_size + 7]
    mixed = [x for i in cont for x in (i, pads[i % 2])]
    padded_prompt = [pads[0], *prompt[:-1], pads[1], prompt[-1]]
    want = hf.decode(prompt + mixed)[len(hf.decode(prompt)):]
    assert want == " wörld 🙂 日本語"
    assert continuation_text(tok, padded_prompt, mixed, skip_padded_ids=True) == want
    decoder = StreamDecoder(tok, context=padded_prompt, skip_padded_ids=True)
    pieces = [decoder.push(i) for i in mixed]
    assert "".join(pieces) + decoder.flush() == want
    assert all(p == "" for p, i in zip(pieces, mixed, strict=True) if i in pads)
    # a bad id given directly is still refused, and a negative id even where padded ids are text-less
    with pytest.raises(ValueError, match=f"token id {pads[0]} is outside the vocabulary"):
        tok.decode([pads[0]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        StreamDecoder(tok).push(pads[0])
    with pytest.raises(ValueError, match="token id -1 is outside the vocabulary"):
        StreamDecoder(tok, skip_padded_ids=True).push(-1)
    with pytest.raises(TypeError, match="token ids must be integers"):
        text_id(2.0, tok.vocab_size)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory holding the twins' weights (seed 0) and the char tokenizer."""
    from neurallayers.training.checkpoint import save_model
    from neurallayers.training.config import RunConfig

    out = tmp_path_factory.mktemp("padded")
    _, ours = twins(0)
    RunConfig(model=ours.config).to_yaml(out / "config.yaml")
    char_tok().save(out)
    save_model(out, ours.state_dict())
    return out


def test_cli_generate_chat_and_batch_print_transformers_text(run_dir, tmp_path, monkeypatch, capsys) -> None:
    from neurallayers.__main__ import main
    from neurallayers.api import load
    from neurallayers.batch import run_batch

    want = hf_tok().decode(hf_generate(0, "fox"), skip_special_tokens=True)
    assert want
    for extra in ([], ["--stream"]):
        assert main(["generate", str(run_dir), "fox", "--temperature", "0", "--max-new-tokens", "10", *extra]) == 0
        assert want in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert main(["chat", str(run_dir), "--temperature", "0", "--max-new-tokens", "6",
                 "--logit-bias", f"{char_tok().vocab_size + 1}=100"]) == 0  # a reply of padded ids only: ""
    assert "outside the vocabulary" not in capsys.readouterr().err
    model, tok = load(run_dir)
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "prompt": "fox"}) + "\n")
    run_batch(model, tok, tmp_path / "in.jsonl", tmp_path / "out.jsonl",
              config=GenerationConfig(temperature=0, max_new_tokens=10), progress=False)
    (record,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert record["id"] == "a" and record["text"] == want


def test_the_text_generation_pipeline_ending_on_a_stop_token_after_a_padded_id() -> None:
    """The pipeline puts a stop_token_id's text back after the generation (transformers keeps it): decoded with the
    padded ids, it raised "token id ... is outside the vocabulary"."""
    from neurallayers.pipelines import pipeline

    tok, (_, ours) = char_tok(), twins(0)
    pipe = pipeline("text-generation", (ours, tok))
    for prompt in PROMPTS:
        want = hf_generate(0, prompt)
        padded = [i for i, t in enumerate(want) if t >= tok.vocab_size]
        # a real id after a padded one, chosen for the first time there, ends the generation
        ends = [t for k, t in enumerate(want) if padded and k > padded[0] and t < tok.vocab_size and t not in want[:k]]
        if not ends:
            continue
        stop = ends[0]
        out = pipe(prompt, do_sample=False, max_new_tokens=10, stop_token_ids=[stop], return_full_text=False)
        cut = want[:want.index(stop) + 1]
        assert out[0]["generated_text"] == hf_tok().decode(cut, skip_special_tokens=True)
        return
    pytest.fail("no prompt where a real id follows a padded one")
