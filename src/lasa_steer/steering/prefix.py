"""The ``prefix`` action's gate: decided with a capture pass (the model runs only up to the
gate's block) before the prompt pass, so that the assistant turn of fired prompts can be
opened with a safety text (the server appends it; ``steer()`` does not offer the action).

Unlike the hook actions, the prefix changes the prompt, so the gate must be decided before
the prompt pass; it uses the same :func:`~lasa_steer.steering.gate.decide` as the engine.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch
from torch import nn

from ..capture import gate_batch
from ..model.layers import LayerMap
from ..tensors import left_pad
from .engine import SteeringEngine
from .gate import GateDecision
from .rows import RowSteering


def decide_prompts(model: nn.Module, rows: Sequence[RowSteering],
                   prompts: Sequence[Sequence[int]], pad_id: int | None,
                   engine: SteeringEngine | None = None,
                   layer_map: LayerMap | None = None) -> GateDecision:
    """Gate decisions for token prompts before they run: rows in ``mode='gate'`` are scored
    (one capture pass per vector, left-padded), ``'always'`` rows fire, ``'off'`` rows do
    not; scores are NaN where no gate was read. ``engine`` (if any) is paused meanwhile."""
    scores = torch.full((len(rows),), float("nan"))
    fired = torch.tensor([r.mode == "always" for r in rows], dtype=torch.bool)
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        if r.mode == "gate" and r.vector is not None:
            groups.setdefault(id(r.vector), []).append(i)
    device = next(model.parameters()).device
    with engine.paused() if engine is not None else nullcontext():
        for idx in groups.values():
            ids, mask = left_pad([prompts[i] for i in idx], pad_id, device)
            d = gate_batch(model, rows[idx[0]].vector, ids, mask, layer_map)
            scores[idx] = d.scores
            fired[idx] = d.fired
    return GateDecision(scores, fired)

