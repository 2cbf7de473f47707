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
from typing import Any, Callable, Sequence

import torch
from torch import nn

from tqdm.auto import tqdm

from ..errors import FitConfigError
from ..generate import generate
from ..model.placement import input_device
from ..prompts import format_prompts
from ..steering.api import steer
from ..tensors import position_ids
from ..types import HARMFUL, HARMLESS
from ..vector.file import SteeringVector
from .data import Example
from .sampling import by_lang

Judge = Callable[[str, str], bool]  # (reply, language) -> refused


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


def thresholds_by_language(scores: torch.Tensor, labels: torch.Tensor, langs: Sequence[str],
                           languages: Sequence[str], fpr: float) -> dict[str, float]:
    """For each of ``languages`` that has harmless rows: the threshold at ``fpr`` on its
    harmless scores (``labels``/``langs`` per row of ``scores``)."""
    out = {}
    harmless = labels == HARMLESS
    for lang in languages:
        neg = scores[harmless & torch.tensor([x == lang for x in langs], dtype=torch.bool)]
        if len(neg):
            out[lang] = threshold_for_fpr(neg, fpr)
    return out


def rate_above(scores: torch.Tensor, threshold: float) -> float:
    return float((scores.double() > threshold).double().mean()) if len(scores) else float("nan")


@torch.no_grad()
def next_token_logprobs(model: nn.Module, tokenizer: Any, prompts: Sequence[str],
                        batch_size: int = 16) -> torch.Tensor:
    """Log-probabilities ``[N, V]`` of the first reply token (float32)."""
    texts = format_prompts(tokenizer, list(prompts))
    rows = []
    device = input_device(model)
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


def strength_trials(model: nn.Module, tok: Any, vector: SteeringVector, val: Sequence[Example],
                    cfg: Any, judge: Judge, layers: list[int]
                    ) -> tuple[list[StrengthTrial], dict[str, Any]]:
    """Greedy replies unsteered and, for every candidate direction and strength, steered
    in ``mode='always'``: refusal rates, first-token KL and agreement on harmless prompts."""
    harmful = by_lang(val, HARMFUL, cfg.calib_harmful_per_language, cfg.seed)
    harmless = by_lang(val, HARMLESS, cfg.calib_harmless_per_language, cfg.seed)
    h_txt, s_txt = [e.text for e in harmful], [e.text for e in harmless]
    gen = lambda prompts: generate(model, tok, prompts, cfg.max_new_tokens, cfg.batch_size)  # noqa: E731
    base_h, base_s = gen(h_txt), gen(s_txt)
    base_lp = next_token_logprobs(model, tok, s_txt, cfg.batch_size)
    refuse = lambda outs, exs: sum(judge(o, e.lang) for o, e in zip(outs, exs)) / max(1, len(exs))  # noqa: E731
    baseline = {"harmful_refusal": refuse(base_h, harmful),
                "harmless_refusal": refuse(base_s, harmless),
                "harmful_prompts": len(harmful), "harmless_prompts": len(harmless),
                "samples": base_h[:2]}
    trials = []
    grid = [(d, s) for d in ("refusal_diffmean", "refusal_contrastive") for s in cfg.strengths]
    bar = tqdm(grid, desc="fit: strength calibration", disable=not cfg.progress)
    for dname, strength in bar:
        with steer(model, vector, strength=strength, mode="always", direction=dname,
                   layers=layers):
            out_h, out_s = gen(h_txt), gen(s_txt)
            lp = next_token_logprobs(model, tok, s_txt, cfg.batch_size)
        agree = sum(a.strip() == b.strip() for a, b in zip(out_s, base_s)) / max(1, len(out_s))
        trials.append(StrengthTrial(dname, float(strength), refuse(out_h, harmful),
                                    refuse(out_s, harmless), float(kl(base_lp, lp).mean()),
                                    agree, out_h[:2]))
    return trials, baseline


def gated_check(model: nn.Module, tok: Any, vector: SteeringVector, val: Sequence[Example],
                cfg: Any, judge: Judge) -> dict[str, Any]:
    """The chosen setting in gate mode, as deployed: refusal on harmful, closeness on
    harmless (greedy agreement with the unsteered replies, first-token KL)."""
    harmful = by_lang(val, HARMFUL, cfg.calib_harmful_per_language, cfg.seed)
    harmless = by_lang(val, HARMLESS, cfg.calib_harmless_per_language * 2, cfg.seed + 1)
    s_txt = [e.text for e in harmless]
    base_s = generate(model, tok, s_txt, cfg.max_new_tokens, cfg.batch_size)
    base_lp = next_token_logprobs(model, tok, s_txt, cfg.batch_size)
    with steer(model, vector, mode="gate"):
        out_h = generate(model, tok, [e.text for e in harmful], cfg.max_new_tokens,
                         cfg.batch_size)
        out_s = generate(model, tok, s_txt, cfg.max_new_tokens, cfg.batch_size)
        lp = next_token_logprobs(model, tok, s_txt, cfg.batch_size)
    return {
        "harmful_refusal": sum(judge(o, e.lang) for o, e in zip(out_h, harmful)) / len(harmful),
        "harmless_refusal": sum(judge(o, e.lang) for o, e in zip(out_s, harmless)) / len(harmless),
        "harmless_agreement": sum(a == b for a, b in zip(out_s, base_s)) / len(harmless),
        "harmless_kl": float(kl(base_lp, lp).mean()),
        "harmful_prompts": len(harmful), "harmless_prompts": len(harmless),
        "samples": {"harmful": out_h[:3], "harmless": out_s[:2]},
    }
