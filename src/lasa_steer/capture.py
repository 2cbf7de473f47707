"""Batched activation capture at chosen hook points, stopping after the deepest one.

Used by the fit (bottleneck search, directions) and by gate-only scoring (moderation): the
forward pass is cut short with an exception once the deepest requested point is read, so
scoring at the bottleneck costs only the blocks up to it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .engine import Point, _split, point_order
from .layermap import LayerMap, find_layers
from .prompts import Prompt, format_prompts


class _StopForward(Exception):
    pass


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "last":  # pick the rows first: converting all positions costs B*T*H copies
        t = hidden.shape[1]
        pos = torch.arange(t, device=mask.device).expand_as(mask)
        last = torch.where(mask.bool(), pos, torch.full_like(pos, -1)).max(1).values.clamp_min(0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device),
                      last.to(hidden.device)].float()
    if pooling == "mean":
        h = hidden.float()
        m = mask.to(h.device).float()[:, :, None]
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)
    raise ValueError(f"pooling={pooling!r}: use 'last' or 'mean'")


@torch.no_grad()
def capture_batch(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  points: Sequence[Point], pooling: str = "last",
                  layer_map: LayerMap | None = None) -> dict[Point, torch.Tensor]:
    """Pooled float32 states ``[B, H]`` at each point for one tokenised batch."""
    lm = layer_map or find_layers(model)
    deepest = max(points, key=point_order)
    out: dict[Point, torch.Tensor] = {}
    handles = []

    def make_post(point: Point):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            hidden, _ = _split(output)
            out[point] = _pool(hidden, attention_mask, pooling).cpu()
            if point == deepest:
                raise _StopForward
        return hook

    def make_pre(point: Point):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs["hidden_states"]
            out[point] = _pool(hidden, attention_mask, pooling).cpu()
            if point == deepest:
                raise _StopForward
        return hook

    try:
        for point in set(points):
            site, layer = point
            block = lm.block(layer)
            if site == "resid_pre":
                handles.append(block.register_forward_pre_hook(make_pre(point), with_kwargs=True))
            else:
                handles.append(block.register_forward_hook(make_post(point)))
        try:
            # Positions from the mask, as generate() computes them, so left-padded rows
            # get the same states as unpadded ones.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
            model(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids, use_cache=False)
        except _StopForward:
            pass
    finally:
        for h in handles:
            h.remove()
    return out


def capture(model: nn.Module, tokenizer: Any, prompts: Sequence[Prompt],
            points: Sequence[Point], pooling: str = "last", batch_size: int = 16,
            chat: bool | None = None, assistant_prefix: str = "",
            progress: bool | str = True, layer_map: LayerMap | None = None,
            max_length: int | None = None) -> dict[Point, torch.Tensor]:
    """Pooled float32 states ``[N, H]`` per point for ``prompts`` (chat template applied).

    Prompts are sorted by length and batched with padding to waste little compute; the
    result is in the input order.
    """
    texts = format_prompts(tokenizer, prompts, chat, assistant_prefix)
    lm = layer_map or find_layers(model)
    device = next(model.parameters()).device
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    if max_length:
        encoded = [e[-max_length:] for e in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: dict[Point, list[torch.Tensor]] = {p: [] for p in points}
    desc = progress if isinstance(progress, str) else "capturing activations"
    bar = tqdm(total=len(order), desc=desc, unit="prompt", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # left padding, as for generation
            seq = encoded[i]
            ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
        got = capture_batch(model, ids.to(device), mask.to(device), points, pooling, lm)
        for p in points:
            results[p].append(got[p])
        bar.update(len(idx))
    bar.close()
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return {p: torch.cat(results[p])[inverse] if results[p] else torch.empty(0, lm.hidden_size)
            for p in points}


def gate_scores(model: nn.Module, tokenizer: Any, vector: Any, prompts: Sequence[Prompt],
                batch_size: int = 16, chat: bool | None = None,
                progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Score prompts with a vector's gate, running the model only up to the gate's block.
    Returns ``(scores, flagged)``."""
    gate = vector.gate
    if gate is None:
        raise ValueError(f"vector {vector.name!r} has no gate")
    point = (gate.site, gate.layer)
    states = capture(model, tokenizer, prompts, [point], pooling=gate.pooling,
                     batch_size=batch_size, chat=chat, progress=progress)[point]
    scores = states @ gate.direction.float()
    return scores, scores > gate.threshold
