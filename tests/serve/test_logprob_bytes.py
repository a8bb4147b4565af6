"""OpenAI's chat `logprobs.content[].bytes`: a token's own UTF-8 bytes, so that the bytes of the tokens a character
is split over join into that character (the token strings show each part as U+FFFD)."""

from __future__ import annotations

import httpx
import pytest
from nl_serve_helpers import serving, write_run_dir

from neurallayers.data.tokenizers import Tokenizer, continuation_text
from neurallayers.generation import TokenLogprob
from neurallayers.serve.streaming import chat_logprobs, completion_logprobs

TEXT = "日本 héllo 🙂 ok"


def byte_fallback_tokenizer(*, strip: bool = False) -> Tokenizer:
    """A SentencePiece-style BPE (Llama's): characters outside its vocabulary become <0xNN> byte tokens. strip: its
    decoder strips the text's first space, as Llama's does."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers

    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}}
    vocab |= {c: len(vocab) + i for i, c in enumerate("▁helo")}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    hf.normalizer = normalizers.Replace(" ", "▁")
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    hf.decoder = decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] * strip)
    return Tokenizer.from_hf(hf)


def test_a_sentencepiece_tokens_keep_their_spaces():
    """Llama's decoder strips the first space of a text, so a "▁" token decoded alone read "": the logprobs'
    tokens of the reply " hello 日本" read "hello日本" and their `bytes` no longer joined into the reply (OpenAI's
    contract)."""
    tok = byte_fallback_tokenizer(strip=True)
    prompt, ids = tok.encode("oh"), tok.encode(" hello 日本 ole")
    reply = continuation_text(tok, prompt, ids)
    assert reply == " hello 日本 ole"
    lps = [TokenLogprob(token_id=t, logprob=-1.0, top=[(t, -1.0)]) for t in ids]
    content = chat_logprobs(tok, lps)["content"]
    assert bytes(b for e in content for b in e["bytes"]).decode("utf-8") == reply
    assert content[0]["token"] == " "
    assert [e["top_logprobs"][0]["token"] for e in content] == [e["token"] for e in content]
    tokens = completion_logprobs(tok, lps)["tokens"]
    assert "".join(tokens).replace("\ufffd", "") == reply.replace("日本", "")


def test_echoed_sentencepiece_prompt_tokens_sit_at_their_offsets():
    """echo with logprobs: each prompt token's text at its text_offset in the echoed prompt, whose first space the
    decoder strips (so the first token's too); the later "▁" tokens read "" and every offset after them was off."""
    from types import SimpleNamespace

    import torch

    from neurallayers.config import ModelConfig
    from neurallayers.models import build_model
    from neurallayers.serve.streaming import prompt_logprobs

    tok = byte_fallback_tokenizer(strip=True)
    ids = tok.encode(" hello ole 日本")
    text = tok.decode(ids, skip_special_tokens=False)  # the echoed prompt
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    lp = prompt_logprobs(SimpleNamespace(model=model, tokenizer=tok), ids, 1)
    whole = [(o, t) for o, t in zip(lp["text_offset"], lp["tokens"], strict=True) if "\ufffd" not in t]
    assert text == "hello ole 日本" and [t for _, t in whole].count(" ") == 2
    assert all(text[o:o + len(t)] == t for o, t in whole)


def trimmed_byte_level_tokenizer() -> Tokenizer:
    """A byte-level BPE whose post-processor trims offsets (RoBERTa's): a token " br" spans only "br"."""
    from tokenizers import processors

    tok = Tokenizer.train_bpe([TEXT, "The quick brown fox"] * 4, vocab_size=300, show_progress=False)
    tok.hf.post_processor = processors.ByteLevel(trim_offsets=True)
    return tok


@pytest.mark.parametrize(("make", "text"), [(lambda: byte_fallback_tokenizer(strip=True), " hello ole 日本"),
                                            (trimmed_byte_level_tokenizer, "The quick brown fox héllo 日本")],
                         ids=["sentencepiece", "trimmed-byte-level"])
def test_a_text_prompt_echoed_as_sent_has_each_token_at_its_offset_in_it(make, text):
    """A text prompt is echoed as the client sent it, its first space kept, which the decoder strips from the tokens:
    the offsets summed from the tokens' texts put every token one character early; the tokenizer's alignment puts
    each where it is (a trimmed span's leading space included)."""
    from types import SimpleNamespace

    import torch

    from neurallayers.config import ModelConfig
    from neurallayers.models import build_model
    from neurallayers.serve.streaming import prompt_logprobs

    tok = make()
    ids = tok.encode(text)
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    lp = prompt_logprobs(SimpleNamespace(model=model, tokenizer=tok), ids, 1, text=text, special=False)
    whole = [(o, t) for o, t in zip(lp["text_offset"], lp["tokens"], strict=True) if "\ufffd" not in t]
    assert all(text[o:o + len(t)] == t for o, t in whole) and sum(t.startswith(" ") for _, t in whole) >= 2
    assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0


@pytest.mark.parametrize("make", [lambda: Tokenizer.train_bpe([TEXT] * 4, vocab_size=270, show_progress=False),
                                  byte_fallback_tokenizer], ids=["byte-level", "byte-fallback"])
def test_token_bytes_join_into_the_text(make):
    tok = make()
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    content = chat_logprobs(tok, [TokenLogprob(token_id=t, logprob=-1.0, top=[(t, -1.0)]) for t in ids])["content"]
    assert any("\ufffd" in e["token"] for e in content)  # some character is split over tokens
    assert bytes(b for e in content for b in e["bytes"]).decode("utf-8") == TEXT
    assert [e["top_logprobs"][0]["bytes"] for e in content] == [e["bytes"] for e in content]
    whole = [e for e in content if "\ufffd" not in e["token"]]  # a whole token's bytes are its text's
    assert all(bytes(e["bytes"]).decode("utf-8") == e["token"] for e in whole)


def test_served_chat_logprob_bytes_join_into_the_reply(tmp_path):
    run_dir = write_run_dir(tmp_path / "bpe", kind="bpe")
    with serving(run_dir) as srv:
        split = 0
        for seed in range(6):
            r = httpx.post(f"{srv.url}/v1/chat/completions", timeout=60, json={
                "messages": [{"role": "user", "content": "日本"}], "max_tokens": 12, "seed": seed, "logprobs": True})
            choice = r.json()["choices"][0]
            content = choice["logprobs"]["content"]
            split += sum("\ufffd" in e["token"] for e in content)
            joined = bytes(b for e in content for b in e["bytes"]).decode("utf-8", errors="replace")
            assert joined == choice["message"]["content"]
        assert split  # the replies did split characters over tokens


def test_completion_top_logprobs_keep_the_most_likely_of_tokens_that_read_alike(tmp_path):
    """Completions' top_logprobs map a token's text to its log-probability: the byte tokens of split characters all
    read U+FFFD, and the key must keep the most likely one's value (a later, less likely one overwrote it, so a
    greedy token looked beaten by an alternative, and an eval harness's is-greedy check failed); the chosen token
    is listed too, as OpenAI lists it (up to logprobs + 1 entries). Oracle: log_softmax of the model's logits."""
    import torch

    import neurallayers

    run_dir = write_run_dir(tmp_path / "bpe", kind="bpe")
    model, tok = neurallayers.load(run_dir)
    collided = 0
    with serving(run_dir) as srv:
        for prompt in ("日本語", "🙂🎉", "héllo"):
            body = {"prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 5, "echo": True}
            lp = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60).json()["choices"][0]["logprobs"]
            ids = tok.encode(prompt)
            ids += neurallayers.generate(model, tok, prompt, max_new_tokens=8, temperature=0)[0].token_ids
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)  # row t scores t + 1
            for i in range(1, len(ids)):
                values, alts = torch.topk(logp[i - 1], 5)
                want: dict[str, float] = {}
                for t, v in [*zip(alts.tolist(), values.tolist(), strict=True), (ids[i], float(logp[i - 1, ids[i]]))]:
                    want.setdefault(tok.decode([t], skip_special_tokens=False), v)
                collided += len(want) < 5
                got = lp["top_logprobs"][i]
                assert got.keys() == want.keys() and list(got.values()) == pytest.approx(list(want.values()), abs=1e-5)
                if i >= len(tok.encode(prompt)):  # a generated (greedy) token is its entry's most likely
                    assert max(got, key=got.get) == lp["tokens"][i]
    assert collided  # some entries held tokens that read alike
