"""Sliding-window evaluation of a decoder and the scores that compare models across tokenizers.

The windows are those of transformers' guide "Perplexity of fixed-length models": a window of `max_length` tokens
starts every `stride` tokens, and only the tokens no earlier window scored are scored (the earlier ones are context,
labelled -100), so each token after the first is scored once, with at least max_length - stride tokens before it.
The guide weights each window's mean loss by its label count less one, one fewer than it scores when
stride < max_length; here the loss is the plain mean over the tokens scored.

Bits per byte, byte perplexity and word perplexity are lm-evaluation-harness's: the negative log-likelihood of the
text's tokens over its UTF-8 bytes (in bits), or over its words, `len(re.split(r"\\s+", document))` per document.
The boundary tokens training put between documents (eos, and bos where the run has them) are context, never text:
lm-evaluation-harness scores a document's own tokens only. An unknown token is text (`boundary_ids`).

`document_scores` is lm-evaluation-harness's `loglikelihood_rolling` (its wikitext task): each document scored on its
own, from its start, after one prefix token (the bos, else the eos), in the disjoint windows of
`get_rolling_token_windows` with context_len=1 then `make_disjoint_window`; their sums over documents give its
weighted perplexities.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from neurallayers.training.losses import perplexity


@dataclass(frozen=True)
class Window:
    """Tokens [begin, end) go in; the targets at positions [first, end) are scored."""

    begin: int
    end: int
    first: int


@dataclass(frozen=True)
class WindowScore:
    """Sums over the scored targets: all of them (`tokens`, `nll` in nats) and the text's (`text_nll`)."""

    tokens: int
    nll: float
    text_nll: float
    scored_end: int  # the scored targets lie in positions [1, scored_end) of the stream

    @property
    def loss(self) -> float:
        return self.nll / self.tokens

    @property
    def whole(self) -> bool:
        """Every target in [1, scored_end) scored: not so where stride == max_length leaves each window's first
        token without a prediction, and the text's bytes would then count tokens whose loss is not in `text_nll`."""
        return self.tokens == self.scored_end - 1


@dataclass(frozen=True)
class TextScores:
    """lm-evaluation-harness's scores of a text whose tokens' negative log-likelihood is `nll` (nats)."""

    nll: float
    bytes: int
    words: int

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (self.bytes * math.log(2))

    @property
    def byte_perplexity(self) -> float:
        return perplexity(self.nll / self.bytes)

    @property
    def word_perplexity(self) -> float:
        return perplexity(self.nll / self.words)


def boundary_ids(tokenizer: object) -> list[int]:
    """The special ids that are not text: bos, eos, pad, cls, sep ... (what frames documents). The unknown token is
    text the vocabulary lacks (a character a char-level tokenizer never saw, WordPiece's [UNK]): lm-evaluation-harness
    scores it as a document's other tokens, and it splits no document."""
    unk = unknown_id(tokenizer)
    return [i for i in tokenizer.special_ids if i != unk]


def unknown_id(tokenizer: object) -> int | None:
    """The id of the tokenizer's unknown token, or None; None too where that token frames documents (transformers'
    GPT-2 names "<|endoftext|>", its eos, as its unk_token)."""
    unk_id = tokenizer.unk_id
    return None if unk_id in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) else unk_id


def stride_windows(n_tokens: int, *, max_length: int, stride: int) -> list[Window]:
    """The windows of transformers' loop over a stream of `n_tokens` tokens (the last one ends at the stream's end)."""
    if n_tokens < 2:
        raise ValueError(f"a stream of {n_tokens} token(s) has nothing to score: it needs at least 2")
    if max_length < 2:  # a window's first token has no prediction: one of 1 token scores nothing
        raise ValueError(f"max_length {max_length} must be at least 2")
    if not 1 <= stride <= max_length:
        # past max_length, the tokens between two windows would never be scored
        raise ValueError(f"stride {stride} must be in [1, max_length {max_length}]")
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        windows.append(Window(begin, end, max(prev_end, begin + 1)))  # the window's first token has no prediction
        prev_end = end
        if end == n_tokens:
            break
    return windows


def _batches(windows: list[Window], batch_size: int) -> Iterator[list[Window]]:
    """Consecutive windows, batch_size at a time; only the last window can be shorter, so it goes alone."""
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        full = [w for w in chunk if w.end - w.begin == chunk[0].end - chunk[0].begin]
        yield full
        if len(full) < len(chunk):
            yield chunk[len(full) :]


