"""Encoder and task heads: equal to transformers' BERT models on random small configs, padding honoured."""

import os

import pytest
import torch

from neurallayers.config import ModelConfig
from neurallayers.interop import bert
from neurallayers.models import build_model
from neurallayers.models.encoder import (
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    EncoderForTokenClassification,
    EncoderModel,
    build_encoder,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

VOCAB = 97


def tiny(head: str = "none", **kw) -> ModelConfig:
    base = dict(causal=False, vocab_size=VOCAB, block_size=32, n_layer=2, n_head=4, n_embd=32, intermediate_size=48,
                norm_eps=1e-12, norm_placement="post", gelu_approx="none", type_vocab_size=2, pad_token_id=0,
                pooler=head in ("none", "sequence_classification"), scale_residual_init=False, head=head,
                num_labels=3)
    base.update(kw)
    return ModelConfig(**base)


def hf_twin(cfg: ModelConfig, seed: int):
    """A transformers model of cfg's head with random weights, and ours loaded from it."""
    torch.manual_seed(seed)
    hf_cfg = transformers.BertConfig(**bert.config_to_hf(cfg))
    cls = getattr(transformers, hf_cfg.architectures[0])
    ref = cls(hf_cfg).eval()
    with torch.no_grad():  # BERT initialises biases and LayerNorms to constants: randomise so the map is tested
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = build_model(cfg).eval()
    ours.load_state_dict(bert.to_ours(ref.state_dict(), cfg))
    return ref, ours


def padded_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[0, 6:] = 1
    return ids, mask, types


@pytest.mark.parametrize("head", ["none", "mlm", "sequence_classification", "token_classification"])
def test_matches_transformers_with_padding(head):
    cfg = tiny(head)
    ref, ours = hf_twin(cfg, seed=1)
    ids, mask, types = padded_batch()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    if head == "none":
        assert (got.hidden - want.last_hidden_state)[real].abs().max() < 1e-5
        assert (got.pooled - want.pooler_output).abs().max() < 1e-5
    elif head == "sequence_classification":
        assert got.logits.shape == (3, 3)
        assert (got.logits - want.logits).abs().max() < 1e-5
    else:  # per-token heads: padded positions carry no meaning
        assert (got.logits - want.logits)[real].abs().max() < 1e-5


@pytest.mark.parametrize("head", ["mlm", "sequence_classification", "token_classification"])
def test_losses_match_transformers(head):
    cfg = tiny(head)
    ref, ours = hf_twin(cfg, seed=2)
    ids, mask, _ = padded_batch(3)
    if head == "sequence_classification":
        labels = torch.tensor([0, 2, 1])
    else:
        labels = torch.full_like(ids, -100)
        labels[:, 1:4] = ids[:, 1:4] if head == "mlm" else torch.tensor([0, 1, 2])
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, labels=labels).loss
        got = ours(ids, attention_mask=mask, labels=labels).loss
    assert torch.isfinite(got) and abs(float(got - want)) < 1e-5


def test_regression_head_uses_mse():
    cfg = tiny("sequence_classification", num_labels=1)
    ours = build_model(cfg).eval()
    ids, mask, _ = padded_batch()
    target = torch.tensor([0.5, -1.0, 2.0])
    out = ours(ids, attention_mask=mask, labels=target)
    assert out.logits.shape == (3, 1)
    assert torch.allclose(out.loss, ((out.logits.squeeze(-1) - target) ** 2).mean())


def test_untied_mlm_decoder_matches_transformers():
    cfg = tiny("mlm", tie_embeddings=False)
    ref, ours = hf_twin(cfg, seed=4)
    assert ours.head.decoder is not None
    ids, mask, _ = padded_batch()
    with torch.no_grad():
        diff = ours(ids, attention_mask=mask).logits - ref(input_ids=ids, attention_mask=mask).logits
    assert diff[mask.bool()].abs().max() < 1e-5


