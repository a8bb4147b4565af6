"""The tokens kept before a stop string are all those whose text lies before it: after a special token, with the text
written with special tokens (the server's skip_special_tokens: false; the check decoded without them), and after a
word-piece token whose space cleaning up drops (the check decoded it alone, space and all), so a choice's token ids and
logprobs are not cut short and a stream sends the same tokens."""

from __future__ import annotations

from nl_gen_helpers import ScriptLM, wordpiece_tokenizer

from neurallayers.data.tokenizers import StreamDecoder, Tokenizer
from neurallayers.generation import GenerationConfig, generate, stream
from neurallayers.generation.stop_strings import _RowText


def test_tokens_before_a_stop_after_a_written_special_token_are_kept():
    tok = Tokenizer.load("gpt2")
    eot = tok.eos_id
    ids = tok.encode("Hello there") + [eot] + tok.encode(" and more STOP after")
    row = _RowText(tok, ["STOP"], tok.encode("Say:"))
    row.decoder = StreamDecoder(tok, skip_special_tokens=False, context=row.context)
    for i in ids:
        row.push(i)
    row.finish()
    assert row.stopped and row.text == "Hello there<|endoftext|> and more "
    assert row.kept_tokens() == len(tok.encode("Hello there")) + 1 + len(tok.encode(" and more"))
    plain = _RowText(tok, ["STOP"], tok.encode("Say:"))  # special tokens skipped: the same count
    for i in ids:
        plain.push(i)
    plain.finish()
    assert plain.text == "Hello there and more " and plain.kept_tokens() == row.kept_tokens()


def test_a_token_whose_space_clean_up_drops_before_a_stop_string_is_kept():
    """Word-piece text cleans up " ' " to "'" only once the next word comes: the quote before a stop string decoded
    alone (" '") was no prefix of the cut text ("'"), so generate() dropped it from token_ids and logprobs while the
    stream sent it: the same tokens and text now, by both."""
    tok = wordpiece_tokenizer()
    prompt = tok.encode("hello")
    quote, script = tok.token_to_id("'"), [tok.token_to_id(t) for t in ("'", "and", "do", "do")]
    row = _RowText(tok, ["and"], prompt)
    for i in script:
        row.push(i)
    row.finish()
    assert row.stopped and row.text == "'" and row.kept_tokens() == 1
    model = ScriptLM(script, tok.vocab_size, len(prompt))
    cfg = GenerationConfig(max_new_tokens=4, temperature=0, stop=["and"], logprobs=0)
    (gen,) = generate(model, tok, [prompt], cfg)
    events = list(stream(model, tok, prompt, cfg))
    assert (gen.text, gen.token_ids, gen.stopped_by, len(gen.logprobs)) == ("'", [quote], "and", 1)
    assert "".join(e.text for e in events) == "'" and [e.token_id for e in events[:-1]] == [quote]
