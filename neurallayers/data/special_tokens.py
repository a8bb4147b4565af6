"""Special tokens: the spellings ours and other tokenizers use, and marking tokens special in an HF tokenizer."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

ENDOFTEXT = "<|endoftext|>"
UNK = "<unk>"
MASK = "<mask>"  # the mask token added for masked-LM training when a tokenizer has none (RoBERTa's spelling)
MASK_TOKENS = ("[MASK]", MASK)  # BERT's and RoBERTa's: the first in the vocabulary is the mask token
# tokenizer_config.json's other named tokens: transformers (and chat templates) read them, encode and decode do not;
# the spellings each falls back to when the file names none (BERT's, which transformers' tokenizer names)
NAMED_TOKENS = {"unk_token": ("[UNK]", "<unk>"), "cls_token": ("[CLS]",), "sep_token": ("[SEP]",)}


def make_special(hf: HFTokenizer, tokens: Iterable) -> None:
    """Marks the named special tokens found in the vocabulary special, in place, as transformers does when it loads a
    folder: a plain token named eos (or the char tokenizer's unk) was encoded and decoded as text here, where
    transformers reads it as one id, typed in a text, and decode skips it. An added token keeps its flags."""
    added = {t.content: t for t in hf.get_added_tokens_decoder().values()}
    for token in dict.fromkeys(t for t in tokens if isinstance(t, str)):
        old = added.get(token)
        if (old is None or not old.special) and hf.token_to_id(token) is not None:
            flags = dict(lstrip=old.lstrip, rstrip=old.rstrip, single_word=old.single_word,
                         normalized=old.normalized) if old is not None else dict(normalized=False)
            hf.add_special_tokens([AddedToken(token, special=True, **flags)])


def mask_takes_its_space(hf: HFTokenizer) -> None:
    """Makes "<mask>" take the space before it (lstrip, as RoBERTa's does): "not to <mask>" must mask the word
    " be", not leave a bare " " token the model never saw before a word, nor double the space when filled in."""
    hf.add_special_tokens([AddedToken(MASK, lstrip=True, special=True, normalized=False)])  # updates it in place