def test_padded_batch_equals_unpadded_single():
    torch.manual_seed(0)
    model = build_model(tiny()).eval()
    ids, mask, _ = padded_batch()
    with torch.no_grad():
        batch = model(ids, attention_mask=mask)
        for row in range(3):
            n = int(mask[row].sum())
            alone = model(ids[row:row + 1, :n])
            assert torch.allclose(batch.hidden[row, :n], alone.hidden[0], atol=1e-6)
            assert torch.allclose(batch.pooled[row], alone.pooled[0], atol=1e-6)


def test_eager_attention_weights_respect_padding():
    torch.manual_seed(0)
    model = build_model(tiny(attention="eager")).eval()
    ids, mask, _ = padded_batch()
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_attentions=True)
    assert len(out.attentions) == 2
    w = out.attentions[0]  # (B, H, T, T)
    assert w.shape == (3, 4, 11, 11)
    assert w[2, :, :, 4:].abs().max() == 0  # padded keys get no weight
    assert torch.allclose(w.sum(-1), torch.ones(3, 4, 11))


def test_fully_padded_row_stays_finite():
    model = build_model(tiny()).eval()
    ids = torch.randint(1, VOCAB, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    with torch.no_grad():
        assert torch.isfinite(model(ids, attention_mask=mask).hidden).all()


def test_build_encoder_picks_the_head_class():
    assert type(build_encoder(tiny())) is EncoderModel
    assert type(build_model(tiny("mlm"))) is EncoderForMaskedLM
    assert type(build_model(tiny("sequence_classification"))) is EncoderForSequenceClassification
    assert type(build_model(tiny("token_classification"))) is EncoderForTokenClassification


def test_preset_minilm_parameter_count():
    assert ModelConfig.from_name("minilm-l6").param_count() == 22_713_216  # all-MiniLM-L6-v2's published size


def test_rejects_bad_inputs():
    model = build_model(tiny("mlm")).eval()
    ids = torch.randint(1, VOCAB, (2, 5))
    with pytest.raises(ValueError, match="input_ids"):
        model(ids.float())
    with pytest.raises(ValueError, match="input_ids"):
        model(ids[0])
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 4))
    additive = torch.zeros(2, 5).index_fill(1, torch.tensor([3, 4]), float("-inf"))  # 0 = attend: read inverted
    with pytest.raises(ValueError, match="attention_mask must hold 1 for real tokens and 0 for padding"):
        model(ids, attention_mask=additive)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.randint(1, VOCAB, (1, 33)))
    with pytest.raises(ValueError, match="labels"):
        model(ids, labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="token_type_ids"):
        build_model(tiny(type_vocab_size=0))(ids, token_type_ids=torch.zeros_like(ids))
    with pytest.raises(ValueError, match="position"):
        build_model(tiny(position="alibi"))


@torch.no_grad()
def test_a_sinusoidal_encoder_cast_to_bf16_and_back_gives_its_float32_output():
    """The table is a computed buffer outside the state dict: a bf16 round trip left it rounded (hidden 1e-3 off)."""
    torch.manual_seed(0)
    model = build_model(tiny(position="sinusoidal", norm_placement="pre")).eval()
    ids, mask, _ = padded_batch()
    want = model(ids, attention_mask=mask).hidden
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(torch.bfloat16).float()
    model.load_state_dict(weights)  # the weights exactly as they were: only the table could differ
    torch.testing.assert_close(model(ids, attention_mask=mask).hidden, want, atol=1e-6, rtol=0)


def test_prenorm_and_rope_variants_run_and_honour_padding():
    torch.manual_seed(0)
    model = build_model(tiny(norm_placement="pre", position="rope", type_vocab_size=0)).eval()
    ids, mask, _ = padded_batch()
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).hidden
        alone = model(ids[1:2, :7]).hidden
    assert model.norm_f is not None
    assert torch.allclose(batch[1, :7], alone[0], atol=1e-6)


