"""The encoder on the real all-MiniLM-L6-v2 weights against transformers' BertModel (padding on either side, sentence
pairs, batch vs alone, bf16), and masked-LM masking against DataCollatorForLanguageModeling's rules."""

import copy
import os

import pytest
import torch

from neurallayers.data.masking import Masker
from neurallayers.embeddings import load_minilm, minilm_folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

TEXTS = ["A man is eating food.", "hi", "The quick brown fox jumps over the lazy dog, again and again."]
PAIRS = ["Someone eats.", "yo", "x"]


@pytest.fixture(scope="module")
def minilm():
    folder = str(minilm_folder())
    ref = transformers.AutoModel.from_pretrained(folder).eval()
    return load_minilm()[0], ref, transformers.AutoTokenizer.from_pretrained(folder)


def run(model, batch: dict, **kw):
    with torch.no_grad():
        return model(batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"], **kw)


@pytest.mark.parametrize("side", ["right", "left"])
def test_hidden_states_and_pooler_equal_bert_model_on_padded_pairs(minilm, side):
    model, ref, ref_tok = minilm
    ref_tok = copy.copy(ref_tok)
    ref_tok.padding_side = side
    batch = ref_tok(TEXTS, PAIRS, padding=True, return_tensors="pt")
    real = batch["attention_mask"].bool()
    for position_ids in (None, (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)):  # arange, or each row's own
        with torch.no_grad():
            want = ref(**batch, position_ids=position_ids)
        got = run(model, batch, position_ids=position_ids)
        assert (got.hidden[real] - want.last_hidden_state[real]).abs().max() < 1e-5
        assert (got.pooled - want.pooler_output).abs().max() < 1e-5
    if side == "right":  # each text alone gives its row of the batch
        for i, (text, pair) in enumerate(zip(TEXTS, PAIRS, strict=True)):
            alone = run(model, ref_tok(text, pair, return_tensors="pt"))
            assert (alone.hidden[0] - got.hidden[i][real[i]]).abs().max() < 1e-5


def test_bf16_errs_no_more_than_transformers_bf16(minilm):
    model, ref, ref_tok = minilm
    batch = ref_tok(TEXTS, PAIRS, padding=True, return_tensors="pt")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        exact = ref(**batch).last_hidden_state[real]
        theirs = copy.deepcopy(ref).to(torch.bfloat16)(**batch).last_hidden_state[real].float()
    ours = run(copy.deepcopy(model).to(torch.bfloat16), batch).hidden[real]
    assert ours.dtype == torch.bfloat16
    assert (ours.float() - exact).abs().mean() < 1.5 * (theirs - exact).abs().mean()


def test_masks_follow_data_collator_for_language_modelings_rules(minilm):
    """The same rates as transformers' collator (15% of the tokens that are not special; 80% [MASK], 10% random,
    10% kept; -100 elsewhere), and the same tokens never selected ([CLS], [SEP], [PAD], [UNK])."""
    _, _, ref_tok = minilm
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (64, 128), generator=g)
    ids[:, 0], ids[:, -1], ids[:, 50:54] = ref_tok.cls_token_id, ref_tok.sep_token_id, ref_tok.unk_token_id
    ids[:8, 100:] = ref_tok.pad_token_id
    special = torch.tensor(ref_tok.all_special_ids)
    eligible = ~torch.isin(ids, special)
    masker = Masker(mask_id=ref_tok.mask_token_id, vocab_size=len(ref_tok), special_ids=ref_tok.all_special_ids)
    torch.manual_seed(0)
    collated = transformers.DataCollatorForLanguageModeling(ref_tok, mlm_probability=0.15)(
        [{"input_ids": row.tolist()} for row in ids])
    for inputs, labels in (masker(ids, 0), (collated["input_ids"], collated["labels"])):
        selected = labels != -100
        assert not (selected & ~eligible).any()  # special tokens never
        assert torch.equal(labels[selected], ids[selected]) and torch.equal(inputs[~selected], ids[~selected])
        assert abs(selected.sum() / eligible.sum() - 0.15) < 0.01
        masked = (inputs[selected] == ref_tok.mask_token_id).float().mean()
        kept = (inputs[selected] == ids[selected]).float().mean()
        assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.03 and abs(1 - masked - kept - 0.1) < 0.03
