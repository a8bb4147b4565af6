"""OpenAI's chat `logprobs.content[].bytes`: a token's own UTF-8 bytes, so that the bytes of the tokens a character
is split over join into that character (the token strings show each part as U+FFFD)."""

from __future__ import annotations

import httpx
import pytest
from nl_serve_helpers import serving, write_run_dir

from neurallayers.data.tokenizers import Tokenizer
from neurallayers.generation import TokenLogprob
from neurallayers.serve.streaming import chat_logprobs

TEXT = "日本 héllo 🙂 ok"


def byte_fallback_tokenizer() -> Tokenizer:
    """A SentencePiece-style BPE (Llama's): characters outside its vocabulary become <0xNN> byte tokens."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers

    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}}
    vocab |= {c: len(vocab) + i for i, c in enumerate("▁helo")}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    hf.normalizer = normalizers.Replace(" ", "▁")
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return Tokenizer.from_hf(hf)


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
