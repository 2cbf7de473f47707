"""KV-cache surgery for iteration-level batching: rows join and leave a running batch.

The running batch keeps one transformers ``DynamicCache`` whose rows are left-padded to a
common length, plus the matching 2-D attention mask (0 on padding). Joining pads the shorter
side on the left; dropping rows selects them and trims padding columns no row needs any more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache


class _CacheItem:
    """A read/write attribute for item ``owner.i`` of the cache list ``name``."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, owner: "_LegacyLayer", kind: type | None = None) -> torch.Tensor:
        return getattr(owner.cache, self.name)[owner.i]

    def __set__(self, owner: "_LegacyLayer", value: torch.Tensor) -> None:
        getattr(owner.cache, self.name)[owner.i] = value


class _LegacyLayer:
    """``keys``/``values`` view of one layer of an older ``DynamicCache`` (transformers 4.x
    keeps ``key_cache``/``value_cache`` lists)."""

    keys = _CacheItem("key_cache")
    values = _CacheItem("value_cache")

    def __init__(self, cache: DynamicCache, i: int):
        self.cache, self.i = cache, i


def _layers(cache: DynamicCache) -> list:
    if hasattr(cache, "layers"):
        return list(cache.layers)
    return [_LegacyLayer(cache, i) for i in range(len(cache.key_cache))]


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    extra = width - t.shape[-2]
    if extra <= 0:
        return t
    return F.pad(t, (0, 0, extra, 0))  # [B, heads, T, D]: pad dim -2 on the left


def merge(a: DynamicCache | None, mask_a: torch.Tensor | None, b: DynamicCache,
          mask_b: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
    """Rows of ``a`` followed by rows of ``b``; both left-padded to the longer length."""
    if a is None or mask_a is None or mask_a.shape[0] == 0:
        return b, mask_b
    width = max(mask_a.shape[1], mask_b.shape[1])
    for la, lb in zip(_layers(a), _layers(b)):
        la.keys = torch.cat([_pad_left(la.keys, width), _pad_left(lb.keys, width)], dim=0)
        la.values = torch.cat([_pad_left(la.values, width), _pad_left(lb.values, width)], dim=0)
    mask = torch.cat([F.pad(mask_a, (width - mask_a.shape[1], 0)),
                      F.pad(mask_b, (width - mask_b.shape[1], 0))], dim=0)
    return a, mask


def select(cache: DynamicCache, mask: torch.Tensor, index: list[int]
           ) -> tuple[DynamicCache, torch.Tensor]:
    """Keep ``index`` rows (repeats allowed: n>1 choices share one prompt prefill), then drop
    the leading columns that are padding in every remaining row."""
    idx = torch.as_tensor(index, dtype=torch.long, device=mask.device)
    mask = mask.index_select(0, idx)
    real = mask.bool().any(dim=0)
    lead = int(real.float().argmax()) if bool(real.any()) else 0
    for layer in _layers(cache):
        layer.keys = layer.keys.index_select(0, idx.to(layer.keys.device))[..., lead:, :]
        layer.values = layer.values.index_select(0, idx.to(layer.values.device))[..., lead:, :]
    return cache, mask[:, lead:]


def crop(cache: DynamicCache, width: int) -> DynamicCache:
    """Cut every layer back to ``width`` positions: undoes a step that failed part way (its
    first blocks had appended their new keys and values, the later ones had not)."""
    for layer in _layers(cache):
        if layer.keys.shape[-2] > width:
            layer.keys = layer.keys[..., :width, :]
            layer.values = layer.values[..., :width, :]
    return cache
