"""fill-mask against transformers' own pipeline on the same folder: several masks, targets, special tokens."""

import os

import pytest
import torch

from neurallayers.config import ModelConfig
from neurallayers.data.tokenizers import Tokenizer
from neurallayers.embeddings import minilm_folder
from neurallayers.interop.hf import save_hf
from neurallayers.models import build_model
from neurallayers.pipelines import pipeline

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

UNK, SEP = 100, 102  # all-MiniLM-L6-v2's WordPiece ids


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny masked LM on MiniLM's vocabulary, written as a Hugging Face folder, and the same model made to predict
    [UNK] and [SEP] first."""
    tok = Tokenizer.load(minilm_folder())
    torch.manual_seed(0)
    cfg = ModelConfig(causal=False, vocab_size=30522, block_size=64, n_layer=1, n_head=2, n_embd=16,
                      intermediate_size=32, norm_placement="post", gelu_approx="none", type_vocab_size=2,
                      pad_token_id=0, pooler=False, head="mlm")
    model = build_model(cfg).eval()
    plain = save_hf(model, tok, tmp_path_factory.mktemp("mlm") / "plain")
    with torch.no_grad():
        model.head.bias[UNK] += 40.0
        model.head.bias[SEP] += 39.0
    special = save_hf(model, tok, tmp_path_factory.mktemp("mlm") / "special")
    return plain, special


def as_lists(result: list) -> list[list[dict]]:
    """One list of predictions per mask, for a text with one mask (a list of dicts) or several (a list of lists)."""
    return result if isinstance(result[0], list) else [result]


def assert_same(ours: list, theirs: list) -> None:
    assert isinstance(ours[0], list) == isinstance(theirs[0], list)  # the shape: one mask or several
    for got, want in zip(as_lists(ours), as_lists(theirs), strict=True):
        assert [(p["token"], p["token_str"], p["sequence"]) for p in got] == \
            [(p["token"], p["token_str"], p["sequence"]) for p in want]
        assert [p["score"] for p in got] == pytest.approx([p["score"] for p in want], abs=1e-6)


CASES = [
    ("Paris is the [MASK] of France.", {}),
    ("The man worked as a [MASK], isn't it?", {"top_k": 7}),
    ("a [MASK] b [MASK] c", {}),  # several masks: a list per mask, the other masks kept in each sequence
    ("[MASK] [MASK] [MASK]", {"top_k": 2}),
    ("Paris is the [MASK] of France.", {"targets": ["capital", "city", "capital", "zzqx"]}),  # zzqx: its first token
    ("Paris is the [MASK] of France.", {"targets": "city"}),
    ("Paris [MASK] the [MASK] of France.", {"targets": ["is", "city", "[SEP]"], "top_k": 40000}),  # capped at 3
]


@pytest.mark.parametrize("which", ["plain", "special"])
def test_fill_mask_equals_transformers_pipeline(folders, which):
    """Several masks and `targets` were refused ("exactly once", "unknown option 'targets'"), and a predicted special
    token ([UNK], [SEP]) had token_str "" where transformers gives its name."""
    folder = folders[0] if which == "plain" else folders[1]
    theirs = transformers.pipeline("fill-mask", model=str(folder))
    ours = pipeline("fill-mask", model=folder, batch_size=2)
    for text, options in CASES:
        assert_same(ours(text, **options), theirs(text, **options))
    texts = [text for text, _ in CASES]  # batched (padded) as transformers runs them one by one
    for got, want in zip(ours(texts, top_k=3), theirs(texts, top_k=3), strict=True):
        assert_same(got, want)


def test_special_token_predictions_are_named(folders):
    fill = pipeline("fill-mask", model=folders[1])
    top = fill("Paris is the [MASK] of France.", top_k=2)
    assert [(p["token"], p["token_str"]) for p in top] == [(UNK, "[UNK]"), (SEP, "[SEP]")]
    assert top[0]["sequence"] == "paris is the of france."  # the sequence drops special tokens for one mask


def test_bad_targets_are_one_clear_line(folders):
    fill = pipeline("fill-mask", model=folders[0])
    with pytest.raises(ValueError, match=r"targets=\[''\]: none of them"):
        fill("a [MASK]", targets=[""])
    with pytest.raises(ValueError, match="targets=3: must be a string or a list of strings"):
        fill("a [MASK]", targets=3)
    with pytest.raises(ValueError, match=r"inputs\[1\] must contain the mask token"):
        fill(["a [MASK]", "none here"])
