"""Batched activation capture at chosen hook points, stopping after the deepest one.

Used by the fit (bottleneck search, directions) and by gate-only scoring (moderation, the
eval's reuse of unfired rows, the ``prefix`` action): the forward pass is cut short with
an exception once the deepest requested point is read, so scoring at the bottleneck costs
only the blocks up to it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import SteeringConfigError
from .model.layers import LayerMap, find_layers
from .model.placement import input_device
from .prompts import Prompt, format_prompts
from .steering.gate import GateDecision, decide, gate_point, lid_point, reads
from .tensors import install_hook, left_pad, pool, position_ids
from .types import Point, point_order


class _StopForward(Exception):
    pass


@torch.no_grad()
def capture_batch(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  points: Sequence[Point], pooling: str = "last",
                  layer_map: LayerMap | None = None,
                  poolings: Mapping[Point, str] | None = None) -> dict[Point, torch.Tensor]:
    """Pooled float32 states ``[B, H]`` at each point for one tokenised batch
    (``poolings`` overrides ``pooling`` at some points)."""
    lm = layer_map or find_layers(model)
    deepest = max(points, key=point_order)
    out: dict[Point, torch.Tensor] = {}
    how = dict(poolings or {})

    def make_hook(point: Point):
        def hook(hidden: torch.Tensor) -> None:
            out[point] = pool(hidden, attention_mask, how.get(point, pooling)).cpu()
            if point == deepest:
                raise _StopForward
        return hook

    handles = []
    try:
        for point in set(points):
            handles.append(install_hook(lm.block(point[1]), point[0], make_hook(point)))
        try:
            model(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids(attention_mask), use_cache=False)
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
            max_length: int | None = None, poolings: Mapping[Point, str] | None = None
            ) -> dict[Point, torch.Tensor]:
    """Pooled float32 states ``[N, H]`` per point for ``prompts`` (chat template applied).

    Prompts are sorted by length and batched with padding to waste little compute; the
    result is in the input order.
    """
    texts = format_prompts(tokenizer, prompts, chat, assistant_prefix)
    lm = layer_map or find_layers(model)
    device = input_device(model)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    if max_length:
        encoded = [e[-max_length:] for e in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: dict[Point, list[torch.Tensor]] = {p: [] for p in points}
    desc = progress if isinstance(progress, str) else "capturing activations"
    bar = tqdm(total=len(order), desc=desc, unit="prompt", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = left_pad([encoded[i] for i in idx], tokenizer.pad_token_id, device)
        got = capture_batch(model, ids, mask, points, pooling, lm, poolings)
        for p in points:
            results[p].append(got[p])
        bar.update(len(idx))
    bar.close()
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return {p: torch.cat(results[p])[inverse] if results[p] else torch.empty(0, lm.hidden_size)
            for p in points}


def gate_batch(model: nn.Module, vector: Any, input_ids: torch.Tensor,
               attention_mask: torch.Tensor, layer_map: LayerMap | None = None) -> GateDecision:
    """The gate decision of one tokenised batch, running the model up to the gate's block."""
    gate = _gate_of(vector)
    how = reads(gate)
    states = capture_batch(model, input_ids, attention_mask, list(how), layer_map=layer_map,
                           poolings=how)
    return decide_from(gate, states)


def gate_scores(model: nn.Module, tokenizer: Any, vector: Any, prompts: Sequence[Prompt],
                batch_size: int = 16, chat: bool | None = None,
                progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Score prompts with a vector's gate, running the model only up to the gate's block.
    Returns ``(scores, flagged)``."""
    d = gate_decisions(model, tokenizer, vector, prompts, batch_size, chat, progress)
    return d.scores, d.fired


def gate_decisions(model: nn.Module, tokenizer: Any, vector: Any, prompts: Sequence[Prompt],
                   batch_size: int = 16, chat: bool | None = None,
                   progress: bool | str = False) -> GateDecision:
    """Like :func:`gate_scores`, with the language each prompt was identified as."""
    gate = _gate_of(vector)
    how = reads(gate)
    states = capture(model, tokenizer, prompts, list(how), batch_size=batch_size, chat=chat,
                     progress=progress, poolings=how)
    return decide_from(gate, states)


def decide_from(gate: Any, states: Mapping[Point, torch.Tensor]) -> GateDecision:
    """The gate decision from states captured at :func:`~lasa_steer.steering.gate.reads`."""
    lp = lid_point(gate)
    return decide(gate, states[gate_point(gate)], None if lp is None else states[lp])


def _gate_of(vector: Any) -> Any:
    if vector.gate is None:
        raise SteeringConfigError(f"vector {vector.name!r} has no gate")
    return vector.gate
