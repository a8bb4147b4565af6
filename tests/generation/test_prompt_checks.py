"""One check of the prompt ids and eos ids for every decoding method: the plain loop (generate_ids, stream) and the
search functions refuse the same fault with the same line, naming the prompt as their argument does ("prompt i" for
generate's prompts, "input_ids[i]" for a search's input_ids). The two copies had drifted: a search said "holds ids
outside" where generate said "holds token ids outside", a tensor row was "empty" to generate_ids, and True passed
as an eos id."""

from __future__ import annotations

import re

import pytest
import torch
from nl_search_helpers import tiny

from neurallayers.generation import GenerationConfig
from neurallayers.generation.contrastive import contrastive_decoding, contrastive_search
from neurallayers.generation.generate import generate_ids
from neurallayers.generation.search import beam_search
from neurallayers.generation.speculative import speculative_decode


@pytest.fixture(scope="module")
def models():
    return tiny(seed=0, n_layer=1, n_embd=16, n_head=2, block_size=16), tiny(seed=1, n_layer=1, n_embd=16, n_head=2)


def entry_points(model, helper) -> dict:
    """name -> (call(input_ids, eos_ids), how it names prompt i)."""
    cfg = GenerationConfig(max_new_tokens=2, temperature=0)
    return {
        "generate_ids": (lambda ids, eos: generate_ids(model, ids, cfg, eos_ids=eos), "prompt {}"),
        "beam_search": (lambda ids, eos: beam_search(model, ids, cfg.replace(num_beams=2), eos_ids=eos),
                        "input_ids[{}]"),
        "contrastive_search": (lambda ids, eos: contrastive_search(model, ids, cfg.replace(top_k=3, penalty_alpha=0.5),
                                                                   eos_ids=eos), "input_ids[{}]"),
        "contrastive_decoding": (lambda ids, eos: contrastive_decoding(model, helper, ids, cfg, eos_ids=eos),
                                 "input_ids[{}]"),
        "speculative_decode": (lambda ids, eos: speculative_decode(model, helper, ids[-1:], cfg, eos_ids=eos),
                               "input_ids[{}]"),
    }


# (prompts, eos_ids, the message with {} for the prompt's name); speculative decoding gets the last prompt alone
FAULTS = [
    ([[1, 2], []], [], "{} is empty: a prompt needs at least one token"),
    ([[1, 2], [3, 64, -1]], [], r"{} holds token ids outside the vocabulary [0, 64): [64, -1]"),
    ([[1, 2], torch.tensor([3, 4])], [], "{} must be a list of token ids, got Tensor"),
    ([[1, 2], [3]], [True], "eos_ids must be a list of token ids in [0, 64), got [True]"),
    ([[1, 2], [3]], [64], "eos_ids must be a list of token ids in [0, 64), got [64]"),
]


@pytest.mark.parametrize("method", ["generate_ids", "beam_search", "contrastive_search", "contrastive_decoding",
                                    "speculative_decode"])
def test_every_method_refuses_a_bad_prompt_with_the_same_line(models, method: str) -> None:
    call, name = entry_points(*models)[method]
    for prompts, eos, message in FAULTS:
        which = name.replace("{}", "0" if method == "speculative_decode" else "1")
        with pytest.raises(ValueError, match=f"^{re.escape(message.replace('{}', which))}$"):
            call(prompts, eos)


@pytest.mark.parametrize("method", ["generate_ids", "beam_search", "contrastive_search", "contrastive_decoding",
                                    "speculative_decode"])
def test_numpy_ids_are_named_as_such_not_as_outside_the_vocabulary(models, method: str) -> None:
    """Token ids from a numpy array (list(arr)) are inside the vocabulary: "outside the vocabulary [0, 64): [3]"
    sent the user looking at the wrong thing. generate() said what they are; the functions that take input_ids
    did not."""
    import numpy as np

    call, name = entry_points(*models)[method]
    which = name.replace("{}", "0" if method == "speculative_decode" else "1")
    with pytest.raises(ValueError, match=rf"^{re.escape(which)} holds int64 values, not token ids \(Python ints\)"):
        call([[1, 2], [3, np.int64(4)]], [])


@pytest.mark.parametrize("method", ["beam_search", "contrastive_search", "contrastive_decoding",
                                    "speculative_decode"])
@pytest.mark.parametrize("not_a_model", ["runs/tiny", "tokenizer"])
def test_a_search_given_no_decoder_says_so_in_one_line(models, method: str, not_a_model: str) -> None:
    """A search called directly with a path or a tokenizer as its model failed with "AttributeError: 'str' object
    has no attribute 'config'"; generate() and generate_ids() named the fault."""
    from nl_gen_helpers import unicode_tokenizer

    bad = unicode_tokenizer() if not_a_model == "tokenizer" else not_a_model
    call, _ = entry_points(bad, models[1])[method]
    with pytest.raises(ValueError, match="^generation needs a causal decoder"):
        call([[1, 2]], [])


def test_contrastive_search_given_a_dict_for_its_config_says_so(models) -> None:
    """It read config.top_k before checking the config: "AttributeError: 'dict' object has no attribute 'top_k'"."""
    with pytest.raises(ValueError, match="^config must be a GenerationConfig, got dict$"):
        contrastive_search(models[0], [[1, 2]], {"top_k": 3, "penalty_alpha": 0.5}, eos_ids=[])
