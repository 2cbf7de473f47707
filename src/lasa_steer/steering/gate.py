"""THE gate decision: one function scores pooled states and decides which rows fire.

The engine's hook, :func:`lasa_steer.capture.gate_scores`, the ``prefix``/``refuse``
actions and the server's moderation all call :func:`decide`, so a row reused as "not fired"
by the eval is exactly a row the engine would not steer. Scores are computed on the CPU in
float32, so they agree bit for bit whichever device ran the model. Callers never compare
``states @ direction`` with a threshold themselves.

A language-aware gate reads two things in the prompt pass: the mean state over the prompt's
real tokens at ``lid_layer`` (an early block, where states still cluster by language:
nearest centroid names the language) and the pooled state at the gate block (the score).
The row fires when its score is above its language's threshold; the score scale shifts by
language, so one threshold set on all languages pooled sits above most harmful prompts of
the languages the model reads worst.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..types import Point
from ..vector.file import Gate

LID_POOLING = "mean"  # how the language-identification state is pooled


@dataclass(frozen=True)
class GateDecision:
    """Per-row gate results: ``scores`` float32 ``[B]``, ``fired`` bool ``[B]``, and the
    language each row was identified as (None without a language-aware gate)."""

    scores: torch.Tensor
    fired: torch.Tensor
    langs: tuple[str | None, ...] = ()


def score(gate: Gate, pooled: torch.Tensor) -> torch.Tensor:
    """Float32 CPU scores ``[B]`` of pooled states ``[B, H]`` (see
    :func:`lasa_steer.tensors.pool`, with ``gate.pooling``); the fit calibrates on these.
    A gate with an MLP probe scores with the probe, else with its direction."""
    if gate.probe is not None:
        return gate.probe(pooled)
    return pooled.detach().float().cpu() @ gate.direction.detach().float().cpu()


def identify(gate: Gate, lid_states: torch.Tensor | None, rows: int) -> tuple[str | None, ...]:
    """The language of each row: the nearest of the gate's centroids to its mean state at
    ``lid_layer`` (None for every row without a language-aware gate or states)."""
    if not gate.language_aware or lid_states is None:
        return (None,) * rows
    dist = torch.cdist(lid_states.detach().float().cpu(), gate.centroids.float())  # type: ignore[union-attr]
    return tuple(gate.languages[i] for i in dist.argmin(1).tolist())


def decide(gate: Gate, pooled: torch.Tensor, lid_states: torch.Tensor | None = None
           ) -> GateDecision:
    """Score pooled states with ``gate``; a row fires when its score is above the threshold
    of its language (:meth:`Gate.threshold_for`)."""
    scores = score(gate, pooled)
    langs = identify(gate, lid_states, len(scores))
    thresholds = torch.tensor([gate.threshold_for(lang) for lang in langs], dtype=scores.dtype)
    return GateDecision(scores, scores > thresholds, langs)


def gate_point(gate: Gate) -> Point:
    """The hook point the gate reads."""
    return (gate.site, gate.layer)


def lid_point(gate: Gate) -> Point | None:
    """The hook point the language is read at (None without a language-aware gate)."""
    return ("resid_post", gate.lid_layer) if gate.language_aware else None  # type: ignore[return-value]


def reads(gate: Gate) -> dict[Point, str]:
    """Every point the gate reads in the prompt pass, with its pooling."""
    out = {gate_point(gate): gate.pooling}
    lp = lid_point(gate)
    if lp is not None:
        out[lp] = LID_POOLING
    return out
