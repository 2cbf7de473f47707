"""Step 5a of the fit: the gate chosen among candidates, and its pooled threshold.

Candidates come from a :data:`~lasa_steer.fit.gate_choice.Trainer` (linear directions and
an MLP probe, :func:`lasa_steer.fit.regate.gate_trainer`); the choice is by worst-language
and held-out-style TPR (:func:`lasa_steer.fit.gate_choice.choose_gate`), not mean AUROC.
The threshold is set on the model as deployed; per-language thresholds come in step 5c.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..steering.gate import decide
from ..types import HARMFUL, HARMLESS
from ..vector.file import Gate
from .calibrate import threshold_for_fpr
from .data import Example
from .directions import auroc_row
from .gate_choice import Trainer, choose_gate


@dataclass
class GateFit:
    """The gate chosen on validation, with the figures it was chosen by."""

    gate: Gate
    method: str
    candidates: dict[str, dict[str, float]]  # per candidate: AUROC per language and "all"
    auroc: dict[str, float]  # the chosen gate's row
    val_fpr: float
    val_tpr: float
    per_language: dict[str, dict[str, float]]
    choice: dict[str, dict[str, Any]]  # per candidate: worst-language / held-out TPR


def calibrate_gate(train_states: torch.Tensor, train: Sequence[Example],
                   val_states: torch.Tensor, val: Sequence[Example], layer: int,
                   trainer: Trainer, fpr: float) -> GateFit:
    best, choice, cands = choose_gate(train_states, train, val_states, val, trainer, fpr)
    labels = torch.tensor([e.label for e in val])
    langs = [e.lang for e in val]
    rows = {name: auroc_row(c.scores(val_states), labels, langs) for name, c in cands.items()}
    scores = best.scores(val_states)
    gate = Gate(layer=layer, direction=best.direction, probe=best.probe,
                threshold=threshold_for_fpr(scores[labels == HARMLESS], fpr))
    fired = decide(gate, val_states).fired.double()

    def rate(m: torch.Tensor) -> float:
        return float(fired[m].mean()) if bool(m.any()) else float("nan")
    per_language = {}
    for lang in sorted(set(langs)):
        m = torch.tensor([x == lang for x in langs])
        per_language[lang] = {"tpr": rate(m & (labels == HARMFUL)),
                              "fpr": rate(m & (labels == HARMLESS))}
    return GateFit(gate, best.name, rows, auroc_row(scores, labels, langs),
                   rate(labels == HARMLESS), rate(labels == HARMFUL), per_language, choice)
