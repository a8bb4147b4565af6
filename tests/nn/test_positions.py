"""Position encodings: RoPE attention scores depend only on relative position (for every scaling where that
holds), YaRN's rates and attention factor are transformers' to the bit, the sinusoidal table is the paper's formula,
ALiBi slopes equal the reference (BLOOM's in transformers)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from neurallayers.nn.positions import FixedTable, RotaryEmbedding, alibi_slopes, apply_rotary, sinusoidal_table

HEAD_DIM = 16
SCALINGS = {
    "none": None,
    "linear": {"type": "linear", "factor": 4.0},
    "llama3": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32},
    # dynamic NTK keeps its base while the sequence stays within the trained length
    "dynamic": {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 512},
    # YaRN's attention factor scales every score alike (by its square), so they stay relative
    "yarn": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 8, "beta_slow": 0.5},
}


def scores(rope: RotaryEmbedding, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    cos, sin = rope(positions[None], torch.float32)
    return apply_rotary(q, cos, sin) @ apply_rotary(k, cos, sin).transpose(-2, -1)  # (B, H, T, T)


@pytest.mark.parametrize("kind", list(SCALINGS))
def test_rope_scores_depend_only_on_relative_position(kind):
    rope = RotaryEmbedding(HEAD_DIM, theta=10000.0, scaling=SCALINGS[kind], max_position=512)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 12, HEAD_DIM, generator=g), torch.randn(1, 2, 12, HEAD_DIM, generator=g)
    positions = torch.arange(12) * 3  # not contiguous either: only differences matter
    base = scores(rope, q, k, positions)
    for shift in (1, 17, 300):
        torch.testing.assert_close(scores(rope, q, k, positions + shift), base, atol=2e-4, rtol=1e-4)
    # and the positions do matter: a different spacing gives different scores
    assert not torch.allclose(scores(rope, q, k, torch.arange(12) * 5), base, atol=1e-3)


def test_dynamic_rope_is_not_shift_invariant_past_the_trained_length():
    """Past original_max_position_embeddings the base grows with the sequence, so a shift changes the scores
    (transformers' dynamic NTK does the same); the property above holds only within the trained length."""
    rope = RotaryEmbedding(HEAD_DIM, scaling={"type": "dynamic", "factor": 4.0, "original_max_position_embeddings": 16},
                           max_position=512)
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 1, 8, HEAD_DIM, generator=g), torch.randn(1, 1, 8, HEAD_DIM, generator=g)
    positions = torch.arange(8)
    assert not torch.allclose(scores(rope, q, k, positions + 100), scores(rope, q, k, positions), atol=1e-3)


def test_rope_rotation_keeps_norms_and_position_zero_is_identity():
    rope = RotaryEmbedding(HEAD_DIM, scaling=SCALINGS["llama3"], max_position=64)
    x = torch.randn(2, 3, 5, HEAD_DIM, generator=torch.Generator().manual_seed(2))
    cos, sin = rope(torch.arange(5)[None].expand(2, 5) + 7, torch.float32)
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
    cos0, sin0 = rope(torch.zeros(2, 5, dtype=torch.long), torch.float32)
    torch.testing.assert_close(apply_rotary(x, cos0, sin0), x)


