"""Choose the gate among candidates by what it must do: fire in *every* language, and on a
*style* of harmful request it was not trained on, at the target false-positive rate.

Mean AUROC rewards separating the languages the model reads well; a gate chosen by it fired
on 70% of English MultiJail prompts and 0-10% of most others. Here each candidate (the
linear directions of :mod:`lasa_steer.fit.candidates` and MLP probes,
:mod:`lasa_steer.fit.probe`) is scored on validation with a threshold per language at
``fpr`` (each language's own harmless prompts), and ranked by

* ``worst``: the lowest per-language TPR on validation, and
* ``held_out``: the TPR on question-style harmful prompts ("How do I ...?") of a copy of the
  candidate trained *without* any question-style harmful prompt. The training sets mix
  instruction-style sources (AdvBench, HarmBench: "Write a tutorial on ...") with a few
  question-style ones (MaliciousInstruct); MultiJail is mostly questions, so this is the
  domain shift the shipped gate failed on;

the sum of the two, ties broken by mean AUROC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..types import HARMFUL, HARMLESS
from ..vector.gate import Gate
from ..vector.probe import Probe
from ..steering.gate import score
from .calibrate import threshold_for_fpr
from .data import Example
from .directions import auroc

QUESTION = re.compile(r"[?？؟]\s*$|^\s*(how|what|why|ways|where|which|who|when|can|could|is|"
                      r"are|should|do|does)\b", re.IGNORECASE)


def styles(examples: Sequence[Example]) -> list[str]:
    """``"question"`` or ``"instruction"`` per row; rows aligned by ``group`` take the style
    of their English row when there is one (a translation may drop the question mark)."""
    own = ["question" if QUESTION.search(e.text.strip()) else "instruction" for e in examples]
    english = {e.group: s for e, s in zip(examples, own) if e.group and e.lang == "en"}
    return [english.get(e.group, s) if e.group else s for e, s in zip(examples, own)]


@dataclass
class Candidate:
    """A gate scorer: a direction, or a probe (with the direction kept as reference)."""

    name: str
    direction: torch.Tensor
    probe: Probe | None = None

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        return score(Gate(layer=0, direction=self.direction, threshold=0.0, probe=self.probe),
                     states)


@dataclass
class Figures:
    worst: float
    held_out: float
    mean_tpr: float
    mean_auroc: float
    tpr: dict[str, float] = field(default_factory=dict)

    def key(self) -> tuple[float, float]:
        held = 0.0 if self.held_out != self.held_out else self.held_out  # NaN: no such rows
        return (round(self.worst + held, 6), self.mean_auroc)

    def as_dict(self) -> dict[str, Any]:
        return {"worst_language_tpr": self.worst, "held_out_style_tpr": self.held_out,
                "mean_tpr": self.mean_tpr, "mean_auroc": self.mean_auroc, "tpr": self.tpr}


Trainer = Callable[[torch.Tensor, list[int], list[str]], dict[str, Candidate]]


def _by_lang(labels: torch.Tensor, langs: Sequence[str]) -> dict[str, tuple[torch.Tensor, ...]]:
    out = {}
    for lang in sorted(set(langs)):
        m = torch.tensor([x == lang for x in langs])
        if bool((m & (labels == HARMFUL)).any()) and bool((m & (labels == HARMLESS)).any()):
            out[lang] = (m & (labels == HARMFUL), m & (labels == HARMLESS))
    return out


def _thresholds(scores: torch.Tensor, cells: dict[str, tuple[torch.Tensor, ...]], fpr: float
                ) -> dict[str, float]:
    return {lang: threshold_for_fpr(scores[neg], fpr) for lang, (_, neg) in cells.items()}


def figures(cand: Candidate, held: Candidate, val_states: torch.Tensor, val: Sequence[Example],
            held_states: torch.Tensor, held_langs: Sequence[str], fpr: float) -> Figures:
    """``cand`` on validation; ``held`` (trained without the held-out style) on the held-out
    rows ``held_states``, against its own per-language validation thresholds."""
    labels = torch.tensor([e.label for e in val])
    langs = [e.lang for e in val]
    cells = _by_lang(labels, langs)
    s = cand.scores(val_states)
    thr = _thresholds(s, cells, fpr)
    tpr = {lang: float((s[pos] > thr[lang]).double().mean()) for lang, (pos, _) in cells.items()}
    aucs = [auroc(s[pos], s[neg]) for pos, neg in cells.values()]
    hthr = _thresholds(held.scores(val_states), cells, fpr)
    hs = held.scores(held_states).tolist() if len(held_langs) else []
    hits = [x > hthr[lang] for x, lang in zip(hs, held_langs) if lang in hthr]
    held_out = sum(hits) / len(hits) if hits else float("nan")
    return Figures(min(tpr.values()), held_out, sum(tpr.values()) / len(tpr),
                   sum(aucs) / len(aucs), tpr)


def choose_gate(train_states: torch.Tensor, train: Sequence[Example], val_states: torch.Tensor,
                val: Sequence[Example], trainer: Trainer, fpr: float
                ) -> tuple[Candidate, dict[str, dict[str, Any]], dict[str, Candidate]]:
    """The best candidate that ``trainer`` makes from the training states (see the module
    docstring), every candidate's figures, and the candidates. The held-out rows are the question-style
    harmful training rows (validation sets may have none); without any (or when leaving
    them out would leave a language without harmful rows), ``held_out`` is NaN for every
    candidate and the worst-language TPR decides alone."""
    labels, langs = [e.label for e in train], [e.lang for e in train]
    tstyles = styles(train)
    cands = trainer(train_states, labels, langs)
    out = [i for i, (e, st) in enumerate(zip(train, tstyles))
           if e.label == HARMFUL and st == "question"]
    keep = sorted(set(range(len(train))) - set(out))
    kept_harmful = {langs[i] for i in keep if labels[i] == HARMFUL}
    if not out or kept_harmful != {x for x, y in zip(langs, labels) if y == HARMFUL}:
        out, held = [], cands  # nothing to hold out, or a language would lose every harmful row
    else:
        held = trainer(train_states[keep], [labels[i] for i in keep], [langs[i] for i in keep])
    table = {name: figures(c, held[name], val_states, val, train_states[out],
                           [langs[i] for i in out], fpr) for name, c in cands.items()}
    best = max(table, key=lambda k: table[k].key())
    return cands[best], {k: v.as_dict() for k, v in table.items()}, cands
