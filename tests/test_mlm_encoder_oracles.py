"""Encoder heads against transformers where the existing tests did not reach: every problem_type's loss, and ids a
model's vocabulary does not hold."""

import os

import pytest
import torch

from neurallayers.config import ModelConfig
from neurallayers.interop import bert
from neurallayers.models import build_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")


def tiny(**kw) -> ModelConfig:
    base = dict(
        causal=False,
        vocab_size=50,
        block_size=16,
        n_layer=1,
        n_head=2,
        n_embd=16,
        intermediate_size=32,
        norm_eps=1e-12,
        norm_placement="post",
        gelu_approx="none",
        type_vocab_size=2,
        pad_token_id=0,
        pooler=True,
        scale_residual_init=False,
        head="sequence_classification",
        num_labels=3,
    )
    return ModelConfig(**{**base, **kw})


def twin(cfg: ModelConfig):
    torch.manual_seed(0)
    ref = transformers.BertForSequenceClassification(transformers.BertConfig(**bert.config_to_hf(cfg))).eval()
    ours = build_model(cfg).eval()
    ours.load_state_dict(bert.to_ours(ref.state_dict(), cfg))
    return ref, ours


@pytest.mark.parametrize(
    "num_labels, problem_type, labels",
    [
        (3, None, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])),  # float labels: multi-label, a sigmoid per label
        (3, "multi_label_classification", torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])),
        (1, "multi_label_classification", torch.tensor([[1.0], [0.0]])),  # one label scored by BCE, not MSE
        (2, "regression", torch.tensor([[0.5, -1.0], [2.0, 0.1]])),
        (1, None, torch.tensor([0.3, -0.7])),
        (3, None, torch.tensor([2, 0])),
    ],
)
def test_sequence_classification_loss_equals_transformers_for_every_problem_type(num_labels, problem_type, labels):
    """Float multi-label targets were refused ("labels must have shape (B,)") and a one-label multi-label model scored
    by mean squared error; transformers picks the loss by problem_type, else by the labels' dtype."""
    extra = {"problem_type": problem_type} if problem_type else {}
    ref, ours = twin(tiny(num_labels=num_labels, extra=extra))
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 5, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, labels=labels).loss
        got = ours(ids, attention_mask=mask, labels=labels).loss
    assert torch.isfinite(got) and abs(float(got - want)) < 1e-6


def test_sequence_classification_labels_of_the_wrong_kind_are_one_clear_line():
    _, ours = twin(tiny())
    ids = torch.tensor([[2, 7, 9], [2, 5, 3]])
    with pytest.raises(ValueError, match=r"labels must be class ids of shape \(B,\)=\(2,\), got torch.int64 \(3,\)"):
        ours(ids, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 3\) for multi_label_classification"):
        ours(ids, labels=torch.tensor([1.0, 0.0]))
    _, multi = twin(tiny(extra={"problem_type": "multi_label_classification"}))
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 3\) for multi_label_classification"):
        multi(ids, labels=torch.tensor([1, 0]))


@pytest.mark.parametrize("head", ["none", "mlm", "sequence_classification", "token_classification"])
def test_ids_outside_the_vocabulary_are_a_clear_error(head):
    """Ids of a bigger tokenizer (MiniLM's 30,522 into a model of 50) were 'IndexError: index out of range in self'
    from inside the embedding."""
    model = build_model(tiny(head=head, pooler=head != "mlm")).eval()
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, vocab_size=50\), got values in \[2, 101\]"):
        model(torch.tensor([[2, 101, 7]]))
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, vocab_size=50\), got values in \[-1, 7\]"):
        model(torch.tensor([[2, -1, 7]]))


@pytest.mark.parametrize(
    "head, hf_class", [("mlm", "BertForMaskedLM"), ("token_classification", "BertForTokenClassification")]
)
def test_per_token_labels_take_int32_ids_and_name_float_ones(head, hf_class):
    """int32 labels (as int32 input_ids and sequence labels are taken) were "expected target dtype to be Long or Byte,
    but got Int" from the loss; float labels the same, now one line naming labels."""
    cfg = tiny(head=head, pooler=False)
    torch.manual_seed(0)
    ref = getattr(transformers, hf_class)(transformers.BertConfig(**bert.config_to_hf(cfg))).eval()
    ours = build_model(cfg).eval()
    ours.load_state_dict(bert.to_ours(ref.state_dict(), cfg))
    ids = torch.tensor([[2, 7, 9, 11], [3, 5, 8, 13]])
    labels = torch.tensor([[-100, 1, -100, 2], [0, -100, 2, -100]])
    with torch.no_grad():
        want = ref(input_ids=ids, labels=labels).loss
        torch.testing.assert_close(ours(ids, labels=labels.int()).loss, want)
        if head == "mlm":
            torch.testing.assert_close(ours(ids, labels=labels.int(), logits_at_labels=True).loss, want)
    with pytest.raises(ValueError, match=r"labels must be integer ids \(-100 where ignored\), got a torch.float32"):
        ours(ids, labels=labels.float())


def test_single_label_classification_with_one_label_is_refused_as_transformers_does():
    """One class under cross-entropy scores every label 0: the loss was always 0 and the model never trained.
    transformers' BertConfig refuses problem_type single_label_classification with num_labels 1."""
    cfg = tiny(num_labels=1, extra={"problem_type": "single_label_classification"})
    with pytest.raises(ValueError, match="requires `num_labels > 1`"):
        transformers.BertConfig(**bert.config_to_hf(cfg))
    with pytest.raises(ValueError, match=r"problem_type='single_label_classification' needs num_labels >= 2, got 1"):
        build_model(cfg)
    with pytest.raises(ValueError, match=r"problem_type='binary': expected one of 'regression', "):
        build_model(tiny(extra={"problem_type": "binary"}))  # named when the model is built, not at its first loss


@pytest.mark.parametrize("problem_type", [None, "single_label_classification"])
def test_single_label_class_ids_of_shape_b_by_1_score_as_transformers(problem_type):
    """Class ids shaped (B, 1) (a dataset's label column kept 2-D) were refused; transformers flattens them."""
    extra = {"problem_type": problem_type} if problem_type else {}
    ref, ours = twin(tiny(extra=extra))
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 5, 3, 0, 0]])
    labels = torch.tensor([[2], [0]])
    with torch.no_grad():
        want = ref(input_ids=ids, labels=labels).loss
        torch.testing.assert_close(ours(ids, labels=labels).loss, want)
    with pytest.raises(ValueError, match=r"labels must be class ids of shape \(B,\)=\(2,\), got torch.int64 \(2, 2\)"):
        ours(ids, labels=torch.tensor([[2, 1], [0, 1]]))
