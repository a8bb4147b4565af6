"""Shared tiny models and tokenizers for the generate/stream tests (imported by the test modules beside it)."""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch
from torch import nn

from neurallayers.config import ModelConfig
from neurallayers.generation import rowdot
from neurallayers.generation.fast import decode_step_for
from neurallayers.models.decoder import DecoderLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Multi-byte characters (accents, CJK, emoji) that a small byte-level BPE splits across several tokens.
UNICODE_TEXT = "héllo wörld 🙂 naïve café 🎉 日本語 ok. ünïcödé 🚀 fin ∑ done. "


def tiny_lm(*, seed: int = 0, vocab: int = 64, block_size: int = 64, init_std: float = 0.3,
            n_embd: int = 32) -> DecoderLM:
    """A random GPT-2 style DecoderLM; a large init_std makes its next-token distributions peaked (no near ties)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, block_size=block_size, n_layer=2, n_head=4, n_embd=n_embd, init_std=init_std)
    return DecoderLM(cfg).eval()


@functools.lru_cache(maxsize=1)
def unicode_tokenizer():
    from neurallayers.data.tokenizers import Tokenizer

    return Tokenizer.train_bpe([UNICODE_TEXT] * 4, vocab_size=290, show_progress=False)


@functools.lru_cache(maxsize=1)
def memorized_lm() -> DecoderLM:
    """A tiny model trained until greedy decoding from the first tokens of UNICODE_TEXT recites the rest of it."""
    tok = unicode_tokenizer()
    ids = tok.encode(UNICODE_TEXT * 2)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=4, n_embd=64)
    model = DecoderLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    for _ in range(150):
        loss = model(x, targets=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.inference_mode()
def greedy_no_cache(model: DecoderLM, prompt: list[int], n: int) -> list[int]:
    """Greedy continuation by repeated full forwards without a KV cache: the reference for the cached loop."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def next_logits(model, step, rows: int = 1):
    """What `step` (a forward_step-like callable) returns for one token after a prefill of the same 6-token prompt
    in each of `rows` rows: (rows, V) logits, or whatever a wrapped step returns (e.g. run_and_get_code's pair)."""
    prompt = torch.tensor([[5, 9, 2, 7, 1, 3]] * rows)
    cache = (decode_step_for(model) or model).new_cache(rows, 16)
    with torch.inference_mode():
        model(prompt, cache=cache, logits_to_keep=1)
        return step(torch.tensor([[3]] * rows), cache=cache, input_pos=prompt.shape[1], position_ids=None,
                    attention_mask=None)


def recording(step):
    """(call, seen): `call` runs `step` and adds the name of every op it dispatches to `seen` (a fast step's ops only,
    not the prefill's that next_logits runs before it)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[str] = []

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    def call(*args, **kwargs):
        with Ops():
            return step(*args, **kwargs)

    return call, seen


def check_rowdot(dtype: torch.dtype, out_features: int, in_features: int, rows: int | None = None) -> None:
    """torch.ops.neurallayers.rowdot on a random weight equals F.linear in float64 (bf16 x bf16 products are exact in
    float32: only the sums round), for one row x (in,) or, given `rows`, a batch x (rows, in)."""
    torch.manual_seed(out_features + in_features + (rows or 0))
    w = torch.randn(out_features, in_features).to(dtype)
    x = torch.randn(*(() if rows is None else (rows,)), in_features).to(dtype)
    got = torch.ops.neurallayers.rowdot(x, w)
    assert got.dtype == torch.float32 and got.shape == (*x.shape[:-1], out_features)
    want = torch.nn.functional.linear(x.double(), w.double())
    # Several bf16 rows where the batch loops do not run (CPUs with bf16 dot products) go to at::linear, whose bf16
    # output is rounded to bf16 (8 significant bits) before the op widens it
    rounded = rows is not None and dtype == torch.bfloat16 and dtype not in rowdot.batch_dtypes()
    torch.testing.assert_close(got.double(), want, atol=1e-4 * in_features ** 0.5, rtol=2**-8 if rounded else 1e-5)


class MarkovLM(nn.Module):
    """A stub decoder whose next-token logits depend on the last token only (a random V x V table): thousands of
    speculative runs take a second."""

    def __init__(self, seed: int, scale: float, vocab: int = 6, block_size: int = 64) -> None:
        super().__init__()
        self.table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)) * scale
        self.wte = nn.Embedding(vocab, 1)
        self.config = SimpleNamespace(vocab_size=vocab, block_size=block_size, position="learned", rope_scaling=None,
                                      causal=True)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> None:
        return None

    def forward(self, ids: torch.Tensor, *, logits_to_keep: int = 0, **_) -> SimpleNamespace:
        logits = self.table[ids]  # (B, T, V)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def wordpiece_tokenizer():
    """A BERT-style word-piece tokenizer that cleans up spaces on decode ("hello ' and" reads "hello'and")."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    from neurallayers.data.tokenizers import Tokenizer

    vocab = {t: i for i, t in enumerate(["[UNK]", "[SEP]", "hello", "'", "and", "do", "."])}
    hf = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece()
    return Tokenizer(hf, eos_token="[SEP]", clean_up_tokenization_spaces=True)


class ScriptLM(nn.Module):
    """A stub decoder that chooses the tokens of `script` in turn (its logits make each the only likely one)."""

    def __init__(self, script: list[int], vocab: int, prompt_len: int) -> None:
        super().__init__()
        self.script, self.prompt_len = script, prompt_len
        self.wte = nn.Embedding(vocab, 1)
        self.config = SimpleNamespace(vocab_size=vocab, block_size=32, causal=True, position="learned",
                                      rope_scaling=None)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> SimpleNamespace:
        return SimpleNamespace(rows=lambda start, stop: None, reorder=lambda index: None)

    def forward(self, ids: torch.Tensor, *, input_pos: int | None = None, **_) -> SimpleNamespace:
        step = 0 if input_pos is None else input_pos - self.prompt_len + 1
        logits = torch.full((ids.shape[0], 1, self.wte.num_embeddings), -10.0)
        logits[:, :, self.script[min(step, len(self.script) - 1)]] = 10.0
        return SimpleNamespace(logits=logits)
