"""Task heads against transformers' own classes: parameters, checkpoints both ways, attentions, input gradients;
a rotary encoder under autocast."""

import os

import pytest
import torch
from test_encoder import VOCAB, hf_twin, padded_batch, tiny

from neurallayers.config import ModelConfig
from neurallayers.interop import bert
from neurallayers.models import build_model
from neurallayers.models.encoder import EncoderForMaskedLM, drop_unused_pooler

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

HEADS = ["none", "mlm", "sequence_classification", "token_classification"]


def preset(head: str) -> ModelConfig:
    """bert-tiny's shape (which has BERT's pooler) under `head`, small."""
    return ModelConfig.from_name("bert-tiny").replace(head=head, vocab_size=VOCAB, block_size=32, n_layer=1)


def hf_class(cfg: ModelConfig):
    return getattr(transformers, bert.HEAD_ARCHITECTURE[cfg.head])


@pytest.mark.parametrize("head", HEADS)
def test_parameter_counts_equal_transformers_for_every_head(head):
    """BertForMaskedLM and BertForTokenClassification have no pooler: ours had one more d x d + d there."""
    cfg = preset(head)
    ref = hf_class(cfg)(transformers.BertConfig(**bert.config_to_hf(cfg)))
    assert cfg.param_count() == sum(p.numel() for p in build_model(cfg).parameters()) == ref.num_parameters()


@pytest.mark.parametrize("head", ["mlm", "token_classification"])
def test_a_preset_head_model_saves_a_folder_transformers_loads_without_complaint(head, tmp_path):
    """A token classifier of a preset wrote `bert.pooler.*`, which transformers listed as unexpected keys."""
    from neurallayers.interop.hf import save_hf

    cfg = preset(head)
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    save_hf(ours, None, tmp_path)
    ref, info = hf_class(cfg).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    ids, mask, types = padded_batch()
    with torch.no_grad():
        diff = (
            ours(ids, attention_mask=mask, token_type_ids=types).logits
            - ref.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        )
    assert diff[mask.bool()].abs().max() < 1e-5


@pytest.mark.parametrize("head", ["mlm", "token_classification"])
def test_a_transformers_head_checkpoint_loads_and_saves_back_equal(head, tmp_path):
    from neurallayers.api import load
    from neurallayers.interop.hf import save_hf

    ref, _ = hf_twin(tiny(head), seed=3)
    ref.save_pretrained(tmp_path / "hf")
    ours, _ = load(tmp_path / "hf")
    assert ours.encoder.pooler is None
    assert sum(p.numel() for p in ours.parameters()) == ref.num_parameters()
    save_hf(ours, None, tmp_path / "back")
    back, info = hf_class(ours.config).from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    ids, mask, types = padded_batch(1)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        for got in (
            ours(ids, attention_mask=mask, token_type_ids=types).logits,
            back.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types).logits,
        ):
            assert (got - want)[mask.bool()].abs().max() < 1e-5


def test_weights_saved_with_a_pooler_load_into_a_masked_lm_without_one():
    """Masked-LM runs of the BERT presets were saved with their (frozen, unused) pooler."""
    cfg = preset("mlm")
    model = EncoderForMaskedLM(cfg)
    old = dict(model.state_dict())
    old.update(
        {"encoder.pooler.weight": torch.zeros(cfg.n_embd, cfg.n_embd), "encoder.pooler.bias": torch.zeros(cfg.n_embd)}
    )
    model.load_state_dict(drop_unused_pooler(cfg, old, source="old run"))  # strict: nothing else left out
    classifier = preset("sequence_classification")
    sd = build_model(classifier).state_dict()
    assert drop_unused_pooler(classifier, sd) is sd  # a head that reads its pooler keeps it