def sliding_window_score(model: torch.nn.Module, tokens: np.ndarray, *, max_length: int, stride: int,
                         batch_size: int, max_batches: int | None = None, special_ids: Iterable[int] = (),
                         device: torch.device, progress: bool = False) -> WindowScore:
    """Scores a decoder on `tokens` (1-D) in transformers' sliding windows; with `max_batches`, the first
    max_batches x batch_size windows (a prefix of the stream). The caller puts the model in eval mode.

    Args:
        special_ids: the tokens that are not text (bos, eos ...: `boundary_ids`): scored in `tokens`/`nll`, left
            out of `text_*`.
    """
    windows = stride_windows(len(tokens), max_length=max_length, stride=stride)
    if max_batches is not None:
        windows = windows[: max_batches * batch_size]
    special = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
    nll = text_nll = 0.0
    count = 0
    batches = list(_batches(windows, batch_size))  # counted: the short last window may make one batch more
    if progress:
        batches = tqdm(batches, unit="batch", desc="eval", dynamic_ncols=True)
    with torch.no_grad():
        for batch in batches:
            x = torch.from_numpy(np.stack([np.asarray(tokens[w.begin : w.end], dtype=np.int64) for w in batch]))
            y = x[:, 1:].clone()  # (B, T-1): position t predicts token t + 1
            for row, w in enumerate(batch):
                y[row, : w.first - w.begin - 1] = -100  # context: scored by an earlier window
            # logits only where a target is scored (the output layer is a large share of the cost), and the whole
            # window in, as in transformers' loop (a length-dependent RoPE scaling sees the same length)
            keep = max(w.end - w.first for w in batch)
            logits = model(x.to(device), logits_to_keep=keep + 1).logits[:, :-1].float()  # (B, keep, V)
            y = y[:, y.shape[1] - keep :]
            per_token = F.cross_entropy(logits.transpose(1, 2), y.to(device), ignore_index=-100,
                                        reduction="none").double().cpu()  # (B, keep)
            scored = y != -100
            text = scored & ~torch.isin(y, special)
            nll += float(per_token[scored].sum())
            text_nll += float(per_token[text].sum())
            count += int(scored.sum())
    return WindowScore(count, nll, text_nll, windows[-1].end)


def text_size(tokenizer: object, ids: np.ndarray, *, before: Iterable[int] = (),
              documents: Iterable[str] | None = None) -> tuple[int, int]:
    """(UTF-8 bytes, words) of the text of `ids`: special tokens but the unknown one (`boundary_ids`) separate
    documents and count for nothing; a document's words are lm-evaluation-harness's, `len(re.split(r"\\s+", text))`.

    Args:
        before: the ids before `ids` in the stream: a text that starts within a document is read after them, as a
            SentencePiece decoder strips the space of a text's first token ("▁world" alone is "world").
        documents: the texts of the documents whose tokens the runs between special tokens are, in order (the first
            run may be the end of the first). A run whose decoding differs from its document only in leading
            whitespace counts the document's own text, as lm-eval does: a SentencePiece tokenizer encodes " x" and "x"
            alike ("▁x"), and decodes the first without its space or the second with one. A run whose decoding
            differs otherwise (an unknown token's text, which decode drops; a normalizer's changes) counts the text of
            its document that its tokens encode, found by the encoding's offsets. Ignored when the runs and the
            documents do not pair up (a document holding a special token's text).
    """
    from neurallayers.data.tokenizers import continuation_text

    ids = np.asarray(ids, dtype=np.int64)
    boundaries = boundary_ids(tokenizer)
    is_special = np.isin(ids, np.asarray(boundaries, dtype=np.int64))
    # runs of text tokens between special ones: [starts[i], ends[i])
    edges = np.flatnonzero(np.diff(np.concatenate([[1], is_special.astype(np.int8), [1]])))
    runs = list(zip(edges[0::2], edges[1::2], strict=True))
    before = [int(i) for i in before]
    partial = bool(before) and before[-1] not in boundaries and bool(runs) and runs[0][0] == 0
    texts = [t for t in documents if t] if documents is not None else None  # empty documents have no tokens
    if texts is not None and len(texts) != len(runs):
        texts = None
    n_bytes = n_words = 0
    for i, (start, end) in enumerate(runs):
        run = ids[start:end].tolist()
        whole = not (i == 0 and partial)  # else the end of a document whose first tokens are not counted
        if whole:
            text = tokenizer.decode(run, clean_up_tokenization_spaces=False)  # the text's own spaces
        else:
            text = continuation_text(tokenizer, before, run)
        if texts is not None:
            text = _document_text(tokenizer, texts[i], run, text, whole=whole)
        n_bytes += len(text.encode("utf-8"))
        n_words += len(re.split(r"\s+", text))
    return n_bytes, n_words


