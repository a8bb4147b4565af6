"""A static, preallocated KV cache written by position (gpt-fast style): no reallocation while decoding."""

from __future__ import annotations

import numbers

import torch


class CachePositionError(ValueError, IndexError):
    """A write outside the cache's positions. An IndexError too: torch's own indexing raised that for a static cache
    before its positions were checked, and callers catch it."""


class KVCache:
    """Keys and values for every layer: `k`, `v` of shape (n_layer, B, n_kv_head, max_len, head_dim).

    Rows are independent sequences; each row's tokens live at the positions the caller writes them to.
    `rows(start, stop)` gives a view on a range of rows (writes go through), which lets a server prefill one
    request into its slot of a shared batch cache; `window(length)` a view on the first positions.

    `static=True` keeps shapes fixed for a compiled decode step: a write at tensor positions then returns all
    max_len positions (unwritten ones included) without reading the positions back to the host, and the model
    masks the columns past each row's position. Writes at an int position behave the same either way.
    """

    def __init__(self, *, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 static: bool = False, _tensors: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        if _tensors is None:
            for name, v in (("n_layer", n_layer), ("batch_size", batch_size), ("n_kv_head", n_kv_head),
                            ("max_len", max_len), ("head_dim", head_dim)):
                _check_size(name, v)
            _tensors = (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        self.k, self.v = _tensors
        self.static = static

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]  # read from the tensor, so a compiled step can leave the length dynamic

    def rows(self, start: int, stop: int) -> KVCache:
        if not 0 <= start < stop <= self.batch_size:  # a slice past the end held fewer rows, or none, silently
            raise ValueError(f"rows({start}, {stop}) must satisfy 0 <= start < stop <= {self.batch_size} (the cache's "
                             "rows)")
        return self._view(self.k[:, start:stop], self.v[:, start:stop])

    def window(self, length: int) -> KVCache:
        """A view on the first `length` positions of every row (writes go through): a compiled decode step reads
        only the columns in use, not the whole preallocated length."""
        if not 1 <= length <= self.max_len:
            raise ValueError(f"window length {length} must be in [1, {self.max_len}] (the cache's positions)")
        return self._view(self.k[:, :, :, :length], self.v[:, :, :, :length])

    def _view(self, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        n_layer, b, h, length, d = k.shape
        return KVCache(n_layer=n_layer, batch_size=b, n_kv_head=h, max_len=length, head_dim=d, static=self.static,
                       _tensors=(k, v))

    def update(self, layer: int, input_pos: int | torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H, T, D) at positions input_pos.. (an int shared by all rows, or a (B,) tensor) and
        return this layer's keys and values for positions [0, end), end = last written position + 1 (all max_len
        positions when the cache is static and input_pos a tensor)."""
        _check_like(self.k, k, layer)
        # Under autocast the keys come out in its dtype: stored as the cache's own (a slice assignment casts, but the
        # indexed writes at per-row positions below failed with "Index put requires the source and destination
        # dtypes match"). A no-op otherwise.
        k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        t = k.shape[2]
        ck, cv = self.k[layer], self.v[layer]
        if isinstance(input_pos, int):
            end = input_pos + t
            self._check_range(input_pos, end)
            ck[:, :, input_pos:end] = k
            cv[:, :, input_pos:end] = v
        elif self.static:
            # Index the whole (n_layer, ...) tensors, not a layer's view: a compiled step then writes in place
            # instead of copying the layer. Positions are not read back here (see check_positions): out of range raises
            # in the indexing, and a negative position writes from the end.
            idx = input_pos[:, None] + torch.arange(t, device=input_pos.device)  # (B, T)
            rows = torch.arange(k.shape[0], device=k.device)[:, None]
            at = torch.full((1, 1), layer, device=k.device)
            self.k[at, rows, :, idx] = k.transpose(1, 2)  # indexed view is (B, T, H, D)
            self.v[at, rows, :, idx] = v.transpose(1, 2)
            return ck, cv
        else:
            idx = input_pos[:, None] + torch.arange(t, device=input_pos.device)  # (B, T)
            first, last = torch.stack(torch.aminmax(idx)).tolist()  # one read back for both bounds
            end = last + 1
            self._check_range(first, end)
            rows = torch.arange(k.shape[0], device=k.device)[:, None]
            ck[rows, :, idx] = k.transpose(1, 2)  # indexed view is (B, T, H, D)
            cv[rows, :, idx] = v.transpose(1, 2)
        return ck[:, :, :end], cv[:, :, :end]

    def check_positions(self, input_pos: torch.Tensor, t: int) -> None:
        """Raise CachePositionError unless `t` tokens from each row's start in `input_pos` (B,) fit [0, max_len): one
        read back of the starts, for a static cache, whose writes at tensor positions read none (the model calls this
        once a forward, not each layer)."""
        first, last = torch.stack(torch.aminmax(input_pos)).tolist()
        self._check_range(first, last + t)

    def _check_range(self, first: int, end: int) -> None:
        if first < 0:  # it would index from the end of the cache: keys written where no query looks for them
            raise CachePositionError(f"KV cache positions start at 0; writing at {first}")
        if end > self.max_len:
            raise CachePositionError(f"KV cache holds {self.max_len} positions; writing up to {end}")

    def reorder(self, index: torch.Tensor) -> None:
        """Reorder rows in place (beam search keeps the cache rows of the beams that survive)."""
        self.k.copy_(self.k.index_select(1, index))
        self.v.copy_(self.v.index_select(1, index))


def _check_size(name: str, value: object) -> None:
    """A count the cache is allocated with: torch would take 0 rows or positions silently and fail on a negative one
    with an allocation error that names neither."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"KV cache {name}={value!r}: must be an int >= 1")


def _check_like(cache: torch.Tensor, k: torch.Tensor, layer: int) -> None:
    """A cache made before its model was cast or moved failed later in torch ("expected scalar type BFloat16 but
    found Float"), naming neither. Under autocast keys come out in the autocast dtype: the cache stores its own."""
    if k.device != cache.device or (k.dtype != cache.dtype and not torch.is_autocast_enabled(k.device.type)):
        raise ValueError(f"KV cache holds {cache.dtype} on {cache.device}, but layer {layer}'s keys are {k.dtype} on "
                         f"{k.device}: make the cache after casting or moving the model (model.new_cache)")
    _check_shape(cache, k, layer)


def _check_shape(cache: torch.Tensor, k: torch.Tensor, layer: int) -> None:
    """One row of keys into a cache of two was broadcast into both rows (the other row's keys overwritten), then a
    reshape failed; another model's cache failed in the write. Both named neither the cache nor the cure. Not checked
    in a compiled step, whose shapes the step itself makes (a comparison there would tie its dynamic dimensions)."""
    have, got = (cache.shape[1], cache.shape[2], cache.shape[4]), (k.shape[0], k.shape[1], k.shape[3])
    if have != got and not torch.compiler.is_compiling():
        raise ValueError(f"KV cache holds {have[0]} rows of {have[1]} key/value heads of size {have[2]}, but layer "
                         f"{layer}'s keys are {got[0]} rows of {got[1]} of size {got[2]}: make the cache for this "
                         "batch and model (model.new_cache(batch_size), cache.rows(start, stop) for some rows)")
