"""Named model shapes as plain data. `ModelConfig.from_name(name)` builds one; any field can be overridden."""

_GPT2 = dict(
    vocab_size=50257, block_size=1024, norm="layernorm", mlp="gelu", position="learned", bias=True, tie_embeddings=True
)
_LLAMA = dict(
    norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", position="rope", bias=False, tie_embeddings=False,
    scale_residual_init=False,
)

PRESETS: dict[str, dict] = {
    # GPT-2 family: the published shapes
    "gpt2": dict(_GPT2, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(_GPT2, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(_GPT2, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(_GPT2, n_layer=48, n_head=25, n_embd=1600),
    # Llama style, small enough to train on a CPU or a single GPU
    "llama-tiny": dict(_LLAMA, vocab_size=4096, block_size=256, n_layer=4, n_head=4, n_kv_head=2, n_embd=128),
    "llama-small": dict(_LLAMA, vocab_size=32000, block_size=1024, n_layer=8, n_head=8, n_kv_head=4, n_embd=512),
    "llama-110m": dict(_LLAMA, vocab_size=32000, block_size=1024, n_layer=12, n_head=12, n_kv_head=4, n_embd=768),
    # Demo and test shapes
    "tiny": dict(_GPT2, vocab_size=512, block_size=128, n_layer=2, n_head=2, n_embd=64),
    "shakespeare-char": dict(  # nanoGPT's CPU Shakespeare shape
        _GPT2, vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False
    ),
    "demo": dict(  # `make demo`: ~3.5M parameters, trains on 2 CPU cores in a few minutes
        _LLAMA, vocab_size=1024, block_size=128, n_layer=4, n_head=4, n_kv_head=4, n_embd=256, tie_embeddings=True
    ),
    # BERT style encoders
    "bert-tiny": dict(  # google/bert_uncased_L-2_H-128_A-2
        causal=False, vocab_size=30522, block_size=512, n_layer=2, n_head=2, n_embd=128, norm="layernorm",
        norm_eps=1e-12, norm_placement="post", mlp="gelu", gelu_approx="none", position="learned", bias=True,
        tie_embeddings=True, type_vocab_size=2, pad_token_id=0, pooler=True, scale_residual_init=False,
    ),
    "bert-mini": dict(
        causal=False, vocab_size=30522, block_size=512, n_layer=4, n_head=4, n_embd=256, norm="layernorm",
        norm_eps=1e-12, norm_placement="post", mlp="gelu", gelu_approx="none", position="learned", bias=True,
        tie_embeddings=True, type_vocab_size=2, pad_token_id=0, pooler=True, scale_residual_init=False,
    ),
    "minilm-l6": dict(
        causal=False, vocab_size=30522, block_size=512, n_layer=6, n_head=12, n_embd=384, intermediate_size=1536,
        norm="layernorm", norm_eps=1e-12, norm_placement="post", mlp="gelu", gelu_approx="none",
        position="learned", bias=True, tie_embeddings=True, type_vocab_size=2, pad_token_id=0, pooler=True,
        scale_residual_init=False,
    ),
}
