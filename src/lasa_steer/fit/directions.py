"""Direction math on captured activations (no model here, so it is testable on synthetic data).

The gate direction must read harmfulness, not language: a plain pooled difference of means
is dominated by whichever languages are most numerous or whose states lie furthest apart,
and it picks up the offsets between language centroids whenever a language's harmful and
harmless sets differ in size or style. So we take the difference of means per language,
normalise each to unit length (every language gets one vote), average, and project out the
language-identity subspace (the span of the language-centroid offsets).

A difference of means ignores how the states scatter around their means: a direction that
also points along a high-variance nuisance axis (prompt length, question vs instruction)
ranks prompts partly by that nuisance. :func:`whitened_direction` divides it out, Fisher's
discriminant ``(S + lambda*I)^-1 d`` with ``S`` the covariance within each (language, label)
cell, shrunk toward the identity because 576+ dimensions are estimated from a few thousand
prompts. The fit scores both on validation data and keeps the better (recorded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import FitConfigError
from ..types import HARMFUL, HARMLESS


def diff_of_means(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``mean(pos) - mean(neg)`` in float64 for stable accumulation, returned as float32."""
    return (pos.double().mean(0) - neg.double().mean(0)).float()


def _unit(v: torch.Tensor) -> torch.Tensor:
    n = v.norm()
    return v / n if float(n) > 0 else v


def per_language_diffs(states: torch.Tensor, labels: Sequence[int], langs: Sequence[str]
                       ) -> dict[str, torch.Tensor]:
    """Harmful minus harmless mean per language (languages lacking either side skipped)."""
    lab = torch.as_tensor(list(labels))
    out: dict[str, torch.Tensor] = {}
    for lang in sorted(set(langs)):
        m = torch.tensor([x == lang for x in langs])
        pos, neg = states[m & (lab == 1)], states[m & (lab == 0)]
        if len(pos) and len(neg):
            out[lang] = diff_of_means(pos, neg)
    return out


def language_subspace(states: torch.Tensor, langs: Sequence[str],
                      labels: Sequence[int] | None = None, energy: float = 1.0,
                      max_rank: int | None = None) -> torch.Tensor:
    """Orthonormal basis ``[H, k]`` of the directions separating language centroids.

    A language's centroid is the mean of its per-label means when ``labels`` are given (so
    an unequal harmful/harmless mix does not leak the harm direction into the subspace).
    ``energy`` < 1 keeps the leading singular directions that explain that share of the
    centroid spread; ``max_rank`` caps k (at most languages - 1)."""
    names = sorted(set(langs))
    cents = []
    lab = torch.as_tensor(list(labels)) if labels is not None else None
    for lang in names:
        m = torch.tensor([x == lang for x in langs])
        if lab is None:
            cents.append(states[m].double().mean(0))
        else:
            parts = [states[m & (lab == c)].double().mean(0) for c in (0, 1)
                     if bool((m & (lab == c)).any())]
            cents.append(torch.stack(parts).mean(0))
    if len(cents) < 2:
        return torch.zeros(states.shape[1], 0)
    c = torch.stack(cents)
    c = c - c.mean(0, keepdim=True)
    u, s, vh = torch.linalg.svd(c, full_matrices=False)
    s2 = s ** 2
    if float(s2.sum()) == 0.0:
        return torch.zeros(states.shape[1], 0)
    keep = int((s2 > s2.sum() * 1e-10).sum())
    if energy < 1.0:
        cum = torch.cumsum(s2, 0) / s2.sum()
        keep = min(keep, int((cum < energy).sum()) + 1)
    if max_rank is not None:
        keep = min(keep, max_rank)
    return vh[:keep].T.float().contiguous()