def _document_text(tokenizer: object, document: str, run: list[int], decoded: str, *, whole: bool) -> str:
    """The text of `document` that `run` encodes (the whole document, or its end unless `whole`), whose decoding is
    `decoded`: that decoding where it is the document's text but for a SentencePiece leading space, else the text its
    encoding's offsets find (decode drops an unknown token's text and undoes no normalizer), else `decoded`."""
    if whole and decoded.lstrip() == document.lstrip():
        return document
    if not whole and document.endswith(decoded):
        return decoded
    encoding = tokenizer.hf.encode(document, add_special_tokens=False)
    first = len(encoding.ids) - len(run)  # the document's tokens before the run's
    if not (first == 0 if whole else first >= 1) or encoding.ids[first:] != run:
        return decoded  # not this document's tokens
    return document if whole else document[encoding.offsets[first - 1][1] :]  # after the uncounted tokens' text


@dataclass(frozen=True)
class DocumentWindow:
    """lm-evaluation-harness's window on the stream [prefix] + a document's tokens: the model reads [begin, end) and
    its last `scored` predictions are scored (the targets [end - scored + 1, end + 1))."""

    doc: int
    begin: int
    end: int
    scored: int


def rolling_windows(n_tokens: int, *, max_length: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) of `get_rolling_token_windows(context_len=1)` + `make_disjoint_window` for a document of
    `n_tokens` tokens, on the stream [prefix] + document: the first window reads the prefix and max_length - 1 tokens
    and scores them all with the next; each later one scores the next max_length tokens after one token of context,
    but the last, which reads max_length tokens ending before its last target (more context, as lm-eval's does)."""
    if max_length < 1:
        raise ValueError(f"max_length {max_length} must be at least 1")
    if n_tokens == 0:
        return []  # lm-eval's generator yields nothing: a log-likelihood of 0
    first = min(max_length, n_tokens)
    windows, done = [(0, first, first)], first
    while done < n_tokens:
        scored = min(n_tokens - done, max_length)
        done += scored
        windows.append((done - max_length, done, scored))
    return windows


def document_scores(model: torch.nn.Module, documents: list[list[int]], *, prefix_id: int, max_length: int,
                    batch_size: int, device: torch.device, progress: bool = False) -> list[float]:
    """The negative log-likelihood (nats) of each document's tokens, each document scored on its own after
    `prefix_id` in lm-evaluation-harness's rolling windows (see `rolling_windows`). Windows of one length are scored
    together, batch_size at a time (no padding: a length-dependent RoPE scaling sees each window's own length). The
    caller puts the model in eval mode."""
    streams = [np.asarray([prefix_id, *doc], dtype=np.int64) for doc in documents]
    windows = [DocumentWindow(d, *w) for d, doc in enumerate(documents)
               for w in rolling_windows(len(doc), max_length=max_length)]
    windows.sort(key=lambda w: w.begin - w.end)  # longest first, each length's windows together
    groups = [list(same) for _, same in itertools.groupby(windows, key=lambda w: w.end - w.begin)]
    batches = [group[i : i + batch_size] for group in groups for i in range(0, len(group), batch_size)]
    nll = [0.0] * len(documents)
    if progress:
        batches = tqdm(batches, unit="batch", desc="eval", dynamic_ncols=True)
    with torch.no_grad():
        for batch in batches:
            keep = max(w.scored for w in batch)
            x = torch.from_numpy(np.stack([streams[w.doc][w.begin : w.end] for w in batch]))  # (B, T)
            y = torch.from_numpy(np.stack([streams[w.doc][w.end - keep + 1 : w.end + 1] for w in batch]))  # (B, keep)
            logits = model(x.to(device), logits_to_keep=keep).logits.float()  # (B, keep, V)
            per_token = F.cross_entropy(logits.transpose(1, 2), y.to(device), reduction="none").double().cpu()
            for row, w in enumerate(batch):
                nll[w.doc] += float(per_token[row, keep - w.scored :].sum())
    return nll


def document_size(text: str) -> tuple[int, int]:
    """(UTF-8 bytes, words) of a document as lm-evaluation-harness's wikitext task counts them, on its own text."""
    return len(text.encode("utf-8")), len(re.split(r"\s+", text))
