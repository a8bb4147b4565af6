"""samples.txt of a masked-LM run: the prompts' mask fillings, as the fill-mask pipeline gives them."""

import torch

from neurallayers import ModelConfig, build_model
from neurallayers.data import Tokenizer
from neurallayers.pipelines.encoder_tasks import FillMaskPipeline
from neurallayers.training.fill_samples import prompt_fills

WORDS = "the quick brown fox jumps over a lazy dog".split()


def bert_tokenizer() -> Tokenizer:
    """A word-level tokenizer framed as BERT's is: [CLS] text [SEP]."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    hf.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return Tokenizer(hf, pad_token="[PAD]")


def masked_lm(tokenizer: Tokenizer, **sizes) -> torch.nn.Module:
    """A random post-norm masked LM over `tokenizer`'s vocabulary, in eval mode."""
    torch.manual_seed(0)
    cfg = ModelConfig(causal=False, head="mlm", vocab_size=tokenizer.vocab_size, n_head=2, norm_placement="post",
                      dropout=0.0, pad_token_id=0, **sizes)
    return build_model(cfg).eval()


def test_prompt_fills_frame_the_prompt_as_the_fill_mask_pipeline_does():
    """A BERT tokenizer's prompt was encoded without [CLS] and [SEP]: samples.txt showed other guesses (and other
    scores) than `nl.pipeline("fill-mask")` and transformers' pipeline give for the same model and text."""
    tokenizer = bert_tokenizer()
    model = masked_lm(tokenizer, block_size=16, n_layer=2, n_embd=32, mlp="gelu", init_std=0.5)
    prompt = "the quick [MASK] fox jumps"
    want = FillMaskPipeline(model, tokenizer)(prompt, top_k=5)
    shown = prompt_fills(model, tokenizer, [prompt], torch.device("cpu"))
    line = "mask 1: " + "  ".join(f"{p['token_str']!r} {p['score']:.3f}" for p in want)
    assert shown == f"=== prompt: {prompt!r}\n{line}\n"


def test_a_prompt_longer_than_the_context_is_named_and_the_others_filled(caplog):
    """A prompt past the context was cut to it silently: a mask beyond the cut vanished from samples.txt without a
    word, and one before it was filled without the rest of the text (the fill-mask pipeline refuses such a text)."""
    import logging

    tokenizer = bert_tokenizer()
    model = masked_lm(tokenizer, block_size=8, n_layer=1, n_embd=16)
    long = "the quick brown fox jumps over a [MASK] dog"  # 11 tokens with [CLS] and [SEP]
    with caplog.at_level(logging.WARNING, logger="neurallayers.training"):
        shown = prompt_fills(model, tokenizer, [long, "the [MASK] fox"], torch.device("cpu"))
    assert f"sample prompt 0 ({long!r}) has 11 tokens, more than the context (block_size=8): not filled" in caplog.text
    assert shown.startswith("=== prompt: 'the [MASK] fox'\nmask 1: ") and repr(long) not in shown
