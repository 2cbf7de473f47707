"""THE gate decision: one function scores pooled states and decides which rows fire.

The engine's hook, :func:`lasa_steer.capture.gate_scores`, the ``prefix`` action and the
server's moderation all call :func:`decide`, so a row reused as "not fired" by the eval is
exactly a row the engine would not steer. Scores are computed on the CPU in float32, so
they agree bit for bit whichever device ran the model. Callers never compare
``states @ direction`` with a threshold themselves: a gate with per-language thresholds or a
probe changes only this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..types import Point
from ..vector.file import Gate


@dataclass(frozen=True)
class GateDecision:
    """Per-row gate results: ``scores`` float32 ``[B]``, ``fired`` bool ``[B]``."""

    scores: torch.Tensor
    fired: torch.Tensor


def score(gate: Gate, pooled: torch.Tensor) -> torch.Tensor:
    """Float32 CPU scores ``[B]`` of pooled states ``[B, H]`` (see
    :func:`lasa_steer.tensors.pool`, with ``gate.pooling``); the fit calibrates on these."""
    return pooled.detach().float().cpu() @ gate.direction.detach().float().cpu()


def decide(gate: Gate, pooled: torch.Tensor) -> GateDecision:
    """Score pooled states with ``gate``; a row fires when its score is above the threshold."""
    scores = score(gate, pooled)
    return GateDecision(scores, scores > gate.threshold)


def gate_point(gate: Gate) -> Point:
    """The hook point the gate reads."""
    return (gate.site, gate.layer)
