"""``fit``: from paired multilingual prompts to a calibrated vector file, in one call.

Pipeline (each step's figures go into the report and the vector's metadata):

1. capture last-prompt-token states (chat template applied), batched: a seeded search
   subset (``silhouette_groups`` aligned harmful rows in every language, as many harmless
   rows per language) at every block, the other rows only up to the deepest block needed;
2. choose the bottleneck (:mod:`lasa_steer.fit.bottleneck`) from the search subset: meaning vs
   language silhouettes of the aligned harmful rows, leave-one-language-out transfer AUROC;
3. gate candidates there: per-language unit difference of means, averaged, language-centroid
   subspace projected out (:func:`lasa_steer.fit.directions.harm_direction`), its
   Fisher-whitened variants (:func:`lasa_steer.fit.directions.whitened_direction`) and a small
   MLP probe (:mod:`lasa_steer.fit.probe`); the one with the best worst-language plus
   held-out-style validation TPR at the target FPR is kept (:mod:`lasa_steer.fit.gate_fit`);
4. refusal direction at the blocks after the bottleneck, two candidates: the difference of
   means at the post-instruction position, and contrastive completions (the same harmful
   prompt followed by a refusal start vs a compliance start);
5. calibration on validation data: gate threshold for a target FPR on harmless prompts; the
   candidate and strength by generating replies (refusal rate on harmful prompts, first-token
   KL and greedy agreement on harmless ones); then (5c) the language-aware gate: language
   centroids at an early block and a threshold per language at the same FPR, plus
   identification-only centroids for ``identify_only``'s languages (harmless parallel text;
   they take the pooled threshold) (:mod:`lasa_steer.fit.languages`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..capture import capture
from ..errors import FitConfigError
from ..eval.judges.pattern import is_refusal
from ..model.identity import ModelIdentity
from ..model.layers import LayerMap, find_layers
from ..types import HARMFUL, HARMLESS, Point
from ..vector.file import SteeringVector
from .bottleneck import DEFAULT_BAND, LayerReport, bottleneck_of
from .calibrate import choose_trial, gated_check, strength_trials
from .clock import StepClock
from .languages import calibrate_languages, check_identification
from .candidates import clamp_targets, refusal_candidates, refusal_layers_for
from .gate_fit import GateFit, calibrate_gate
from .probe import ProbeConfig
from .regate import RegateConfig, gate_trainer
from .data import Example
from .directions import auroc_row, harm_direction
from .precision import capture_model
from .report import (FitReport, gate_section, provenance, refusal_section, summary,
                     write_report)
from .sampling import by_lang, check_labels, label_counts, search_rows

log = logging.getLogger(__name__)
__all__ = ["FitConfig", "FitResult", "capture_model", "fit", "write_report"]


@dataclass
class FitConfig:
    """Knobs of :func:`fit` (defaults are the ones the shipped vector used)."""

    layer: int | None = None                 # bottleneck block; None: choose it
    band: tuple[float, float] = DEFAULT_BAND
    refusal_layers: Sequence[int] | None = None  # None: ``refusal_span`` blocks after it
    refusal_span: float = 0.1                # blocks after the gate that get directions
    steer_layers: Sequence[int] | None = None  # default steering blocks; None: first one
    fpr: float = 0.02
    strengths: Sequence[float] = (3.0, 4.0, 5.0)
    refusal_prefixes: Sequence[str] = ("I cannot", "I'm sorry, but I can't",
                                       "I apologize, but I cannot")
    compliance_prefixes: Sequence[str] = ("Sure, here", "Of course! Here", "Certainly, here is")
    contrastive_per_language: int = 8
    silhouette_groups: int = 80              # aligned harmful rows used for silhouettes
    calib_harmful_per_language: int = 2
    calib_harmless_per_language: int = 1
    max_new_tokens: int = 16
    max_harmless_kl: float = 1.0             # nats, first reply token, mode=always
    remove_language: bool = True
    # Captures (not generation or the gate threshold) may run on a lower-precision copy of
    # the model: "auto" = a bfloat16 copy for a float32 model on a CPU with AMX (~3x faster
    # prefill on SmolLM2; states are still pooled in float32), "model" = the model itself,
    # or a dtype name. The threshold is always calibrated on the model as deployed.
    capture_dtype: str = "auto"
    comparison_val_per_language: int = 20    # val rows per label for the first/last table
    gate_shrinkage: Sequence[float] = (0.3, 1.0, 3.0)  # whitened gate candidates; () = off
    gate_probe: int = 64                     # hidden width of the MLP probe candidate; 0 = off
    # A language-aware gate (fit.languages): centroids from this many training prompts per
    # language and a threshold per language at ``fpr``; False keeps one pooled threshold.
    language_gate: bool = True
    lid_per_language: int = 40
    batch_size: int = 16
    seed: int = 0
    progress: bool = True

    def regate(self) -> RegateConfig:
        """The gate-candidate settings (:mod:`lasa_steer.fit.regate`)."""
        probe = ProbeConfig(hidden=self.gate_probe, seed=self.seed) if self.gate_probe else None
        return RegateConfig(fpr=self.fpr, probe=probe, shrinkage=tuple(self.gate_shrinkage),
                            remove_language=self.remove_language)


@dataclass
class FitResult:
    vector: SteeringVector
    report: dict[str, Any]
    layer_report: LayerReport | None = None


class Captures:
    """Batched captures of one fit: on the capture copy of the model (see
    ``FitConfig.capture_dtype``) or on the model as deployed (``deployed=True``)."""

    def __init__(self, model: nn.Module, tokenizer: Any, cfg: FitConfig):
        self.model, self.tok, self.cfg = model, tokenizer, cfg
        self.lm = find_layers(model)
        self.copy = capture_model(model, cfg.capture_dtype)
        self.copy_lm: LayerMap = find_layers(self.copy)
        self.dtype = str(next(self.copy.parameters()).dtype).removeprefix("torch.")

    def __call__(self, texts: Sequence[str], points: Sequence[Point], desc: str,
                 deployed: bool = False, **kw: Any) -> dict[Any, torch.Tensor]:
        model, lm = (self.model, self.lm) if deployed else (self.copy, self.copy_lm)
        return capture(model, self.tok, texts, points, batch_size=self.cfg.batch_size,
                       progress=f"fit: {desc}" if self.cfg.progress else False,
                       layer_map=lm, **kw)

    def release(self) -> None:
        """Drop the capture copy (generation runs on the model itself)."""
        self.copy, self.copy_lm = self.model, self.lm


def fit(model: nn.Module, tokenizer: Any, train: Sequence[Example], val: Sequence[Example],
        config: FitConfig | None = None, judge: Callable[[str, str], bool] | None = None,
        data_info: dict[str, Any] | None = None,
        identify_only: Mapping[str, Sequence[str]] | None = None,
        identify_check: Mapping[str, Sequence[str]] | None = None) -> FitResult:
    """Fit a gated refusal vector for ``model`` (see the module docstring). Longer than 60
    lines on purpose: it is the pipeline's table of contents, one named step per line in
    the order of the module docstring; splitting it would hide that order."""
    cfg = config or FitConfig()
    torch.manual_seed(cfg.seed)
    check_labels(train, "train")
    check_labels(val, "validation")
    clock = StepClock(log)
    grab = Captures(model, tokenizer, cfg)
    n = grab.lm.num_layers
    if cfg.layer is not None and not 0 <= cfg.layer < n - 1:
        raise FitConfigError(f"layer={cfg.layer}: must be in 0..{n - 2} (blocks after it are "
                             "steered)")
    ident = ModelIdentity.of(model, grab.lm)
    search = search_rows(train, cfg.silhouette_groups, cfg.seed)
    sub = [train[i] for i in search]
    sub_states = _search_states(grab, sub, n)                                      # 1a
    bottleneck, layer_report = _choose_layer(sub_states, sub, cfg, n, ident.name)    # 2
    clock.mark("layer search (every block, search subset)")
    rlayers = _refusal_layers(cfg, bottleneck, n)
    states = _train_states(grab, train, search, sub_states, sorted({bottleneck, *rlayers}))
    labels, langs = [e.label for e in train], [e.lang for e in train]
    hd = harm_direction(states[bottleneck], labels, langs,                         # 3
                        remove_language=cfg.remove_language)
    cands = refusal_candidates(grab, states, train, rlayers, cfg)                  # 4
    targets = clamp_targets(states, labels, cands)
    clock.mark("train states, harm and refusal directions")
    vstates = grab([e.text for e in val], [("resid_post", bottleneck)],           # 5a
                   "validation prompts", deployed=True)[("resid_post", bottleneck)]
    gate_fit = calibrate_gate(states[bottleneck], train, vstates, val, bottleneck,
                              gate_trainer(cfg.regate()), cfg.fpr)
    clock.mark("gate candidates and threshold (validation)")
    table = _compare_layers(grab, val, sub, sub_states, bottleneck, gate_fit, cfg)
    clock.mark("layer comparison (report)")
    grab.release()
    steer_layers = list(cfg.steer_layers) if cfg.steer_layers is not None else rlayers[:1]
    provisional = SteeringVector(model=ident, directions=cands, gate=gate_fit.gate,   # 5b
                                 default_direction="refusal_diffmean", clamp_targets=targets)
    judge = judge or is_refusal
    trials, baseline = strength_trials(model, tokenizer, provisional, val, cfg, judge,
                                       steer_layers)
    best = choose_trial(trials, cfg.max_harmless_kl)
    clock.mark("strength trials (generation)")
    directions = {"refusal": {i: cands[best.direction][i].clone() for i in steer_layers},
                  **cands}
    targets["refusal"] = {i: targets[best.direction][i] for i in steer_layers}
    vector = SteeringVector(model=ident, directions=directions, gate=gate_fit.gate,
                            default_direction="refusal", default_action="add",
                            default_strength=best.strength, clamp_targets=targets)
    languages = None
    if cfg.language_gate:                                                          # 5c
        vector, languages = calibrate_languages(model, tokenizer, vector, train, val, cfg.fpr,
                                                per_language=cfg.lid_per_language,
                                                batch_size=cfg.batch_size, seed=cfg.seed,
                                                progress=cfg.progress,
                                                identify_only=identify_only)
        languages["identification_check"] = check_identification(
            model, tokenizer, vector.gate, identify_check or {}, cfg.batch_size, cfg.progress)
        clock.mark("language gate")
    gated = gated_check(model, tokenizer, vector, val, cfg, judge)
    clock.mark("gated check (generation)")
    counts = label_counts(train, val)
    report = FitReport(
        model=ident.name, num_layers=n, hidden_size=grab.lm.hidden_size, bottleneck=bottleneck,
        bottleneck_rule=layer_report.rule if layer_report else "given by the user",
        gate=gate_section(gate_fit, hd, cfg.fpr), auroc=table,
        refusal=refusal_section(steer_layers, rlayers, best, cfg, baseline, trials, gated),
        counts=counts,
        capture={"dtype": grab.dtype, "search_rows": len(search),
                 "rest_rows": len(train) - len(search),
                 "rest_blocks": sorted({bottleneck, *rlayers}),
                 "comparison_val_rows": len(_comparison_rows(val, cfg))},
        config={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        layers=layer_report.to_json() if layer_report else None).as_dict()
    vector.provenance = provenance(gate_fit.method, best.direction, steer_layers, rlayers,
                                   langs, counts, cfg.seed, data_info)
    report["languages"] = languages
    report["step_wall_time_s"] = clock.steps
    vector.extra = {**summary(report), **({"language_gate": languages} if languages else {})}
    return FitResult(vector, report, layer_report)


# ---------------------------------------------------------------------- the steps
def _search_states(grab: Captures, sub: Sequence[Example], n: int) -> dict[int, torch.Tensor]:
    """1a. The search subset at every block."""
    got = grab([e.text for e in sub], [("resid_post", i) for i in range(n)],
               "search prompts (all blocks)")
    return {p[1]: v for p, v in got.items()}


def _choose_layer(sub_states: dict[int, torch.Tensor], sub: Sequence[Example], cfg: FitConfig,
                  n: int, name: str) -> tuple[int, LayerReport | None]:
    """2. The bottleneck: given (checked) or chosen from the search subset."""
    if cfg.layer is not None:
        log.info("bottleneck block %d of %d", cfg.layer, n)
        return cfg.layer, None
    report = bottleneck_of(sub_states, sub, cfg.band, cfg.silhouette_groups, cfg.seed, name)
    log.info("bottleneck block %d of %d", report.chosen, n)
    return report.chosen, report


def _refusal_layers(cfg: FitConfig, bottleneck: int, n: int) -> list[int]:
    rlayers = list(cfg.refusal_layers) if cfg.refusal_layers is not None else \
        refusal_layers_for(bottleneck, n, cfg.refusal_span)
    if not rlayers or min(rlayers) <= bottleneck:
        raise FitConfigError(f"refusal_layers={rlayers}: must all come after the bottleneck "
                             f"{bottleneck}")
    return rlayers


def _train_states(grab: Captures, train: Sequence[Example], search: list[int],
                  sub_states: dict[int, torch.Tensor], needed: list[int]
                  ) -> dict[int, torch.Tensor]:
    """1b. Every train row at the gate and refusal blocks (the forward pass stops there);
    the search subset is reused."""
    in_search = set(search)
    rest = [i for i in range(len(train)) if i not in in_search]
    got = grab([train[i].text for i in rest], [("resid_post", i) for i in needed],
               "train prompts") if rest else {}
    states: dict[int, torch.Tensor] = {}
    for layer in needed:
        full = torch.empty(len(train), grab.lm.hidden_size)
        full[torch.tensor(search, dtype=torch.long)] = sub_states[layer]
        if rest:
            full[torch.tensor(rest, dtype=torch.long)] = got[("resid_post", layer)]
        states[layer] = full
    return states


def _comparison_rows(val: Sequence[Example], cfg: FitConfig) -> list[Example]:
    return by_lang(val, HARMFUL, cfg.comparison_val_per_language, cfg.seed) + \
        by_lang(val, HARMLESS, cfg.comparison_val_per_language, cfg.seed)


def _compare_layers(grab: Captures, val: Sequence[Example], sub: Sequence[Example],
                    sub_states: dict[int, torch.Tensor], bottleneck: int, gate_fit: GateFit,
                    cfg: FitConfig) -> dict[str, dict[str, float]]:
    """Per-language AUROC: the gate itself, and the first/chosen/last blocks compared on
    directions fit the same way from the search subset (a val subset at all three)."""
    cmp_val = _comparison_rows(val, cfg)
    which = {"first": 0, "chosen": bottleneck, "last": grab.lm.num_layers - 1}
    got = grab([e.text for e in cmp_val], sorted({("resid_post", i) for i in which.values()},
                                                  key=lambda p: p[1]), "comparison prompts")
    table: dict[str, dict[str, float]] = {"gate": {"layer": bottleneck, **gate_fit.auroc}}
    labels = torch.tensor([e.label for e in cmp_val])
    langs = [e.lang for e in cmp_val]
    for tag, layer in which.items():
        d = harm_direction(sub_states[layer], [e.label for e in sub], [e.lang for e in sub],
                           remove_language=cfg.remove_language).direction
        table[tag] = {"layer": layer, **auroc_row(got[("resid_post", layer)] @ d, labels, langs)}
    return table
