"""GPT-2 / Llama style causal language model. Every switch comes from ModelConfig; the blocks come from nn/."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from neurallayers.checks import is_integral
from neurallayers.config import ModelConfig
from neurallayers.nn import Attention, Block, GatedMLP, KVCache, RotaryEmbedding, build_norm, sinusoidal_table
from neurallayers.nn.mlp import MLP
from neurallayers.nn.positions import FixedTable, alibi_slopes, rope_dtype

GEGLU_ACTIVATIONS = {"tanh": "gelu_tanh", "none": "gelu"}  # by gelu_approx, as the plain GELU MLP reads it


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, vocab) or (B, logits_to_keep, vocab)
    loss: torch.Tensor | None = None
    attentions: list[torch.Tensor] | None = None  # per layer (B, n_head, T, S), when asked for
    hidden: torch.Tensor | None = None  # last hidden state (B, T, n_embd), when asked for


def build_mlp(cfg: ModelConfig) -> nn.Module:
    if cfg.mlp == "gelu":
        return MLP(cfg.n_embd, cfg.intermediate_size, bias=cfg.bias, gelu_approx=cfg.gelu_approx)
    activation = "silu" if cfg.mlp == "swiglu" else GEGLU_ACTIVATIONS[cfg.gelu_approx]
    return GatedMLP(cfg.n_embd, cfg.intermediate_size, bias=cfg.bias, activation=activation)


def build_blocks(cfg: ModelConfig) -> nn.ModuleList:
    blocks = []
    for i in range(cfg.n_layer):
        attn = Attention(cfg.n_embd, n_head=cfg.n_head, n_kv_head=cfg.n_kv_head, head_dim=cfg.head_dim,
                         bias=cfg.bias, qkv_bias=cfg.has_qkv_bias, dropout=cfg.attn_dropout, kernel=cfg.attention)
        blocks.append(Block(
            attn=attn, mlp=build_mlp(cfg),
            norm1=build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias),
            norm2=build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias),
            dim=cfg.n_embd, prenorm=cfg.norm_placement == "pre", dropout=cfg.dropout,
            drop_path=cfg.drop_path * i / max(cfg.n_layer - 1, 1), layer_scale=cfg.layer_scale,
        ))
    return nn.ModuleList(blocks)


def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """Normal(0, init_std) weights, zero biases; GPT-2 scales residual projections by 1/sqrt(2 * n_layer)."""
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            std = cfg.init_std
            if cfg.scale_residual_init and name.endswith("proj.weight"):
                std /= math.sqrt(2 * cfg.n_layer)
            nn.init.normal_(p, mean=0.0, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


def reset_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """`model`'s parameters and computed tables set again as a fresh build sets them, in place: each module's own
    reset (norms to 1, the position tables recomputed), then init_weights. Modules with a config are models (the
    encoder inside a head model), reset here as part of the whole."""
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters") and not hasattr(module, "config"):
            module.reset_parameters()
    init_weights(model, cfg)


def materialize_tables(model: nn.Module, device: torch.device) -> None:
    """Position tables still on the meta device computed on `device`: load_state_dict(assign=True) into a model built
    on meta puts the loaded tensors in place, and leaves the buffers outside the state dict meta (forward then failed
    with torch's "Tensor on device meta is not on the expected device")."""
    if device.type == "meta":  # nothing loaded there yet (strict=False, a partial state dict)
        return
    for module in model.modules():
        if isinstance(module, (FixedTable, RotaryEmbedding)) and any(b.is_meta for b in module.buffers(recurse=False)):
            module.to_empty(device=device)  # computes them (FixedTable._apply)


def _tied_from_either(model: DecoderLM, state_dict: dict, prefix: str, *args) -> None:
    """Under a tie, a state dict that names only one of the two tied weights loads it into both (torch's own copy of
    the dict): with assign=True a head-only one (`lm_head.weight`) was assigned to the head, which _after_load then
    tied back to the old embedding, dropping the loaded values silently; an embedding-only one (`wte.weight`, as
    Hugging Face's GPT-2 stores it) was refused by a strict load for the missing head."""
    head, wte = prefix + "lm_head.weight", prefix + "wte.weight"
    tied = model.config.tie_embeddings and isinstance(model.lm_head, nn.Linear)  # not a quantized head (see below)
    if tied and head in state_dict and wte not in state_dict:
        state_dict[wte] = state_dict[head]
    elif tied and wte in state_dict and head not in state_dict:
        state_dict[head] = state_dict[wte]


def _retie(model: DecoderLM) -> None:
    """The head tied to the embedding again where the config ties them and something gave lm_head a Parameter of its
    own (load_state_dict(assign=True), to_empty: each module's weight moved apart), which trained apart from the
    embedding in a model one vocab x n_embd matrix larger. A head swapped for another module (a quantized one, say)
    is left alone."""
    head = model.lm_head
    if model.config.tie_embeddings and isinstance(head, nn.Linear) and head.weight is not model.wte.weight:
        model.lm_head.weight = model.wte.weight


def _after_load(model: DecoderLM, incompatible_keys) -> None:
    """Tied weights that load_state_dict(assign=True) or an earlier to_empty untied, tied again; the position tables
    computed where a load into a model built on meta left them there."""
    _retie(model)
    materialize_tables(model, model.wte.weight.device)


class DecoderLM(nn.Module):
    """Causal LM: embeddings -> blocks -> final norm (unless config.final_norm is False) -> lm_head (tied to the
    embedding when configured)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not config.causal:
            raise ValueError("DecoderLM needs causal=True; build_model picks the encoder for causal=False")
        self.config = cfg = config
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.position == "learned" else None
        if cfg.position == "sinusoidal":
            # Added to the token embeddings unscaled: the paper multiplies them by sqrt(n_embd) first. Saved runs hold
            # weights trained this way, so a scale needs its own config field; at init_std 0.02 the table is ~35x the
            # embeddings, and such a model learns far slower than a learned table (char-level Shakespeare, 2 x 128,
            # 400 steps: val loss 3.09 against 2.23 scaled and 2.29 learned).
            self.sinusoid = FixedTable(functools.partial(sinusoidal_table, cfg.block_size, cfg.n_embd))
        self.rope = (RotaryEmbedding(cfg.head_dim, theta=cfg.rope_theta, scaling=cfg.rope_scaling,
                                     max_position=cfg.block_size) if cfg.position == "rope" else None)
        if cfg.position == "alibi":
            self.alibi = FixedTable(functools.partial(alibi_slopes, cfg.n_head))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = build_blocks(cfg)
        self.layer_windows = tuple(cfg.window_of(i) for i in range(cfg.n_layer))  # each block's attention window
        self.norm_f = build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias) if cfg.has_final_norm else None
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.gradient_checkpointing = False
        init_weights(self, cfg)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.register_load_state_dict_pre_hook(_tied_from_either)
        self.register_load_state_dict_post_hook(_after_load)

    def reset_parameters(self) -> None:
        """Every weight initialised again and the position tables recomputed, in place: for a model built on the meta
        device to train from scratch (FSDP2's recipe: build under torch.device("meta"), fully_shard, to_empty, then
        this). Loading weights after to_empty needs no reset: to_empty computes the tables, load_state_dict fills
        the rest."""
        _retie(self)  # to_empty untied them: the head would train apart from the embedding
        reset_weights(self, self.config)

    # ----- helpers -----
    def num_params(self, *, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.wte.weight.numel() + (self.wpe.weight.numel() if self.wpe is not None else 0)
        return n

    def new_cache(self, batch_size: int, max_len: int | None = None, *, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None, static: bool = False) -> KVCache:
        """A static KV cache for `batch_size` rows of up to `max_len` (None: block_size) positions; `static`
        keeps attention shapes fixed at tensor positions (see KVCache)."""
        cfg = self.config
        p = self.wte.weight
        if max_len is None:
            max_len = cfg.block_size
        elif not is_integral(max_len) or max_len < 1:
            # 0 once meant "the default": a caller's computed length of 0 became a block_size cache, silently
            raise ValueError(f"new_cache max_len={max_len!r}: must be an int >= 1, or None for block_size="
                             f"{cfg.block_size}")
        return KVCache(n_layer=cfg.n_layer, batch_size=batch_size, n_kv_head=cfg.n_kv_head, max_len=max_len,
                       head_dim=cfg.head_dim, dtype=dtype or p.dtype, device=device or p.device, static=static)

    def estimate_mfu(self, tokens_per_second: float, peak_flops: float, *, seq_len: int | None = None) -> float:
        """Model FLOPs utilisation of training at `tokens_per_second` against a `peak_flops` device."""
        if not peak_flops > 0 or not tokens_per_second >= 0:  # 0 was a ZeroDivisionError, a negative a negative MFU
            raise ValueError(f"estimate_mfu needs peak_flops > 0 and tokens_per_second >= 0, got {peak_flops!r} and "
                             f"{tokens_per_second!r}")
        return self.config.flops_per_token(seq_len, training=True) * tokens_per_second / peak_flops

    # ----- forward -----
    def forward(self, input_ids: torch.Tensor, *, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None, input_pos: int | torch.Tensor = 0, logits_to_keep: int = 0,
                output_attentions: bool = False, output_hidden: bool = False) -> ModelOutput:
        """Logits for input_ids (B, T), and the loss when `targets` is given.

        Args:
            targets: (B, T) next-token ids aligned with input_ids (already shifted); -100 is ignored.
            attention_mask: (B, S) 1 for real tokens, 0 for padding, over all key positions [0, S) where
                S = input_pos + T (the cached prefix included).
            position_ids: (B, T), or (1, T) / (T,) for every row; default input_pos + arange(T). Left-padded
                batches pass their own.
            cache: a KVCache from `new_cache`; the new keys/values are written at input_pos.. and attention
                covers everything cached before them.
            input_pos: where these tokens start in the cache: an int for all rows or a (B,) tensor per row.
            logits_to_keep: compute logits only for the last N positions (0 = all); prefill needs one.
        """
        cfg = self.config
        b, t = _check_ids(input_ids)
        input_pos = _check_input_pos(input_pos, b)
        per_row = isinstance(input_pos, torch.Tensor)
        if (cache is not None and cache.static and per_row and input_pos.device.type == "cpu"
                and not torch.compiler.is_compiling()):
            # Its writes read no position back: past the end was torch's bare IndexError, a negative position wrote the
            # last column silently. One read a forward (free on the CPU; a GPU decode step keeps its no-sync path).
            cache.check_positions(input_pos, t)
        if cache is None and (not self.training or input_ids.device.type == "cpu"):
            # A user's forward (scoring) or own training loop: the ids may be another tokenizer's. The trainer's token
            # cache is checked when built and generation checks its prompts: a GPU training step or a decode step pays
            # no host sync for it (on the CPU it costs none; a training forward there got torch's bare IndexError).
            check_below(input_ids, cfg.vocab_size, "input_ids", "vocab_size")
        if targets is not None and targets.shape != input_ids.shape:  # a flat view of another shape pairs wrong ids
            raise ValueError(f"targets must have the shape of input_ids {tuple(input_ids.shape)} (already shifted), "
                             f"got {tuple(targets.shape)}")
        if targets is not None:  # checked as the ids are: not in a GPU training step (a host sync)
            targets = _check_targets(targets, cfg.vocab_size, not self.training or input_ids.device.type == "cpu")
        _check_logits_to_keep(logits_to_keep, targets)
        device = input_ids.device
        if position_ids is not None:
            position_ids = check_position_ids(position_ids, b, t)
            if cfg.position in ("learned", "sinusoidal"):  # they index a table
                check_integer(position_ids, "position_ids")
        shared_positions = position_ids is None and not per_row  # every row at the same positions
        if cache is None and t > cfg.block_size:
            raise ValueError(f"sequence length {t} exceeds the context length block_size={cfg.block_size}")
        if cfg.position in ("learned", "sinusoidal"):  # a table of block_size rows: past it, an IndexError
            # a static cache reads no position back, but on the CPU a read costs nothing (see check_positions above)
            no_sync = cache is not None and cache.static and device.type != "cpu"
            self._check_table_positions(t, input_pos, position_ids, static=no_sync)
        if position_ids is None:
            start = input_pos[:, None] if per_row else input_pos
            position_ids = start + torch.arange(t, device=device)[None, :].expand(b, t)
        x = self.wte(input_ids)
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        elif cfg.position == "sinusoidal":
            x = x + self.sinusoid.table[position_ids].to(x.dtype)
        x = self.drop(x)
        table_dtype = rope_dtype(x)
        # one mask per window: the layers that slide and those that attend to every token (Qwen2) differ
        masks = {w: self._mask(b, t, input_pos, attention_mask, cache, x.dtype, device, w)
                 for w in dict.fromkeys(self.layer_windows)}
        dynamic = (cfg.rope_scaling or {}).get("type") == "dynamic"
        if dynamic and attention_mask is not None:
            rope = self.rope(_unpadded_positions(position_ids, attention_mask, input_pos), table_dtype)
        elif self.rope is not None:  # one row of tables when the rows share positions, broadcast over the batch
            rope = self.rope(position_ids[:1] if shared_positions else position_ids, table_dtype)
        else:
            rope = None
        attentions = [] if output_attentions else None
        for i, block in enumerate(self.blocks):
            mask, is_causal = masks[self.layer_windows[i]]
            kw = dict(rope=rope, mask=mask, is_causal=is_causal, cache=cache, layer=i, input_pos=input_pos,
                      need_weights=output_attentions)
            if self.gradient_checkpointing and self.training:
                x, w = checkpoint(block, x, use_reentrant=False, **kw)
            else:
                x, w = block(x, **kw)
            if output_attentions:
                attentions.append(w)
        if self.norm_f is not None:  # post-norm blocks (GPT-1) already end in a norm
            x = self.norm_f(x)
        hidden = x if output_hidden else None
        if logits_to_keep:
            # A copy, not the slice: with the slice's batch stride, a bf16 linear on CPU takes a path that copies
            # the whole weight (GPT-2's lm_head: ~100 ms instead of 3 ms a prefill).
            x = x[:, -logits_to_keep:].clone(memory_format=torch.contiguous_format)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        return ModelOutput(logits=logits, loss=loss, attentions=attentions, hidden=hidden)

    def _check_table_positions(self, t: int, input_pos: int | torch.Tensor, position_ids: torch.Tensor | None, *,
                               static: bool) -> None:
        """Positions of a learned or sinusoidal table must be in [0, block_size). Int positions cost nothing to check;
        tensor ones are read back (one sync), except with `static` (a static cache off the CPU) or in a compiled step
        (no host sync there)."""
        if position_ids is None and not isinstance(input_pos, torch.Tensor):
            first, last = input_pos, input_pos + t - 1
        elif static or torch.compiler.is_compiling():
            return
        else:
            first, last = torch.stack(torch.aminmax(position_ids if position_ids is not None else input_pos)).tolist()
            last += 0 if position_ids is not None else t - 1
        if first < 0:  # a learned table raised IndexError; the sinusoidal one read its rows from the end, silently
            raise ValueError(f"position {first} is negative: positions of the {self.config.position} position table "
                             f"must be in [0, block_size={self.config.block_size})")
        if last >= self.config.block_size:
            raise ValueError(f"position {last} is past the {self.config.position} position table: positions must be "
                             f"< block_size={self.config.block_size}")

    def _mask(self, b: int, t: int, input_pos: int | torch.Tensor, attention_mask: torch.Tensor | None,
              cache: KVCache | None, dtype: torch.dtype, device: torch.device,
              window: int | None) -> tuple[torch.Tensor | None, bool]:
        """The mask of the layers with this attention `window` (None: every token): (B|1, 1|H, T, S) bool or additive
        float, or None with is_causal."""
        cfg = self.config
        per_row = isinstance(input_pos, torch.Tensor)
        plain = attention_mask is None and cfg.position != "alibi" and window is None
        if plain and cache is None:
            return None, True  # the kernel's own causal mask: fastest path
        if plain and not per_row and (t == 1 or input_pos == 0):
            return None, t > 1  # decode of one token sees the whole prefix; prefill from 0 is plain causal
        q_pos = (input_pos[:, None] if per_row else torch.tensor([[input_pos]], device=device))
        q_pos = q_pos + torch.arange(t, device=device)  # (B|1, T) absolute query positions
        if cache is None:
            s = t
        else:  # a static cache returns every column at tensor positions: mask the unwritten ones, no host sync
            s = cache.max_len if cache.static and per_row else int(q_pos.max()) + 1
        if attention_mask is not None:
            _check_attention_mask(attention_mask, b, s)
        k_pos = torch.arange(s, device=device)
        allowed = k_pos[None, None, :] <= q_pos[:, :, None]  # (B|1, T, S)
        if window is not None:
            allowed &= q_pos[:, :, None] - k_pos[None, None, :] < window
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, :s].bool()
            # A padding query would see nothing and give NaN; let every query see itself.
            allowed |= k_pos[None, None, :] == q_pos[:, :, None]
        allowed = allowed[:, None]  # (B|1, 1, T, S)
        if cfg.position != "alibi":
            return allowed, False
        distance = (k_pos[None, None, :] - q_pos[:, :, None]).to(torch.float32)  # (B|1, T, S), <= 0 where seen
        bias = self.alibi.table.to(device)[None, :, None, None] * distance[:, None]  # (B|1, H, T, S)
        return bias.masked_fill(~allowed, float("-inf")).to(dtype), False


def _check_ids(input_ids: torch.Tensor) -> tuple[int, int]:
    is_tensor = isinstance(input_ids, torch.Tensor)
    if not is_tensor or input_ids.ndim != 2 or input_ids.dtype not in (torch.long, torch.int32):
        got = (f"{input_ids.dtype} tensor of shape {tuple(input_ids.shape)}" if is_tensor
               else type(input_ids).__name__)
        raise ValueError(f"input_ids must be an integer tensor of shape (B, T), got {got}")
    if input_ids.shape[1] == 0:  # empty logits and a NaN loss, or (ALiBi with a cache) a bare error from torch.max
        raise ValueError("input_ids is empty: need at least one token per row")
    return input_ids.shape


def _check_targets(targets: torch.Tensor, vocab_size: int, check_range: bool) -> torch.Tensor:
    """Targets as cross-entropy takes them: int32 ids too (as input_ids), and the others one line naming them, not the
    loss's "expected target dtype to be Long or Byte, but got Int" or its bare "Target 50 is out of bounds"."""
    if targets.dtype not in (torch.long, torch.int32):
        raise ValueError(f"targets must be integer ids (-100 where ignored), got a {targets.dtype} tensor")
    if check_range and not torch.compiler.is_compiling():
        bad = (targets != -100) & ((targets < 0) | (targets >= vocab_size))
        if bool(bad.any()):
            raise ValueError(f"targets must be in [0, vocab_size={vocab_size}), or -100 where ignored, got "
                             f"{int(targets[bad][0])}")
    return targets.long()


def _check_input_pos(input_pos: object, b: int) -> int | torch.Tensor:
    """An int for every row (a numpy integer too), or a (B,) integer tensor, one start per row. Others failed deep in
    the cache or the position table with torch's bare errors (a numpy int, a 0-d, float or (B, 1) tensor), and a bool
    was taken as the position 0 or 1."""
    if isinstance(input_pos, torch.Tensor):
        if input_pos.dtype in (torch.long, torch.int32) and input_pos.shape == (b,):
            return input_pos
        got = f"a {input_pos.dtype} tensor of shape {tuple(input_pos.shape)}"
    elif is_integral(input_pos):
        return int(input_pos)
    else:
        got = repr(input_pos)
    raise ValueError(f"input_pos must be an int (where these tokens start in the cache, for every row) or an integer "
                     f"tensor of shape (B,)={(b,)} (each row's start), got {got}")


def _check_logits_to_keep(logits_to_keep: int, targets: torch.Tensor | None) -> None:
    """A negative count sliced off the first positions instead (-2 kept T - 2 rows, silently); with targets, the
    loss met logits of fewer rows than targets and torch's error named neither argument."""
    if not is_integral(logits_to_keep) or logits_to_keep < 0:
        raise ValueError(f"logits_to_keep={logits_to_keep!r}: must be an int >= 0 (the last N positions; 0 = all)")
    if logits_to_keep and targets is not None:
        raise ValueError(f"logits_to_keep={logits_to_keep} with targets: the loss needs the logits of every position; "
                         "leave logits_to_keep 0")


def check_below(ids: torch.Tensor, limit: int, name: str, field: str) -> None:
    """ids index a table of `limit` rows: out of range they are an IndexError deep in the embedding."""
    if torch.compiler.is_compiling() or not bool(((ids < 0) | (ids >= limit)).any()):  # one host sync, no graph break
        return
    low, high = int(ids.min()), int(ids.max())
    raise ValueError(f"{name} must be in [0, {field}={limit}), got values in [{low}, {high}]")


def check_integer(ids: torch.Tensor, name: str) -> None:
    """Float ids were torch's 'Expected tensor for argument #1 'indices' to have one of ...' from the embedding."""
    if ids.dtype not in (torch.long, torch.int32):
        raise ValueError(f"{name} must be an integer (int64 or int32) tensor, got {ids.dtype}")


def check_position_ids(position_ids: torch.Tensor, b: int, t: int) -> torch.Tensor:
    """position_ids as (B, T) or (1, T), which broadcasts over the batch; (T,) is taken as (1, T), as transformers'
    models take it (a 1-D tensor crashed RoPE with a bare size mismatch)."""
    if isinstance(position_ids, torch.Tensor) and position_ids.shape == (t,):
        position_ids = position_ids[None, :]
    if not isinstance(position_ids, torch.Tensor) or position_ids.shape not in ((b, t), (1, t)):
        got = tuple(position_ids.shape) if isinstance(position_ids, torch.Tensor) else type(position_ids).__name__
        raise ValueError(f"position_ids must have shape (B, T)={(b, t)}, (1, T) or (T,), got {got}")
    return position_ids


def _unpadded_positions(position_ids: torch.Tensor, attention_mask: torch.Tensor,
                        input_pos: int | torch.Tensor) -> torch.Tensor:
    """position_ids with padding (a 0 in attention_mask) at 0: no real token attends to it, and dynamic NTK, which
    grows the base with a row's largest position, then scales a right-padded row by its own length, as alone. The
    mask is read at each row's own columns (input_pos may be one start per row: a right-padded row of such a prefill
    was scaled by the batch's padded length). The mask is already checked to cover them."""
    t = position_ids.shape[1]
    start = input_pos[:, None] if isinstance(input_pos, torch.Tensor) else input_pos
    cols = start + torch.arange(t, device=attention_mask.device)[None, :]  # (B|1, T) each query's key column
    b = max(attention_mask.shape[0], cols.shape[0], position_ids.shape[0])
    padded = attention_mask.expand(b, -1).gather(1, cols.expand(b, t)) == 0  # (B, T)
    return torch.where(padded, 0, position_ids)


def _check_attention_mask(attention_mask: torch.Tensor, b: int, s: int) -> None:
    """A mask shorter than the keys would broadcast its last column over all of them: wrong logits, no error."""
    if attention_mask.ndim != 2 or attention_mask.shape[0] not in (1, b) or attention_mask.shape[1] < s:
        raise ValueError(f"attention_mask must have shape (B={b}, S>={s}): 1/0 for every key position, the cached "
                         f"prefix included; got {tuple(attention_mask.shape)}")
    check_mask_values(attention_mask)


def check_mask_values(attention_mask: torch.Tensor) -> None:
    """A float mask is read as 1/0: an additive one (0 to attend, -inf or -10000 to hide) hid every real token and
    attended to the padding, silently. Integer and bool masks (the tokenizer's, generation's) cost no host sync here."""
    if not attention_mask.is_floating_point() or torch.compiler.is_compiling():
        return
    if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
        low, high = float(attention_mask.min()), float(attention_mask.max())
        raise ValueError(f"attention_mask must hold 1 for real tokens and 0 for padding, got values in [{low}, {high}] "
                         "(an additive mask is not accepted)")
