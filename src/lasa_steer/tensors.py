"""Tensor plumbing shared by every hook: block outputs, padding, positions, pooling.

One implementation each, so that the engine, capture and the server read the residual
stream, pad prompts and pick the last real token the same way, bit for bit.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .errors import SteeringConfigError

HiddenFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden states of a block output (a bare tensor or a tuple led by one)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"unexpected block output type {type(output).__name__}")


def with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden states replaced (same container type)."""
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden,) + tuple(output[1:])


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions from the attention mask, as ``generate`` computes them: left-padded rows
    get the same positions (and states) as unpadded ones."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row of a ``[B, T]`` mask (left or right padding;
    0 for an all-padding row)."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), pos, torch.full_like(pos, -1)).max(1).values.clamp_min(0)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Float32 ``[B, H]`` states of ``hidden [B, T, H]``: the last real token (``last``) or
    the mean over real tokens (``mean``), read from ``mask [B, T]``."""
    if pooling == "last":  # pick the rows first: converting all positions costs B*T*H copies
        last = last_token_index(mask)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device),
                      last.to(hidden.device)].float()
    if pooling == "mean":
        h = hidden.float()
        m = mask.to(h.device).float()[:, :, None]
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)
    raise SteeringConfigError(f"pooling={pooling!r}: use 'last' or 'mean'")


class PooledSum:
    """:func:`pool` over a prompt that runs in several passes (chunked prefill): add each
    pass's ``hidden``/``mask`` for some rows; :meth:`result` is what :func:`pool` gives on
    the whole prompt (bit for bit when it came in one pass): the mean keeps a float32 sum
    and a count of real tokens, the last token is that of the latest pass with a real one."""

    def __init__(self, rows: int, hidden: int, pooling: str):
        if pooling not in ("last", "mean"):
            raise SteeringConfigError(f"pooling={pooling!r}: use 'last' or 'mean'")
        self.pooling = pooling
        self.total = torch.zeros(rows, hidden)
        self.count = torch.zeros(rows, 1)
        self.seen = torch.zeros(rows, dtype=torch.bool)

    def add(self, rows: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor) -> None:
        """Add one pass of ``rows`` (CPU indices): ``hidden [k, T, H]``, ``mask [k, T]``."""
        if self.pooling == "mean":
            h = hidden.float()
            m = mask.to(h.device).float()[:, :, None]
            self.total[rows] += (h * m).sum(1).cpu()
            self.count[rows] += m.sum(1).cpu()
            return
        real = mask.bool().any(1).cpu()
        take = real | ~self.seen[rows]  # a row's first pass, or one with a real token
        self.total[rows[take]] = pool(hidden, mask, "last").cpu()[take]
        self.seen[rows] = True

    def result(self, rows: torch.Tensor) -> torch.Tensor:
        """Float32 ``[k, H]`` pooled states of ``rows`` over every pass added."""
        if self.pooling == "mean":
            return self.total[rows] / self.count[rows].clamp_min(1.0)
        return self.total[rows].clone()


def left_pad(seqs: Sequence[Sequence[int]], pad: int | None,
             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as left-padded ``(input_ids, attention_mask)``, as for generation."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad if pad is not None else 0), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def install_hook(block: nn.Module, site: str, fn: HiddenFn) -> RemovableHandle:
    """Call ``fn(hidden)`` at ``site`` of ``block``: its input (``resid_pre``, a forward
    pre-hook) or its output (``resid_post``, a forward hook). ``fn`` returns new hidden
    states or None to leave them untouched (then the block sees the very same objects)."""
    if site == "resid_pre":
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if args and isinstance(args[0], torch.Tensor):
                new = fn(args[0])
                return None if new is None or new is args[0] else ((new,) + args[1:], kwargs)
            hidden = kwargs.get("hidden_states")
            if isinstance(hidden, torch.Tensor):
                new = fn(hidden)
                if new is not None and new is not hidden:
                    return args, {**kwargs, "hidden_states": new}
            return None
        return block.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(module: nn.Module, args: tuple, output: Any) -> Any:
        hidden = hidden_of(output)
        new = fn(hidden)
        return output if new is None or new is hidden else with_hidden(output, new)
    return block.register_forward_hook(post_hook)


def cache_length(kwargs: dict[str, Any]) -> int:
    """Tokens already in the KV cache passed to a model call (0: a fresh prompt pass)."""
    for name in ("cache", "past_key_values"):
        cache = kwargs.get(name)
        if cache is None:
            continue
        if hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
        if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:
            return int(cache[0][0].shape[-2])
    return 0


def pass_mask(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The bool ``[B, T]`` real-token mask of the tokens a model call processes (the last
    ``T`` columns of its attention mask; all ones without one), or None without inputs."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    ref = ids if isinstance(ids, torch.Tensor) else kwargs.get("inputs_embeds")
    if ref is None:
        return None
    b, t = int(ref.shape[0]), int(ref.shape[1])
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] >= t:
        return mask[:, -t:].to(torch.bool)
    return torch.ones(b, t, dtype=torch.bool, device=ref.device)