@pytest.mark.parametrize("kind", list(SCALINGS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rope_rates_stay_float32_in_a_half_precision_model(kind, dtype):
    """model.to(bfloat16) (load(dtype=...), prepare_for_decode, serve --dtype) cast the inverse frequencies too:
    with 8 bits of mantissa the cos/sin tables at position 1000 were off by up to 0.4 (transformers keeps them fp32)."""
    rope = RotaryEmbedding(64, theta=10000.0, scaling=SCALINGS[kind], max_position=512)
    cast = RotaryEmbedding(64, theta=10000.0, scaling=SCALINGS[kind], max_position=512).to(dtype)
    assert cast.inv_freq.dtype == torch.float32
    positions = torch.arange(1000, 1016)[None]
    for got, want in zip(cast(positions, dtype), rope(positions, dtype), strict=True):
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("kind", list(SCALINGS))
def test_rope_rates_are_computed_when_to_empty_leaves_the_meta_device(kind):
    """The rates are outside the state dict: to_empty left them uninitialised memory that no load filled."""
    want = RotaryEmbedding(HEAD_DIM, scaling=SCALINGS[kind]).inv_freq
    with torch.device("meta"):
        rope = RotaryEmbedding(HEAD_DIM, scaling=SCALINGS[kind])
    torch.testing.assert_close(rope.to_empty(device="cpu").inv_freq, want, rtol=0, atol=0)
    rope.inv_freq.fill_(float("nan"))
    rope.reset_parameters()
    torch.testing.assert_close(rope.inv_freq, want, rtol=0, atol=0)


@pytest.mark.parametrize("make", [functools.partial(sinusoidal_table, 40, 12), functools.partial(alibi_slopes, 6)])
def test_fixed_table_is_computed_when_to_empty_leaves_the_meta_device(make):
    with torch.device("meta"):
        table = FixedTable(make)
    torch.testing.assert_close(table.to_empty(device="cpu").table, make(), rtol=0, atol=0)
    table.table.fill_(float("nan"))
    table.reset_parameters()
    torch.testing.assert_close(table.table, make(), rtol=0, atol=0)


def test_sinusoidal_table_is_the_formula():
    table = sinusoidal_table(50, 12)
    for pos in (0, 1, 7, 49):
        for i in range(6):
            angle = pos / 10000 ** (2 * i / 12)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    assert sinusoidal_table(4, 7).shape == (4, 7)  # odd widths: the last channel is a sine


@pytest.mark.parametrize("n_head", [1, 4, 8, 6, 12, 20])
def test_alibi_slopes_equal_transformers_bloom(n_head):
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    # BLOOM's alibi tensor at position 1 is the slope of each head
    alibi = bloom.build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), n_head, torch.float32)  # (H, 1, 2)
    torch.testing.assert_close(alibi_slopes(n_head), alibi[:, 0, 1])
    if n_head == 8:
        assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]  # the paper's geometric sequence


# (head_dim, theta, rope_scaling): real shapes (Qwen2.5's 128-dim heads over 32768 positions, DeepSeek's mscale pair)
# and small ones whose ramp falls inside the head; truncated or not, the betas and attention factor given or not
YARN_SETS = [
    (128, 1e6, {"factor": 4.0, "original_max_position_embeddings": 32768}),
    (64, 1e4, {"factor": 40, "original_max_position_embeddings": 4096, "mscale": 1.0, "mscale_all_dim": 0.707,
               "beta_fast": 32, "beta_slow": 1}),
    (64, 1e4, {"factor": 16.0, "original_max_position_embeddings": 4096, "mscale": 0.707, "mscale_all_dim": 0.707}),
    (16, 10.0, {"factor": 2.5, "original_max_position_embeddings": 12, "beta_fast": 2.0, "beta_slow": 0.5,
                "truncate": False}),
    (16, 500.0, {"factor": 8, "original_max_position_embeddings": 64, "beta_fast": 4, "beta_slow": 0.25,
                 "attention_factor": 0.75}),
    (32, 1e4, {"factor": 1.0, "original_max_position_embeddings": 8, "beta_fast": None, "mscale": 0.0,
               "mscale_all_dim": 1.0}),  # None and 0: transformers' defaults and its `mscale and mscale_all_dim`
]


