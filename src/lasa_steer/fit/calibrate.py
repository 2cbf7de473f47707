"""Calibration on validation data: the gate threshold and the steering strength.

The threshold is set on harmless prompts only, for a target false-positive rate: what a
deployer controls is how often benign users get steered. The strength (and refusal
direction) is the weakest on a grid that makes (nearly) as many harmful prompts refuse as the
best, among settings that keep harmless replies coherent (first-token KL bound); closeness
of harmless outputs as deployed (gate mode) is then measured and reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import FitConfigError
from ..prompts import format_prompts
from ..tensors import position_ids


def threshold_for_fpr(neg_scores: torch.Tensor, fpr: float = 0.02) -> float:
    """Smallest threshold ``t`` with ``mean(neg > t) <= fpr`` (a row fires when its score is
    strictly above ``t``). With ``k = floor(fpr * n)`` it is the (k+1)-th largest score, so
    the rate on these scores is at most ``fpr`` and, without ties, exactly ``k / n``."""
    if not 0.0 <= fpr < 1.0:
        raise FitConfigError(f"fpr={fpr}: must be in [0, 1)")
    s = neg_scores.double().reshape(-1).sort(descending=True).values
    if len(s) == 0:
        raise FitConfigError("validation data: no harmless scores to calibrate the gate "
                             "threshold on")
    k = int(math.floor(fpr * len(s) + 1e-9))
    return float(s[min(k, len(s) - 1)])


def rate_above(scores: torch.Tensor, threshold: float) -> float:
    return float((scores.double() > threshold).double().mean()) if len(scores) else float("nan")


@torch.no_grad()
def next_token_logprobs(model: nn.Module, tokenizer: Any, prompts: Sequence[str],
                        batch_size: int = 16) -> torch.Tensor:
    """Log-probabilities ``[N, V]`` of the first reply token (float32)."""
    texts = format_prompts(tokenizer, list(prompts))
    rows = []
    device = next(model.parameters()).device
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        logits = model(**enc, position_ids=position_ids(enc["attention_mask"]), use_cache=False).logits[:, -1].float()
        rows.append(torch.log_softmax(logits, -1).cpu())
    return torch.cat(rows)


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p || q) from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


@dataclass
class StrengthTrial:
    direction: str
    strength: float
    harmful_refusal: float
    harmless_refusal: float
    harmless_kl: float
    harmless_agreement: float
    samples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"direction": self.direction, "strength": self.strength,
                "harmful_refusal": round(self.harmful_refusal, 4),
                "harmless_refusal": round(self.harmless_refusal, 4),
                "harmless_kl": round(self.harmless_kl, 5),
                "harmless_agreement": round(self.harmless_agreement, 4),
                "samples": self.samples}


def choose_trial(trials: Sequence[StrengthTrial], max_harmless_kl: float = 1.0,
                 slack: float = 0.05) -> StrengthTrial:
    """Among trials whose first-token KL on harmless prompts (steered always) stays within
    ``max_harmless_kl`` nats (a coherence guard: beyond it the model's replies break down),
    take the best harmful refusal rate; among those within ``slack`` of it, the weakest
    strength (then the lowest KL). Harmless refusal under ``mode='always'`` is reported but
    not constrained: as deployed the gate keeps harmless prompts unsteered, which the fit
    checks separately in gate mode."""
    ok = [t for t in trials if t.harmless_kl <= max_harmless_kl] or \
        [min(trials, key=lambda t: t.harmless_kl)]
    best = max(t.harmful_refusal for t in ok)
    near = [t for t in ok if t.harmful_refusal >= best - slack]
    return min(near, key=lambda t: (t.strength, t.harmless_kl))
