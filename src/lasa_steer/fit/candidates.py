"""Candidate directions: the gate at the bottleneck (difference of means and whitened
variants) and the refusal direction at the blocks after it (difference of means and
contrastive completions). Validation picks among them (:mod:`lasa_steer.fit.pipeline`)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..types import HARMFUL, Point
from .data import Example
from .directions import HarmDirection, harm_direction, whitened_direction, within_cell_covariance
from .sampling import by_lang

Grab = Callable[..., dict[Any, torch.Tensor]]  # capture(texts, points, desc, **kw)


def refusal_layers_for(bottleneck: int, num_layers: int, span: float) -> list[int]:
    """The ``span`` fraction of blocks right after the bottleneck."""
    k = max(1, round(span * num_layers))
    return [i for i in range(bottleneck + 1, bottleneck + 1 + k) if i < num_layers]


def balanced_direction(states: torch.Tensor, labels: list[int], langs: list[str],
                       remove_language: bool) -> torch.Tensor:
    """Language-balanced difference of means, at its natural scale."""
    hd = harm_direction(states, labels, langs, remove_language=remove_language)
    return hd.direction * hd.scale


def gate_candidates(states: torch.Tensor, labels: list[int], langs: list[str],
                    remove_language: bool, shrinkage: Sequence[float]
                    ) -> tuple[dict[str, torch.Tensor], HarmDirection]:
    """``diffmean`` and one Fisher-whitened variant per shrinkage value."""
    hd = harm_direction(states, labels, langs, remove_language=remove_language)
    cands = {"diffmean": hd.direction}
    if shrinkage:
        cov = within_cell_covariance(states, labels, langs)
        for lam in shrinkage:
            cands[f"whitened(shrinkage={lam:g})"] = whitened_direction(hd.direction, cov, lam,
                                                                       hd.basis)
    return cands, hd


def prefix_mean(grab: Grab, texts: Sequence[str], points: Sequence[Point],
                prefixes: Sequence[str], desc: str) -> dict[Point, torch.Tensor]:
    """Last-token states after each assistant prefix, averaged over the prefixes."""
    acc: dict[Point, torch.Tensor] = {}
    for k, prefix in enumerate(prefixes):
        got = grab(texts, points, f"{desc} {k + 1}/{len(prefixes)}", assistant_prefix=prefix)
        for p in points:
            acc[p] = acc[p] + got[p] if p in acc else got[p].clone()
    return {p: v / len(prefixes) for p, v in acc.items()}


def refusal_candidates(grab: Grab, states: dict[int, torch.Tensor], train: Sequence[Example],
                       layers: list[int], cfg: Any) -> dict[str, dict[int, torch.Tensor]]:
    """``refusal_diffmean`` (harmful vs harmless prompts) and ``refusal_contrastive`` (the
    same harmful prompts opened by refusal vs compliance starts) at ``layers``."""
    labels, langs = [e.label for e in train], [e.lang for e in train]
    diffmean = {i: balanced_direction(states[i], labels, langs, cfg.remove_language)
                for i in layers}
    src = by_lang(train, HARMFUL, cfg.contrastive_per_language, cfg.seed)
    points = [("resid_post", i) for i in layers]
    texts = [e.text for e in src]
    ref = prefix_mean(grab, texts, points, cfg.refusal_prefixes, "refusal starts")
    comp = prefix_mean(grab, texts, points, cfg.compliance_prefixes, "compliance starts")
    c_langs = [e.lang for e in src]
    contrastive = {}
    for p in points:
        both = torch.cat([ref[p], comp[p]])
        labs = [1] * len(src) + [0] * len(src)
        d = balanced_direction(both, labs, c_langs + c_langs, cfg.remove_language)
        # The raw contrast also carries the identity of the differing prefix tokens and is
        # ~10x longer; rescale to the diff-of-means norm so one strength grid fits both.
        contrastive[p[1]] = d / d.norm() * diffmean[p[1]].norm()
    return {"refusal_diffmean": diffmean, "refusal_contrastive": contrastive}


def clamp_targets(states: dict[int, torch.Tensor], labels: list[int],
                  cands: dict[str, dict[int, torch.Tensor]]) -> dict[str, dict[int, float]]:
    """Per direction and block: the mean component of harmful prompts (``clamp``'s target)."""
    harmful = torch.tensor(labels) == HARMFUL
    return {name: {i: float((states[i][harmful] @ (d / d.norm())).mean()) for i, d in dirs.items()}
            for name, dirs in cands.items()}