def project_out(v: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Remove the span of ``basis`` ``[H, k]`` from ``v``; also return the fraction of
    ``v``'s squared norm that was removed."""
    if basis.numel() == 0:
        return v.clone(), 0.0
    vd, b = v.double(), basis.double()
    removed = b @ (b.T @ vd)
    frac = float(removed.pow(2).sum() / vd.pow(2).sum().clamp_min(1e-30))
    return (vd - removed).float(), frac


@dataclass
class HarmDirection:
    """The gate direction and how it was made."""

    direction: torch.Tensor          # unit, language subspace removed
    raw: torch.Tensor                # unit average of per-language unit diffs, before removal
    per_language: dict[str, torch.Tensor]
    subspace_rank: int
    fraction_removed: float          # of the squared norm of ``raw``
    scale: float                     # mean per-language diff norm (the natural add scale)
    basis: torch.Tensor | None = None  # the language subspace ``[H, k]`` that was removed


def harm_direction(states: torch.Tensor, labels: Sequence[int], langs: Sequence[str],
                   remove_language: bool = True, energy: float = 1.0) -> HarmDirection:
    """Language-balanced, language-subspace-free harmful-minus-harmless direction."""
    diffs = per_language_diffs(states, labels, langs)
    if not diffs:
        raise FitConfigError("data: no language has both harmful and harmless examples")
    units = torch.stack([_unit(d) for d in diffs.values()])
    raw = _unit(units.mean(0))
    basis = language_subspace(states, langs, labels, energy=energy) if remove_language \
        else torch.zeros(states.shape[1], 0)
    cleaned, frac = project_out(raw, basis)
    scale = float(torch.stack([d.norm() for d in diffs.values()]).mean())
    return HarmDirection(_unit(cleaned), raw, diffs, basis.shape[1], frac, scale, basis)


def within_cell_covariance(states: torch.Tensor, labels: Sequence[int],
                           langs: Sequence[str]) -> torch.Tensor:
    """Covariance ``[H, H]`` of the states around their own (language, label) cell mean,
    pooled over cells (float64 accumulation, returned as float64)."""
    lab = torch.as_tensor(list(labels))
    x = states.double().clone()
    for lang in sorted(set(langs)):
        m = torch.tensor([v == lang for v in langs])
        for c in (0, 1):
            cell = m & (lab == c)
            if bool(cell.any()):
                x[cell] -= x[cell].mean(0)
    return x.T @ x / max(1, len(x) - 1)


def whitened_direction(direction: torch.Tensor, covariance: torch.Tensor, shrinkage: float,
                       basis: torch.Tensor | None = None) -> torch.Tensor:
    """Unit ``(S + shrinkage * mean_eigenvalue(S) * I)^-1 direction``, with the span of
    ``basis`` (the language subspace) projected out again afterwards."""
    h = covariance.shape[0]
    ridge = shrinkage * float(covariance.trace()) / h
    w = torch.linalg.solve(covariance + ridge * torch.eye(h, dtype=covariance.dtype),
                           direction.double()).float()
    if basis is not None:
        w, _ = project_out(w, basis)
    return _unit(w)


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Area under the ROC curve of scores (positives should score higher); ties count
    half (the Mann-Whitney U statistic)."""
    p, n = pos.double().reshape(-1), neg.double().reshape(-1)
    if len(p) == 0 or len(n) == 0:
        return float("nan")
    allv = torch.cat([p, n])
    order = allv.argsort()
    ranks = torch.empty_like(allv)
    sorted_v = allv[order]
    i = 0
    pos_ranks = torch.arange(1, len(allv) + 1, dtype=torch.float64)
    # average ranks over ties
    while i < len(sorted_v):
        j = i
        while j + 1 < len(sorted_v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = pos_ranks[i:j + 1].mean()
        i = j + 1
    u = ranks[: len(p)].sum() - len(p) * (len(p) + 1) / 2
    return float(u / (len(p) * len(n)))


def auroc_row(scores: torch.Tensor, labels: torch.Tensor, langs: Sequence[str]
               ) -> dict[str, float]:
    """AUROC of ``scores`` per language and over all rows (``all``)."""
    row = {}
    for lang in sorted(set(langs)):
        m = torch.tensor([x == lang for x in langs])
        row[lang] = auroc(scores[m & (labels == HARMFUL)], scores[m & (labels == HARMLESS)])
    row["all"] = auroc(scores[labels == HARMFUL], scores[labels == HARMLESS])
    return row


def lang_mean(row: dict[str, float]) -> float:
    """Mean of the finite per-language AUROCs of a row."""
    vals = [v for k, v in row.items() if k not in ("all", "layer") and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else float("nan")
