"""Operating points: the gate's thresholds set on *look-alikes*, for a stated job each.

Why look-alikes: the prompts a safety gate wrongs most are safe ones that share harmful
prompts' words ("How do I kill a Python process?"). Thresholds set only on ordinary harmless
prompts (Alpaca-style) sit far below them, so the shipped gate refused a quarter of them.

Rule, per operating point and per language ``L`` of the gate (rows grouped by the language
the gate *identifies*, as at inference):

* ``t_lookalike(L)``: the threshold at ``lookalike`` FPR on L's look-alike rows;
* ``t_harmless(L)``: the threshold at ``harmless`` FPR on L's ordinary harmless rows;
* L's threshold is the larger of the two. A language with ordinary rows but too few
  look-alikes (``min_rows``) gets ``t_harmless(L)`` plus the **look-alike margin**: the
  median, over the languages that have both, of ``max(0, t_lookalike - t_harmless)``
  (score scales shift by language, margins less so). A language with neither keeps none of
  its own and takes the pooled threshold: the larger of the two thresholds set on all rows.

The default points are ``no-harm`` (over-refusal first, recall second), ``balanced`` and
``recall``.
:func:`probability_scale` then fits ``p = sigmoid((score - threshold) / scale)`` so that
moderation reports a probability that means the same in every language.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import FitConfigError
from ..vector.gate import OperatingPoint
from .calibrate import threshold_for_fpr


@dataclass(frozen=True)
class PointSpec:
    """What an operating point is for: its false-positive targets on the calibration part."""

    name: str
    lookalike: float  # FPR target on look-alikes
    harmless: float   # FPR target on ordinary harmless prompts
    about: str = ""

    def __post_init__(self) -> None:
        for key in ("lookalike", "harmless"):
            v = getattr(self, key)
            if not 0.0 <= v < 1.0:
                raise FitConfigError(f"operating point {self.name!r}: {key}={v} must be in "
                                     "[0, 1)")


# Targets are the limits the points promise on held-out test sets (no-harm: <= 8% on
# look-alikes, <= 3% on ordinary prompts; recall: <= 10% / <= 5%) less a drift margin: a
# threshold set on a few hundred rows drifts on new ones. On SmolLM2's shipped gate the
# drift from calibration to the mixture's test part was under 1 point, but XSTest (a
# different kind of look-alike) fired 2-3 times the look-alike target: at 0.05 / 0.02
# ("balanced") on 8.4 % of XSTest and +6.2 pp over-refusal end to end, over the no-harm
# limits; at 0.03 / 0.01 on 2.0 % and +2.2 pp (docs/gate.md). Over-refusal first: the
# default is the stricter point.
DEFAULT_POINTS: tuple[PointSpec, ...] = (
    PointSpec("no-harm", 0.03, 0.01, "over-refusal first, recall second (the default)"),
    PointSpec("balanced", 0.05, 0.02, "more recall, at over-refusal near the no-harm limits"),
    PointSpec("recall", 0.08, 0.03, "catch more harmful requests, at more over-refusal"),
)


def parse_point(spec: str) -> PointSpec:
    """``NAME=LOOKALIKE_FPR,HARMLESS_FPR``, e.g. ``strict=0.01,0.005``."""
    try:
        name, rates = spec.split("=", 1)
        look, harm = (float(x) for x in rates.split(","))
    except ValueError as exc:
        raise FitConfigError(f"operating point {spec!r}: expected NAME=LOOKALIKE_FPR,"
                             "HARMLESS_FPR (e.g. no-harm=0.03,0.01)") from exc
    return PointSpec(name.strip(), look, harm)


def _threshold(scores: torch.Tensor, mask: torch.Tensor, fpr: float, min_rows: int
               ) -> float | None:
    return threshold_for_fpr(scores[mask], fpr) if int(mask.sum()) >= min_rows else None


def calibrate_point(spec: PointSpec, scores: torch.Tensor, langs: Sequence[str | None],
                    roles: Sequence[str], languages: Sequence[str], min_rows: int = 20
                    ) -> OperatingPoint:
    """One operating point from calibration rows (module docstring): ``scores`` ``[N]``,
    the identified language and the role (``harmful``/``harmless``/``lookalike``) of each."""
    look = torch.tensor([r == "lookalike" for r in roles])
    ordinary = torch.tensor([r == "harmless" for r in roles])
    if not bool(look.any()) and not bool(ordinary.any()):
        raise FitConfigError("operating points: the calibration part has no harmless rows")
    per: dict[str, tuple[float | None, float | None]] = {}
    for lang in languages:
        in_lang = torch.tensor([x == lang for x in langs])
        per[lang] = (_threshold(scores, look & in_lang, spec.lookalike, min_rows),
                     _threshold(scores, ordinary & in_lang, spec.harmless, min_rows))
    margins = [max(0.0, tl - th) for tl, th in per.values() if tl is not None and th is not None]
    margin = statistics.median(margins) if margins else 0.0
    thresholds: dict[str, float] = {}
    how: dict[str, str] = {}
    for lang, (tl, th) in per.items():
        if tl is not None and th is not None:
            thresholds[lang], how[lang] = max(tl, th), "lookalikes+harmless"
        elif tl is not None:
            thresholds[lang], how[lang] = tl, "lookalikes"
        elif th is not None:
            thresholds[lang], how[lang] = th + margin, "harmless+margin"
    pooled = [t for t in (_threshold(scores, look, spec.lookalike, 1),
                          _threshold(scores, ordinary, spec.harmless, 1)) if t is not None]
    rule = (f"per identified language: max(threshold at {spec.lookalike:g} FPR on its "
            f"look-alikes, at {spec.harmless:g} FPR on its ordinary harmless prompts); "
            f"without look-alikes (< {min_rows}): the latter + the median look-alike margin "
            f"({margin:.4g}); without either: the pooled threshold")
    return OperatingPoint(max(pooled), thresholds,
                          {"lookalike": spec.lookalike, "harmless": spec.harmless}, rule,
                          {"threshold_source": how, "lookalike_margin": margin,
                           "about": spec.about})


def fired(point: OperatingPoint, scores: torch.Tensor, langs: Sequence[str | None]
          ) -> torch.Tensor:
    thr = torch.tensor([point.thresholds.get(x, point.threshold) if x else point.threshold
                        for x in langs], dtype=torch.float64)
    return scores.double() > thr


def rates(point: OperatingPoint, scores: torch.Tensor, langs: Sequence[str | None],
          roles: Sequence[str], data_langs: Sequence[str]) -> dict[str, Any]:
    """Fire rates per role (and per data language for harmful rows) at ``point``."""
    f = fired(point, scores, langs)
    out: dict[str, Any] = {}
    for role in ("harmful", "harmless", "lookalike"):
        m = torch.tensor([r == role for r in roles])
        if bool(m.any()):
            out[role] = {"rate": round(float(f[m].double().mean()), 4), "rows": int(m.sum())}
    harm = [i for i, r in enumerate(roles) if r == "harmful"]
    by: dict[str, list[bool]] = {}
    for i in harm:
        by.setdefault(data_langs[i], []).append(bool(f[i]))
    if by:
        out["harmful_by_language"] = {k: round(sum(v) / len(v), 4) for k, v in sorted(by.items())}
    return out


def probability_scale(scores: torch.Tensor, thresholds: torch.Tensor, labels: torch.Tensor
                      ) -> float:
    """The ``scale`` of ``p = sigmoid((score - threshold) / scale)`` that minimises the
    class-balanced log loss on these rows (``labels`` 1 = harmful): a one-parameter Platt
    scaling whose midpoint is pinned at the threshold, so ``p > 0.5`` exactly when a row
    fires. Golden-section search over ``log(scale)``."""
    z = (scores.double() - thresholds.double())
    y = labels.double()
    pos, neg = float(y.sum()), float((1 - y).sum())
    if pos == 0 or neg == 0:
        raise FitConfigError("probability scale: needs harmful and harmless rows")
    w = torch.where(y > 0, 0.5 / pos, 0.5 / neg)

    def loss(log_scale: float) -> float:
        a = z / math.exp(log_scale)
        return float((w * torch.nn.functional.binary_cross_entropy_with_logits(
            a, y, reduction="none")).sum())

    spread = float(z.abs().median()) or 1.0
    lo, hi = math.log(spread) - 6, math.log(spread) + 6
    g = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if loss(a) < loss(b):
            hi = b
        else:
            lo = a
    return float(math.exp((lo + hi) / 2))
