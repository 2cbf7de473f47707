"""Language-aware gate calibration: centroids to identify a prompt's language, and a
threshold per language.

Why: the gate's score scale shifts by language (a model reads its weaker languages less
sharply), so one threshold set on all harmless validation prompts pooled sits above most
harmful prompts of those languages. Here each language of the fit gets the threshold that
gives the target false-positive rate on *its own* harmless validation prompts, and a prompt's
language is read from the model itself: the nearest centroid of the mean state over the
prompt at an early block (``lid_layer``; states there still cluster by language, unlike at
the bottleneck, where they are meant not to). A language with a centroid but no harmless
validation prompts keeps the pooled threshold; a prompt in a language without a centroid is
identified as its nearest fit language and takes that threshold (no distance check yet).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import nn

from ..capture import capture, gate_decisions
from ..model.layers import find_layers
from ..types import HARMFUL, HARMLESS
from ..vector.file import SteeringVector
from .calibrate import thresholds_by_language
from .data import Example

LID_DEPTH = 0.27  # of the depth: 8 of SmolLM2's 30 blocks identified 98.6% of 14 languages


def lid_layer_for(num_layers: int, gate_layer: int) -> int:
    """The default language-identification block: about a quarter of the depth."""
    return max(0, min(gate_layer - 1, round(LID_DEPTH * num_layers)))


def calibrate_languages(model: nn.Module, tokenizer: Any, vector: SteeringVector,
                        train: Sequence[Example], val: Sequence[Example],
                        fpr: float = 0.02, lid_layer: int | None = None,
                        per_language: int = 40, batch_size: int = 16, seed: int = 0,
                        progress: bool = True) -> tuple[SteeringVector, dict[str, Any]]:
    """A copy of ``vector`` whose gate has centroids (from ``per_language`` training
    prompts of each language) and per-language thresholds at ``fpr`` (from ``val``), and a
    report: language-identification accuracy and per-language TPR/FPR on ``val``."""
    gate = vector.gate
    if gate is None:
        raise ValueError(f"vector {vector.name!r} has no gate to calibrate")
    lid = lid_layer if lid_layer is not None else lid_layer_for(
        find_layers(model).num_layers, gate.layer)
    rng = random.Random(seed)
    langs = sorted({e.lang for e in train})
    rows = [e for lang in langs for e in rng.sample([x for x in train if x.lang == lang],
                                                    min(per_language, sum(
                                                        x.lang == lang for x in train)))]
    point = ("resid_post", lid)
    states = capture(model, tokenizer, [e.text for e in rows], [point], pooling="mean",
                     batch_size=batch_size, progress="languages: centroids" if progress
                     else False)[point]
    centroids = torch.stack([states[[i for i, e in enumerate(rows) if e.lang == lang]].mean(0)
                             for lang in langs])
    probe = replace(gate, languages=tuple(langs), centroids=centroids, lid_layer=lid,
                    thresholds={}, fpr=fpr)
    d = gate_decisions(model, tokenizer, replace(vector, gate=probe), [e.text for e in val],
                       batch_size, progress="languages: validation" if progress else False)
    labels = torch.tensor([e.label for e in val])
    vlangs = [e.lang for e in val]
    thresholds = thresholds_by_language(d.scores, labels, vlangs, langs, fpr)
    calibrated = replace(probe, thresholds=thresholds)
    out = replace(vector, gate=calibrated)
    return out, language_report(calibrated, d.scores, d.langs, labels, vlangs, fpr)


def language_report(gate: Any, scores: torch.Tensor, found: Sequence[str | None], labels: torch.Tensor,
            langs: Sequence[str], fpr: float) -> dict[str, Any]:
    fired = torch.tensor([s > gate.threshold_for(f) for s, f in zip(scores.tolist(), found)])
    per: dict[str, dict[str, float]] = {}
    for lang in sorted(set(langs)):
        m = torch.tensor([x == lang for x in langs])
        pos, neg = m & (labels == HARMFUL), m & (labels == HARMLESS)
        per[lang] = {"tpr": float(fired[pos].double().mean()) if pos.any() else float("nan"),
                     "fpr": float(fired[neg].double().mean()) if neg.any() else float("nan"),
                     "lid_accuracy": sum(f == lang for f, x in zip(found, langs) if x == lang)
                     / max(1, int(m.sum())),
                     "threshold": gate.thresholds.get(lang, gate.threshold)}
    accuracy = sum(f == x for f, x in zip(found, langs)) / max(1, len(langs))
    return {"fpr_target": fpr, "lid_layer": gate.lid_layer, "lid_accuracy": accuracy,
            "global_threshold": gate.threshold, "per_language": per}
