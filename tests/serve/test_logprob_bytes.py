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
