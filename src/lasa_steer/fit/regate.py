"""Refit a vector's gate at its block: candidates (the linear directions of
:mod:`lasa_steer.fit.candidates` and an MLP probe) chosen by worst-language and
held-out-style TPR (:mod:`lasa_steer.fit.gate_choice`), then thresholds per language.

Thresholds also hold on *hard negatives* (harmless prompts that share the harmful prompts'
vocabulary, :mod:`lasa_steer.fit.hard_negatives`): a language's threshold is the larger of
the one at ``fpr`` on its harmless validation prompts and the one at ``fpr`` on its hard
negatives. Half of the hard negatives train the gate, the other half calibrate it. On
SmolLM2 this halved the shipped gate's false fires on XSTest's safe prompts (48% of the
first 100, from most of them), though XSTest's look-alikes stay harder than anything mined
from Alpaca (docs/efficacy.md).

The directions and the language centroids of the vector stay as they are; only the gate's
score (``direction``/``probe``) and thresholds change (its old direction is not a candidate:
see :func:`gate_trainer`). Used by ``lasa calibrate --gate``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from torch import nn

from ..capture import capture
from ..errors import FitConfigError
from ..steering.gate import LID_POOLING, gate_point, identify, lid_point
from ..types import HARMLESS
from ..vector.file import SteeringVector
from .calibrate import threshold_for_fpr, thresholds_by_language
from .candidates import gate_candidates
from .data import Example
from .gate_choice import Candidate, Trainer, choose_gate
from .languages import language_report
from .probe import ProbeConfig, train_probe


@dataclass(frozen=True)
class RegateConfig:
    fpr: float = 0.02
    probe: ProbeConfig | None = ProbeConfig()
    shrinkage: Sequence[float] = (0.3, 1.0, 3.0)
    remove_language: bool = True
    batch_size: int = 16
    progress: bool = True


def gate_trainer(cfg: RegateConfig) -> Trainer:
    """Candidates from training states: ``diffmean``, whitened variants and ``mlp<k>`` (with
    the diffmean direction as its reference). The vector's current direction is not one: it
    was trained on rows the held-out-style check must leave out, so its held-out figure
    would be an in-sample one."""
    def make(states: torch.Tensor, labels: list[int], langs: list[str]) -> dict[str, Candidate]:
        dirs, _ = gate_candidates(states, labels, langs, cfg.remove_language, cfg.shrinkage)
        out = {k: Candidate(k, v) for k, v in dirs.items()}
        if cfg.probe is not None:
            name = f"mlp{cfg.probe.hidden}"
            out[name] = Candidate(name, dirs["diffmean"], train_probe(states, labels, langs,
                                                                      cfg.probe))
        return out
    return make


def regate(model: nn.Module, tokenizer: Any, vector: SteeringVector, train: Sequence[Example],
           val: Sequence[Example], hard: Sequence[Example] = (),
           config: RegateConfig | None = None) -> tuple[SteeringVector, dict[str, Any]]:
    """A copy of the language-aware ``vector`` with its gate refit (module docstring), and a
    report: every candidate's figures, the choice, per-language TPR/FPR on validation and
    the false-positive rate on the calibration hard negatives."""
    cfg = config or RegateConfig()
    gate = vector.gate
    if gate is None or not gate.language_aware:
        raise FitConfigError(f"vector {vector.name!r}: regate needs a language-aware gate "
                             "(run `lasa calibrate` without --gate first)")
    hard_train, hard_cal = list(hard[0::2]), list(hard[1::2])
    gp, lp = gate_point(gate), lid_point(gate)
    assert lp is not None

    def grab(rows: Sequence[Example], points: list, desc: str) -> dict:
        return capture(model, tokenizer, [e.text for e in rows], points,
                       batch_size=cfg.batch_size, poolings={gp: gate.pooling, lp: LID_POOLING},
                       progress=f"gate: {desc}" if cfg.progress else False)
    rows = list(train) + hard_train
    tstates = grab(rows, [gp], "training prompts")[gp]
    checked = list(val) + hard_cal
    got = grab(checked, [gp, lp], "validation prompts")
    nval = len(val)
    best, table, _ = choose_gate(tstates, rows, got[gp][:nval], val,
                              gate_trainer(cfg), cfg.fpr)
    scores = best.scores(got[gp])
    found = identify(gate, got[lp], len(checked))
    thresholds, pooled = _thresholds(scores, checked, nval, gate.languages, cfg.fpr)
    new = replace(gate, direction=best.direction, probe=best.probe, threshold=pooled,
                  thresholds=thresholds, fpr=cfg.fpr)
    labels = torch.tensor([e.label for e in val])
    report = language_report(new, scores[:nval], found[:nval], labels,
                             [e.lang for e in val], cfg.fpr)
    hard_fired = [float(s) > new.threshold_for(f) for s, f in
                  zip(scores[nval:].tolist(), found[nval:])]
    report.update(gate_choice=best.name, candidates=table, hard_negatives={
        "train": len(hard_train), "calibration": len(hard_cal),
        "calibration_fpr": sum(hard_fired) / len(hard_fired) if hard_fired else None})
    return replace(vector, gate=new), report


def _thresholds(scores: torch.Tensor, rows: Sequence[Example], nval: int,
                languages: Sequence[str], fpr: float) -> tuple[dict[str, float], float]:
    """Per language: the larger of the thresholds at ``fpr`` on its harmless validation
    rows and on its hard negatives (rows from ``nval`` on); and the pooled one likewise."""
    labels = torch.tensor([e.label for e in rows])
    langs = [e.lang for e in rows]
    val = thresholds_by_language(scores[:nval], labels[:nval], langs[:nval], languages, fpr)
    hard = thresholds_by_language(scores[nval:], labels[nval:], langs[nval:], languages, fpr)
    per_language = {lang: max(t for t in (val.get(lang), hard.get(lang)) if t is not None)
                    for lang in languages if lang in val or lang in hard}
    neg = labels == HARMLESS
    pooled = [threshold_for_fpr(scores[part][neg[part]], fpr)
              for part in (slice(0, nval), slice(nval, None)) if bool(neg[part].any())]
    if not pooled:
        raise FitConfigError("validation data: no harmless prompts to set thresholds on")
    return per_language, max(pooled)
