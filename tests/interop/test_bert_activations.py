"""BERT folders naming GELU by any of transformers' names load as transformers builds them, and export back as
a name transformers reads to the same function."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers.api import load  # noqa: E402
from neurallayers.interop.hf import save_hf  # noqa: E402


@pytest.mark.parametrize("act", ["gelu_fast", "gelu_accurate", "gelu_python_tanh", "gelu_python"])
def test_a_bert_folder_with_another_name_of_gelu_loads_and_exports(tmp_path, act):
    """GPT-2 took transformers' other names of the two GELUs; BERT refused them ("supported are gelu, gelu_new,
    gelu_pytorch_tanh") though transformers builds the same function."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=16, hidden_act=act)
    ref = transformers.BertForMaskedLM(config).eval()
    ref.save_pretrained(tmp_path / "hf")
    ours, _ = load(tmp_path / "hf")
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(ids).logits
        torch.testing.assert_close(ours(ids).logits, want, atol=1e-5, rtol=1e-5)
        save_hf(ours, None, tmp_path / "ours")
        back = transformers.BertForMaskedLM.from_pretrained(tmp_path / "ours").eval()
        torch.testing.assert_close(back(ids).logits, want, atol=1e-5, rtol=1e-5)