@pytest.mark.parametrize("head", HEADS)
def test_attentions_and_input_gradients_equal_transformers(head):
    """Each layer's attention weights, and the gradient of the loss w.r.t. the word embeddings fed in (for the bare
    encoder: of a function of its hidden states and pooled output)."""
    cfg = tiny(head)
    ref, ours = hf_twin(cfg, seed=5)
    ref.set_attn_implementation("eager")
    ids, mask, types = padded_batch(7)
    labels = {"none": None, "sequence_classification": torch.tensor([0, 2, 1])}.get(head, torch.full_like(ids, -100))
    if head in ("mlm", "token_classification"):
        labels[:, 2:6] = ids[:, 2:6] if head == "mlm" else torch.tensor([0, 1, 2, 1])
    kw = {} if labels is None else {"labels": labels}
    fed = {}

    def keep(name):  # the embeddings fed to the first layer, and later their gradient
        def hook(module, inputs, output):
            output.retain_grad()
            fed[name] = output

        return hook

    getattr(ours, "encoder", ours).wte.register_forward_hook(keep("ours"))
    getattr(ref, "bert", ref).embeddings.word_embeddings.register_forward_hook(keep("ref"))
    got = ours(ids, attention_mask=mask, token_type_ids=types, output_attentions=True, **kw)
    want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_attentions=True, **kw)
    real = mask.bool()
    if head == "none":
        got.loss = got.hidden[real].square().sum() + got.pooled.sum()
        want.loss = want.last_hidden_state[real].square().sum() + want.pooler_output.sum()
    assert abs(float(got.loss.detach() - want.loss.detach())) < 1e-5
    got.loss.backward()
    want.loss.backward()
    for a, b in zip(got.attentions, want.attentions, strict=True):
        assert (a - b)[real[:, None, :, None].expand_as(a)].abs().max() < 1e-6  # rows of real queries
    assert (fed["ours"].grad - fed["ref"].grad).abs().max() < 1e-5 * max(1.0, fed["ref"].grad.abs().max())


def test_a_rotary_encoder_under_bf16_autocast_rotates_in_bf16(monkeypatch):
    """The rotary tables were built in fp32 (the embedding LayerNorm's dtype under autocast), which pushed q and k
    back to fp32 and attention off its bf16 path, where the decoder stays in bf16."""
    from neurallayers.nn import attention

    rotated = []
    real = attention.apply_rotary
    monkeypatch.setattr(attention, "apply_rotary", lambda *a: rotated.append(real(*a)) or rotated[-1])
    cfg = tiny("mlm", position="rope", norm_placement="pre", block_size=64)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ids = torch.randint(1, VOCAB, (2, 40))
    with torch.no_grad():
        want = model(ids).logits
        rotated.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(ids).logits
    assert rotated and {qk.dtype for qk in rotated} == {torch.bfloat16}
    assert (got.float() - want).abs().max() < 0.05 * want.abs().max()  # bf16's error, not a different result


@pytest.mark.parametrize(
    ("head", "bad"),
    [
        ("mlm", VOCAB),
        ("mlm", -1),
        ("token_classification", 3),
        ("sequence_classification", 3),
        ("sequence_classification", -5),
    ],
)
def test_labels_outside_the_classes_are_one_clear_line(head, bad):
    """They were torch's bare IndexError "Target 97 is out of bounds" from the loss (on a GPU a device-side assert);
    -100 stays an ignored label."""
    model = build_model(tiny(head)).eval()
    ids, mask, _ = padded_batch()
    labels = torch.tensor([0, -100, 1]) if head == "sequence_classification" else torch.full_like(ids, -100)
    assert torch.isfinite(model(ids, attention_mask=mask, labels=labels.index_fill(-1, torch.tensor([0]), 1)).loss)
    labels[..., -1] = bad
    field = "vocab_size" if head == "mlm" else "num_labels"
    with pytest.raises(ValueError, match=rf"labels must be in \[0, {field}=\d+\), or -100 where ignored, got {bad}$"):
        model(ids, attention_mask=mask, labels=labels)


@pytest.mark.parametrize("head", ["sequence_classification", "token_classification"])
def test_a_classifier_dropout_trains_as_in_transformers_and_saves_back(head, tmp_path):
    """config.json's classifier_dropout (the heads' dropout, else hidden_dropout_prob's) was ignored: a model loaded
    with 0.5 there trained with hidden_dropout_prob's rate, and a saved one wrote null."""
    from neurallayers.interop.hf import load_hf, save_hf

    hf_cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.5,
        num_labels=3,
    )
    torch.manual_seed(0)
    ref = getattr(transformers, bert.HEAD_ARCHITECTURE[head])(hf_cfg).train()
    ref.save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf")[0].train()
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 5, 3, 1, 1]])
    labels = torch.tensor([1, 2]) if head == "sequence_classification" else torch.tensor([[0, 1, 2, 1, 0]] * 2)
    torch.manual_seed(5)  # the classifier's dropout is the only one drawn: the same mask on both sides
    want = ref(input_ids=ids, labels=labels).loss
    torch.manual_seed(5)
    torch.testing.assert_close(ours(ids, labels=labels).loss, want)
    save_hf(ours, None, tmp_path / "back")
    assert transformers.AutoConfig.from_pretrained(tmp_path / "back").classifier_dropout == 0.5
    hf_cfg.classifier_dropout = 1.5
    hf_cfg.save_pretrained(tmp_path / "bad")
    with pytest.raises(ValueError, match=r"config classifier_dropout=1.5: expected a number in \[0, 1\]"):
        load_hf(tmp_path / "bad")