def test_dynamic_ntk_rope_scales_a_padded_row_by_its_own_length():
    """Dynamic NTK grows RoPE's base with the largest position: a right-padded row (as embed batches sentences) took
    the batch's width for its length, so its states depended on the longest sentence beside it."""
    scaling = {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 4}
    torch.manual_seed(0)
    model = build_model(tiny(norm_placement="pre", position="rope", type_vocab_size=0, rope_scaling=scaling,
                             init_std=0.3)).eval()
    ids, mask, _ = padded_batch()
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).hidden
        for row in range(3):
            n = int(mask[row].sum())  # 11, 7, 4: past, past and at the original length
            torch.testing.assert_close(batch[row, :n], model(ids[row:row + 1, :n]).hidden[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", ["mlm", "sequence_classification"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(head):
    """With every dropout on: the recomputed forward replays the same dropout masks (torch's RNG state restored)."""
    cfg = tiny(head, dropout=0.1, attn_dropout=0.1, drop_path=0.1)
    ids, mask, types = padded_batch()
    labels = torch.where(mask.bool(), ids, -100) if head == "mlm" else torch.tensor([0, 2, 1])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    runs = []
    for on in (False, True):
        model.gradient_checkpointing = on
        assert model.encoder.gradient_checkpointing is on
        model.zero_grad()
        torch.manual_seed(3)
        loss = model(ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
        loss.backward()
        runs.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, a), (loss_b, b) = runs
    assert torch.equal(loss_a, loss_b) and a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(b[n], a[n], atol=1e-6, rtol=1e-5, msg=n)


def test_ids_past_their_embedding_tables_are_clear_errors():
    """Out-of-range position or token-type ids were an IndexError from inside the embedding."""
    model = build_model(tiny()).eval()  # block_size 32, type_vocab_size 2
    ids = torch.randint(1, VOCAB, (2, 5))
    with pytest.raises(ValueError, match=r"position_ids must be in \[0, block_size=32\), got values in \[0, 40\]"):
        model(ids, position_ids=torch.tensor([[0, 1, 2, 3, 40]] * 2))
    with pytest.raises(ValueError, match=r"position_ids must have shape \(B, T\)=\(2, 5\), .* got \(1, 3\)"):
        model(ids, position_ids=torch.arange(3)[None])
    with pytest.raises(ValueError, match=r"token_type_ids must be in \[0, type_vocab_size=2\), got values in \[0, 2\]"):
        model(ids, token_type_ids=torch.tensor([[0, 0, 1, 1, 2]] * 2))
    # (1, T) positions broadcast over the batch, as in transformers
    torch.testing.assert_close(model(ids, position_ids=torch.arange(5)[None]).hidden, model(ids).hidden)
    # and (T,) as (1, T), as transformers' BertModel takes it (refused for a while)
    torch.testing.assert_close(model(ids, position_ids=torch.arange(5)).hidden, model(ids).hidden)


def test_a_training_forward_on_the_cpu_names_ids_outside_the_vocabulary():
    """The check ran in eval mode only: a user's own training loop on the CPU (no host sync to save there) got torch's
    'IndexError: index out of range in self' for another tokenizer's ids."""
    model = build_model(tiny(head="mlm", pooler=False)).train()
    ids = torch.tensor([[2, 101, 7]])
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, vocab_size=97\), got values in \[2, 101\]"):
        model(ids, labels=ids)


def test_float_token_type_or_position_ids_are_one_clear_line():
    """They were torch's "Expected tensor for argument #1 'indices' to have one of the following scalar types"."""
    model = build_model(tiny()).eval()
    ids = torch.randint(1, VOCAB, (2, 5))
    must = r"must be an integer \(int64 or int32\) tensor, got torch.float32"
    with pytest.raises(ValueError, match="token_type_ids " + must):
        model(ids, token_type_ids=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="position_ids " + must):
        model(ids, position_ids=torch.arange(5.0))
    types = torch.zeros(2, 5, dtype=torch.int32)  # int32 ids are ids
    torch.testing.assert_close(model(ids, token_type_ids=types, position_ids=types).hidden,
                               model(ids, position_ids=torch.zeros(2, 5, dtype=torch.long)).hidden)
