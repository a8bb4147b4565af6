"""save_hf of a model wrapped by torch.compile writes the model's own weights, as transformers' save_pretrained does for
a compiled model (the wrapper's state dict names each weight "_orig_mod.<name>")."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from neurallayers import ModelConfig, build_model  # noqa: E402
from neurallayers.interop.hf import save_hf  # noqa: E402


@pytest.mark.parametrize("preset", ["tiny", "llama-tiny"])
def test_a_compiled_model_is_written_as_the_model_it_wraps(tmp_path, preset):
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(preset).replace(vocab_size=64, n_layer=1, block_size=16)
    model = build_model(cfg).eval()
    save_hf(torch.compile(model), None, tmp_path)  # the wrapper is never called: nothing is compiled
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert ref.num_parameters() == cfg.param_count()
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
