"""A family's literal weight-name map applied in either direction (used by the family modules): the map expanded per
layer, the keys and shapes expected on each side, checked before renaming, and a tied lm_head."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from neurallayers.config import ModelConfig
from neurallayers.weights import CheckpointError, check_state_dict

WeightMap = tuple[tuple[str, "str | tuple[str, ...]"], ...]
TransformIn = Callable[[str, list[torch.Tensor], ModelConfig], torch.Tensor]
TransformOut = Callable[[str, torch.Tensor, ModelConfig], list[torch.Tensor]]


def expand_map(weight_map: WeightMap, n_layer: int, *, skip: tuple[str, ...] = ()) -> list[tuple[str, tuple[str, ...]]]:
    """(our key, HF keys) for every layer: "{i}" filled in; a single HF key becomes a 1-tuple."""
    entries = []
    for ours, theirs in weight_map:
        if ours in skip:
            continue
        theirs = theirs if isinstance(theirs, tuple) else (theirs,)
        for i in range(n_layer) if "{i}" in ours else [None]:
            entries.append((ours.format(i=i), tuple(t.format(i=i) for t in theirs)) if i is not None
                           else (ours, theirs))
    return entries


def reference_state(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The state dict `build_model(cfg)` has, on the meta device: names and shapes, no memory."""
    from neurallayers.models import build_model

    with torch.device("meta"):
        return build_model(cfg).state_dict()


def hf_shapes(cfg: ModelConfig, to_hf: Callable) -> dict[str, tuple[int, ...]]:
    """{HF key: shape} that a checkpoint for `cfg` holds, from the family's own `to_hf` on the meta reference."""
    return {k: tuple(v.shape) for k, v in to_hf(reference_state(cfg), cfg).items()}


def drop_tied_lm_head(hf_sd: dict[str, torch.Tensor], embedding: str) -> None:
    """Removes lm_head.weight from a state dict whose config ties it to `embedding` (the embedding is the head then),
    saying so when the file's head differs: the config then loses weights the file has. A file with the head and no
    embedding gives the embedding."""
    head, emb = hf_sd.pop("lm_head.weight", None), hf_sd.get(embedding)
    if emb is None and head is not None:  # the tied matrix saved under the head's name only: transformers ties it back
        hf_sd[embedding] = head
        return
    if head is not None and emb is not None and head.shape == emb.shape and not torch.equal(head, emb):
        warnings.warn(f"the config ties lm_head to {embedding} (tie_word_embeddings; GPT-2's default is true), but "
                      f"the file's lm_head.weight differs from it (max |difference| "
                      f"{float((head.float() - emb.float()).abs().max()):.3g}): the embedding is used as the head; "
                      "set \"tie_word_embeddings\": false in config.json to use the file's lm_head", stacklevel=3)


def rename_to_ours(hf_sd: dict[str, torch.Tensor], entries: list[tuple[str, tuple[str, ...]]],
                   expected: dict[str, tuple[int, ...]], transform: TransformIn, cfg: ModelConfig, *,
                   family: str) -> dict[str, torch.Tensor]:
    """Applies a map HF -> ours after checking `hf_sd` against the `expected` HF keys and shapes."""
    check_state_dict(expected, hf_sd, finite=False, source=f"Hugging Face {family} weights")
    check_floating(hf_sd, [t for _, theirs in entries for t in theirs], f"Hugging Face {family} weights")
    out = {ours: transform(ours, [hf_sd[t] for t in theirs], cfg) for ours, theirs in entries}
    if cfg.tie_embeddings:
        out["lm_head.weight"] = out["wte.weight"]
    return out


def check_floating(hf_sd: dict[str, torch.Tensor], names: list[str], source: str) -> None:
    """Refuses integer or bool tensors among the weights `names`, naming them. The model's own check comes after a
    fused weight (Llama's q, k and v, BERT's query, key and value) is concatenated, and torch.cat made floats of an
    integer part: such a file loaded, with that part rounded to whole numbers."""
    typed = sorted(f"{k} ({str(hf_sd[k].dtype).removeprefix('torch.')})" for k in names
                   if not hf_sd[k].is_floating_point())
    if typed:
        raise CheckpointError(f"{source} do not fit the model: {len(typed)} not floating point: {', '.join(typed[:5])}")


def rename_to_hf(sd: dict[str, torch.Tensor], entries: list[tuple[str, tuple[str, ...]]],
                 reference: dict[str, torch.Tensor], transform: TransformOut,
                 cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Applies a map ours -> HF after checking `sd` against the model's own keys and shapes."""
    check_state_dict({k: tuple(v.shape) for k, v in reference.items()}, sd, finite=False, source="state dict")
    out = {}
    for ours, theirs in entries:
        out.update(zip(theirs, transform(ours, sd[ours], cfg), strict=True))
    return out