@pytest.mark.parametrize("head_dim, theta, params", YARN_SETS)
def test_yarn_rates_and_attention_factor_are_transformers(head_dim, theta, params):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import _compute_yarn_parameters

    config = transformers.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                                      num_hidden_layers=1, max_position_embeddings=4 * params[
                                          "original_max_position_embeddings"],
                                      rope_parameters={"rope_type": "yarn", "rope_theta": theta, **params})
    inv_freq, attention_factor = _compute_yarn_parameters(config)
    rope = RotaryEmbedding(head_dim, theta=theta, scaling={"type": "yarn", **params})
    torch.testing.assert_close(rope.inv_freq, inv_freq, atol=0, rtol=0)
    assert rope.attention_factor == attention_factor
    # and the tables carry it, as transformers' rotary embedding multiplies cos and sin by it
    positions = torch.arange(0, 5000, 97)[None]
    cos, sin = rope(positions, torch.float32)
    angles = positions[0, :, None].float() * torch.cat([inv_freq, inv_freq])
    torch.testing.assert_close(cos[0, 0], angles.cos() * attention_factor, atol=0, rtol=0)
    torch.testing.assert_close(sin[0, 0], angles.sin() * attention_factor, atol=0, rtol=0)


@pytest.mark.parametrize("scaling, named", [
    ({"type": "longrope", "factor": 2.0}, "'longrope'.*'linear', 'dynamic', 'llama3', 'yarn'"),
    ({"factor": 2.0}, "'type'"),
    ({"type": "linear"}, "factor"),
    ({"type": "dynamic"}, "factor"),
    ({"type": "llama3", "factor": 8.0, "original_max_position_embeddings": 32}, "high_freq_factor, low_freq_factor"),
    ({"type": "yarn", "factor": 4.0}, "original_max_position_embeddings"),
    ({"type": "linear", "factor": 2.0, "rope_type": "yarn"}, "'type' and 'rope_type'"),
    ("linear", "a dict"),
])
def test_rotary_embedding_refuses_a_scaling_it_cannot_apply_when_built(scaling, named):
    """An unknown type was plain RoPE, silently (rope_inv_freq fell through to the unscaled rates); a missing key a
    KeyError, at once or at the first forward (dynamic)."""
    with pytest.raises(ValueError, match=f"RotaryEmbedding scaling.*{named}"):
        RotaryEmbedding(HEAD_DIM, scaling=scaling)


@pytest.mark.parametrize("kind", ["linear", "llama3", "yarn", "dynamic"])
def test_rotary_embedding_takes_transformers_rope_type_spelling(kind):
    """transformers' configs spell the key `rope_type` (ModelConfig takes both): it was a KeyError here."""
    params = {k: v for k, v in SCALINGS[kind].items() if k != "type"}
    ours = RotaryEmbedding(HEAD_DIM, scaling={"type": kind, **params})
    theirs = RotaryEmbedding(HEAD_DIM, scaling={"rope_type": kind, **params})
    positions = torch.arange(0, 2000, 37)[None]
    for a, b in zip(ours(positions, torch.float32), theirs(positions, torch.float32), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("n_head", [0, -2])
def test_alibi_slopes_of_no_heads_is_a_clear_error(n_head):
    """It was math's bare "math domain error" from log2."""
    with pytest.raises(ValueError, match=f"alibi_slopes n_head={n_head}: must be an int >= 1"):
        alibi_slopes(n_head)


@pytest.mark.parametrize(("max_len", "dim"), [(4, 0), (0, 8)])
def test_a_sinusoidal_table_of_no_rows_or_channels_is_a_clear_error(max_len, dim):
    """dim 0 was a ZeroDivisionError, max_len 0 an empty table that no position can index."""
    with pytest.raises(ValueError, match=rf"sinusoidal_table max_len={max_len}, dim={dim}: both must be ints >= 1"):
        sinusoidal_table(max_len, dim)


@pytest.mark.parametrize(("head_dim", "scaling", "named"), [
    (7, None, "head_dim=7: must be even"),
    (0, None, "head_dim=0: must be even"),
    (2, SCALINGS["dynamic"], "head_dim=2: must be > 2 for dynamic scaling"),
])
def test_rotary_embedding_refuses_a_head_dim_it_cannot_rotate_when_built(head_dim, scaling, named):
    """An odd head_dim built tables one channel wider than the heads (a size error at the first forward); dynamic NTK
    at head_dim 2 divided by head_dim - 2 (ZeroDivisionError past the trained length)."""
    with pytest.raises(ValueError, match=f"RotaryEmbedding {named}"):
        RotaryEmbedding(head_dim, scaling=scaling)
