"""``fit``: from paired multilingual prompts to a calibrated vector file, in one call.

Pipeline (each step's figures go into the report and the vector's metadata):

1. capture last-prompt-token states (chat template applied), batched: a seeded search
   subset (``silhouette_groups`` aligned harmful rows in every language, as many harmless
   rows per language) at every block, the other rows only up to the deepest block needed;
2. choose the bottleneck (:mod:`lasa_steer.bottleneck`) from the search subset: meaning vs
   language silhouettes of the aligned harmful rows, leave-one-language-out transfer AUROC;
3. gate direction there: per-language unit difference of means, averaged, language-centroid
   subspace projected out (:func:`lasa_steer.directions.harm_direction`), and its
   Fisher-whitened variants (:func:`lasa_steer.directions.whitened_direction`); the one with
   the best mean per-language validation AUROC is kept;
4. refusal direction at the blocks after the bottleneck, two candidates: the difference of
   means at the post-instruction position, and contrastive completions (the same harmful
   prompt followed by a refusal start vs a compliance start);
5. calibration on validation data: gate threshold for a target FPR on harmless prompts; the
   candidate and strength by generating replies (refusal rate on harmful prompts, first-token
   KL and greedy agreement on harmless ones).
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..capture import capture
from ..errors import FitConfigError
from ..eval.judges.pattern import is_refusal
from ..generate import generate
from ..model.identity import ModelIdentity
from ..model.layers import find_layers
from ..steering.api import steer
from ..types import HARMFUL, HARMLESS
from ..vector.file import Gate, SteeringVector
from .bottleneck import DEFAULT_BAND, LayerReport, analyze_states
from .calibrate import (StrengthTrial, choose_trial, kl, next_token_logprobs, rate_above,
                        threshold_for_fpr)
from .data import Example
from .directions import auroc, harm_direction, whitened_direction, within_cell_covariance

log = logging.getLogger(__name__)


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
    batch_size: int = 16
    seed: int = 0
    progress: bool = True


@dataclass
class FitResult:
    vector: SteeringVector
    report: dict[str, Any]
    layer_report: LayerReport | None = None


def _by_lang(examples: Sequence[Example], label: int, per_lang: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for lang in sorted({e.lang for e in examples}):
        pool = [e for e in examples if e.lang == lang and e.label == label]
        out += rng.sample(pool, min(per_lang, len(pool)))
    return out


def refusal_layers_for(bottleneck: int, num_layers: int, span: float) -> list[int]:
    k = max(1, round(span * num_layers))
    return [i for i in range(bottleneck + 1, bottleneck + 1 + k) if i < num_layers]


def _balanced_direction(states: torch.Tensor, labels: list[int], langs: list[str],
                        remove_language: bool) -> torch.Tensor:
    hd = harm_direction(states, labels, langs, remove_language=remove_language)
    return hd.direction * hd.scale


def fit(model: nn.Module, tokenizer: Any, train: Sequence[Example], val: Sequence[Example],
        config: FitConfig | None = None, model_name: str | None = None,
        judge: Callable[[str, str], bool] | None = None,
        data_info: dict[str, Any] | None = None) -> FitResult:
    """Fit a gated refusal vector for ``model`` (see the module docstring)."""
    cfg = config or FitConfig()
    torch.manual_seed(cfg.seed)
    judge = judge or is_refusal
    lm = find_layers(model)
    n = lm.num_layers
    ident = ModelIdentity.of(model, lm)
    _check(train, "train")
    _check(val, "validation")
    prog = cfg.progress
    cap_model = capture_model(model, cfg.capture_dtype)
    cap_lm = find_layers(cap_model)
    cap_dtype = str(next(cap_model.parameters()).dtype).removeprefix("torch.")
    train_labels = [e.label for e in train]
    train_langs = [e.lang for e in train]

    def grab(texts: Sequence[str], points: Sequence[Any], desc: str, **kw: Any
             ) -> dict[Any, torch.Tensor]:
        return capture(cap_model, tokenizer, texts, points, batch_size=cfg.batch_size,
                       progress=f"fit: {desc}" if prog else False, layer_map=cap_lm, **kw)

    # 1a. the search subset at every block
    search = _search_rows(train, cfg)
    sub = [train[i] for i in search]
    got = grab([e.text for e in sub], [("resid_post", i) for i in range(n)],
               "search prompts (all blocks)")
    sub_states = {p[1]: v for p, v in got.items()}

    # 2. bottleneck
    layer_report = None
    if cfg.layer is None:
        layer_report = _bottleneck(sub_states, sub, cfg, ident.name)
        bottleneck = layer_report.chosen
    else:
        if not 0 <= cfg.layer < n - 1:
            raise FitConfigError(f"layer={cfg.layer}: must be in 0..{n - 2} (blocks after it are "
                             "steered)")
        bottleneck = cfg.layer
    log.info("bottleneck block %d of %d", bottleneck, n)
    rlayers = list(cfg.refusal_layers) if cfg.refusal_layers is not None else \
        refusal_layers_for(bottleneck, n, cfg.refusal_span)
    if not rlayers or min(rlayers) <= bottleneck:
        raise FitConfigError(f"refusal layers {rlayers} must all come after the bottleneck "
                         f"{bottleneck}")

    # 1b. every train row at the gate and refusal blocks (the forward pass stops there)
    needed = sorted({bottleneck, *rlayers})
    in_search = set(search)
    rest = [i for i in range(len(train)) if i not in in_search]
    got = grab([train[i].text for i in rest], [("resid_post", i) for i in needed],
               "train prompts") if rest else {}
    states: dict[int, torch.Tensor] = {}
    for layer in needed:
        full = torch.empty(len(train), lm.hidden_size)
        full[torch.tensor(search, dtype=torch.long)] = sub_states[layer]
        if rest:
            full[torch.tensor(rest, dtype=torch.long)] = got[("resid_post", layer)]
        states[layer] = full

    # 3. gate direction candidates (chosen on validation in 5a)
    hd = harm_direction(states[bottleneck], train_labels, train_langs,
                        remove_language=cfg.remove_language)
    gate_cands = {"diffmean": hd.direction}
    if cfg.gate_shrinkage:
        cov = within_cell_covariance(states[bottleneck], train_labels, train_langs)
        for lam in cfg.gate_shrinkage:
            gate_cands[f"whitened(shrinkage={lam:g})"] = whitened_direction(
                hd.direction, cov, lam, hd.basis)

    # 4. refusal candidates
    diffmean = {i: _balanced_direction(states[i], train_labels, train_langs,
                                       cfg.remove_language) for i in rlayers}
    contrast_src = _by_lang(train, HARMFUL, cfg.contrastive_per_language, cfg.seed)
    rpoints = [("resid_post", i) for i in rlayers]
    c_texts = [e.text for e in contrast_src]
    ref = _prefix_mean(grab, c_texts, rpoints, cfg.refusal_prefixes, "refusal starts")
    comp = _prefix_mean(grab, c_texts, rpoints, cfg.compliance_prefixes, "compliance starts")
    c_langs = [e.lang for e in contrast_src]
    contrastive = {}
    for p in rpoints:
        both = torch.cat([ref[p], comp[p]])
        labs = [1] * len(contrast_src) + [0] * len(contrast_src)
        d = _balanced_direction(both, labs, c_langs + c_langs, cfg.remove_language)
        # The raw contrast also carries the identity of the differing prefix tokens and is
        # ~10x longer; rescale to the diff-of-means norm so one strength grid fits both.
        contrastive[p[1]] = d / d.norm() * diffmean[p[1]].norm()
    steer_layers = list(cfg.steer_layers) if cfg.steer_layers is not None else rlayers[:1]
    clamp_targets = {}
    for name, dirs in (("refusal_diffmean", diffmean), ("refusal_contrastive", contrastive)):
        clamp_targets[name] = {i: float((states[i][torch.tensor(train_labels) == HARMFUL]
                                         @ (d / d.norm())).mean()) for i, d in dirs.items()}

    # 5a. gate threshold on the model as deployed (its own dtype), up to the gate block
    vpoint = ("resid_post", bottleneck)
    vstates = capture(model, tokenizer, [e.text for e in val], [vpoint],
                      batch_size=cfg.batch_size, layer_map=lm,
                      progress="fit: validation prompts" if prog else False)[vpoint]
    v_labels = torch.tensor([e.label for e in val])
    v_langs = [e.lang for e in val]
    cand_rows = {name: _auroc_row(vstates @ d, v_labels, v_langs)
                 for name, d in gate_cands.items()}
    gate_method = max(cand_rows, key=lambda k: (_lang_mean(cand_rows[k]), k == "diffmean"))
    gate_dir = gate_cands[gate_method]
    v_scores = vstates @ gate_dir
    threshold = threshold_for_fpr(v_scores[v_labels == HARMLESS], cfg.fpr)
    gate = Gate(layer=bottleneck, direction=gate_dir, threshold=threshold)
    per_lang_rates = {}
    for lang in sorted(set(v_langs)):
        m = torch.tensor([x == lang for x in v_langs])
        per_lang_rates[lang] = {
            "tpr": rate_above(v_scores[m & (v_labels == HARMFUL)], threshold),
            "fpr": rate_above(v_scores[m & (v_labels == HARMLESS)], threshold)}
    # per-language AUROC: the gate itself, and the first/chosen/last blocks compared on
    # directions fit the same way from the search subset (a val subset at all three)
    cmp_val = _by_lang(val, HARMFUL, cfg.comparison_val_per_language, cfg.seed) + \
        _by_lang(val, HARMLESS, cfg.comparison_val_per_language, cfg.seed)
    which = {"first": 0, "chosen": bottleneck, "last": n - 1}
    cgot = grab([e.text for e in cmp_val], sorted({("resid_post", i) for i in which.values()},
                                                   key=lambda p: p[1]), "comparison prompts")
    auroc_table = {"gate": {"layer": bottleneck,
                            **_auroc_row(v_scores, v_labels, v_langs)}}
    c_labels = torch.tensor([e.label for e in cmp_val])
    c_vlangs = [e.lang for e in cmp_val]
    for tag, layer in which.items():
        d = harm_direction(sub_states[layer], [e.label for e in sub], [e.lang for e in sub],
                           remove_language=cfg.remove_language).direction
        auroc_table[tag] = {"layer": layer, **_auroc_row(cgot[("resid_post", layer)] @ d,
                                                         c_labels, c_vlangs)}
    if cap_model is not model:
        del cap_model

    # 5b. strength and candidate by generation
    cands = {"refusal_diffmean": diffmean, "refusal_contrastive": contrastive}
    provisional = SteeringVector(model=ident, directions=cands, gate=gate,
                                 default_direction="refusal_diffmean",
                                 clamp_targets=clamp_targets)
    trials, baseline = _strength_trials(model, tokenizer, provisional, val, cfg, judge,
                                        steer_layers)
    best = choose_trial(trials, cfg.max_harmless_kl)
    directions = {"refusal": {i: cands[best.direction][i].clone() for i in steer_layers},
                  **cands}
    clamp_targets["refusal"] = {i: clamp_targets[best.direction][i] for i in steer_layers}
    vector = SteeringVector(model=ident, directions=directions, gate=gate,
                            default_direction="refusal", default_action="add",
                            default_strength=best.strength, clamp_targets=clamp_targets)
    gated = _gated_check(model, tokenizer, vector, val, cfg, judge)

    counts = _counts(train, val)
    report = {
        "model": ident.name, "num_layers": n, "hidden_size": lm.hidden_size,
        "bottleneck": bottleneck,
        "bottleneck_rule": layer_report.rule if layer_report else "given by the user",
        "gate": {"layer": bottleneck, "site": "resid_post", "threshold": threshold,
                 "method": gate_method,
                 "candidates": {k: {"mean_language_auroc": _lang_mean(v), "min_language_auroc":
                                    min(x for lang, x in v.items() if lang != "all"),
                                    "all": v["all"]} for k, v in cand_rows.items()},
                 "target_fpr": cfg.fpr,
                 "val_fpr": rate_above(v_scores[v_labels == HARMLESS], threshold),
                 "val_tpr": rate_above(v_scores[v_labels == HARMFUL], threshold),
                 "language_subspace_rank": hd.subspace_rank,
                 "fraction_removed_by_language_projection": hd.fraction_removed,
                 "per_language": per_lang_rates},
        "auroc": auroc_table,
        "refusal": {"layers": steer_layers, "candidate_layers": rlayers,
                    "chosen": best.direction, "strength": best.strength,
                    "refusal_prefixes": list(cfg.refusal_prefixes),
                    "compliance_prefixes": list(cfg.compliance_prefixes),
                    "baseline": baseline, "trials": [t.as_dict() for t in trials],
                    "gated": gated},
        "counts": counts,
        "capture": {"dtype": cap_dtype, "search_rows": len(search),
                    "rest_rows": len(rest), "rest_blocks": needed,
                    "comparison_val_rows": len(cmp_val)},
        "config": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in asdict(cfg).items()},
        "layers": layer_report.to_json() if layer_report else None,
    }
    vector.provenance = {
        "method": "lasa-fit: gate = language-balanced diff of means at the bottleneck with "
                  "the language-centroid subspace projected out"
                  + ("" if gate_method == "diffmean" else f", {gate_method} by the within-"
                     "(language, label) covariance") + "; refusal = "
                  f"{best.direction.removeprefix('refusal_')} at blocks {steer_layers} "
                  f"(both candidates stored at blocks {rlayers})",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "languages": sorted(set(train_langs)), "counts": counts, "seed": cfg.seed,
        "data": data_info or {}, "tool": f"lasa-steer {__version__}",
    }
    vector.extra = _summary(report)
    return FitResult(vector, report, layer_report)


# ---------------------------------------------------------------------- helpers
def _check(examples: Sequence[Example], what: str) -> None:
    labels = {e.label for e in examples}
    if labels != {HARMFUL, HARMLESS}:
        raise FitConfigError(f"{what} data needs harmful and harmless examples; it has labels "
                         f"{sorted(labels)}")


def _aligned_groups(train: Sequence[Example], seed: int
                    ) -> tuple[dict[str, list[int]], list[str]]:
    """Harmful rows by translation group, and the groups present in at least two languages
    in a seeded order (its head is the silhouette / search sample)."""
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(train):
        if e.group is not None and e.label == HARMFUL:
            groups.setdefault(e.group, []).append(i)
    multi = sorted(g for g, rows in groups.items() if len({train[r].lang for r in rows}) > 1)
    random.Random(seed).shuffle(multi)
    return groups, multi


def _bottleneck(states: dict[int, torch.Tensor], train: Sequence[Example], cfg: FitConfig,
                name: str) -> LayerReport:
    """Silhouettes on the aligned harmful rows (a seeded subset of groups present in at
    least two languages), transfer AUROC on all rows."""
    groups, multi = _aligned_groups(train, cfg.seed)
    rows = [r for g in sorted(multi[:cfg.silhouette_groups]) for r in groups[g]]
    labels = [e.label for e in train]
    langs = [e.lang for e in train]
    if len(multi) < 2 or len({train[r].lang for r in rows}) < 2:
        raise FitConfigError("choosing the bottleneck needs harmful prompts aligned across at "
                         "least two languages (Example.group); pass layer= instead")
    idx = torch.tensor(rows)
    sub = {i: s[idx] for i, s in states.items()}
    return analyze_states(sub, [train[r].group for r in rows], [train[r].lang for r in rows],
                          states, labels, langs, cfg.band, model=name, chat=True,
                          data={"silhouette_rows": len(rows), "silhouette_groups":
                                min(len(multi), cfg.silhouette_groups),
                                "transfer_rows": len(train)})


def _search_rows(train: Sequence[Example], cfg: FitConfig) -> list[int]:
    """Indices of the search subset: the harmful rows of ``silhouette_groups`` seeded groups
    aligned across at least two languages, plus as many seeded harmless rows per language
    as that language has harmful rows in it. Falls back to a seeded per-language sample
    when the data has no aligned groups (then ``layer=`` must be given)."""
    groups, multi = _aligned_groups(train, cfg.seed)
    harmful = sorted(r for g in multi[:cfg.silhouette_groups] for r in groups[g])
    rng = random.Random(f"{cfg.seed}:search")
    per_lang: dict[str, int] = {}
    for r in harmful:
        per_lang[train[r].lang] = per_lang.get(train[r].lang, 0) + 1
    rows = list(harmful)
    for lang in sorted({e.lang for e in train}):
        pool = [i for i, e in enumerate(train) if e.lang == lang and e.label == HARMLESS]
        want = per_lang.get(lang, 0)
        if not harmful:  # no aligned groups: a plain per-language sample of both labels
            want = cfg.silhouette_groups
            hpool = [i for i, e in enumerate(train) if e.lang == lang and e.label == HARMFUL]
            rows += rng.sample(hpool, min(want, len(hpool)))
        rows += rng.sample(pool, min(want, len(pool)))
    return sorted(rows)


def capture_model(model: nn.Module, spec: str = "auto") -> nn.Module:
    """The model captures run on: ``model`` itself or a copy in another dtype (see
    ``FitConfig.capture_dtype``)."""
    param = next(model.parameters())
    if spec == "model":
        return model
    if spec == "auto":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        small = sum(p.numel() for p in model.parameters()) <= 2_000_000_000
        if not (param.device.type == "cpu" and param.dtype == torch.float32 and amx and small):
            return model
        spec = "bfloat16"
    dtype = getattr(torch, spec, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise FitConfigError(f"capture_dtype={spec!r}: use 'auto', 'model', 'bfloat16', "
                         "'float16' or 'float32'")
    if dtype == param.dtype:
        return model
    return copy.deepcopy(model).to(dtype)


def _auroc_row(scores: torch.Tensor, labels: torch.Tensor, langs: Sequence[str]
               ) -> dict[str, float]:
    row = {}
    for lang in sorted(set(langs)):
        m = torch.tensor([x == lang for x in langs])
        row[lang] = auroc(scores[m & (labels == HARMFUL)], scores[m & (labels == HARMLESS)])
    row["all"] = auroc(scores[labels == HARMFUL], scores[labels == HARMLESS])
    return row


def _lang_mean(row: dict[str, float]) -> float:
    vals = [v for k, v in row.items() if k not in ("all", "layer") and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def _prefix_mean(grab, texts, points, prefixes, desc):
    """Last-token states after each assistant prefix, averaged over the prefixes."""
    acc: dict[Any, torch.Tensor] = {}
    for k, prefix in enumerate(prefixes):
        got = grab(texts, points, f"{desc} {k + 1}/{len(prefixes)}", assistant_prefix=prefix)
        for p in points:
            acc[p] = acc[p] + got[p] if p in acc else got[p].clone()
    return {p: v / len(prefixes) for p, v in acc.items()}


def _strength_trials(model, tok, vector, val, cfg, judge, layers):
    harmful = _by_lang(val, HARMFUL, cfg.calib_harmful_per_language, cfg.seed)
    harmless = _by_lang(val, HARMLESS, cfg.calib_harmless_per_language, cfg.seed)
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


def _gated_check(model, tok, vector, val, cfg, judge) -> dict[str, Any]:
    """The chosen setting in gate mode, as deployed: refusal on harmful, closeness on
    harmless (greedy agreement with the unsteered replies, first-token KL)."""
    harmful = _by_lang(val, HARMFUL, cfg.calib_harmful_per_language, cfg.seed)
    harmless = _by_lang(val, HARMLESS, cfg.calib_harmless_per_language * 2, cfg.seed + 1)
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


def _counts(train: Sequence[Example], val: Sequence[Example]) -> dict[str, Any]:
    def table(xs):
        out: dict[str, dict[str, int]] = {}
        for e in xs:
            d = out.setdefault(e.lang, {"harmful": 0, "harmless": 0})
            d["harmful" if e.label == HARMFUL else "harmless"] += 1
        return dict(sorted(out.items()))
    return {"train": table(train), "val": table(val), "train_total": len(train),
            "val_total": len(val)}


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    r = report["refusal"]
    best = next(t for t in r["trials"] if t["direction"] == r["chosen"]
                and t["strength"] == r["strength"])
    return {
        "gate_auroc_val": {k: round(v["all"], 4) for k, v in report["auroc"].items()},
        "gate_method": report["gate"]["method"],
        "gate_val_fpr": round(report["gate"]["val_fpr"], 4),
        "gate_val_tpr": round(report["gate"]["val_tpr"], 4),
        "language_fraction_removed": round(
            report["gate"]["fraction_removed_by_language_projection"], 4),
        "refusal_method": r["chosen"], "refusal_layers": r["layers"],
        "calibration": {"harmful_refusal_always": best["harmful_refusal"],
                        "harmless_kl_always": best["harmless_kl"],
                        "harmless_agreement_always": best["harmless_agreement"],
                        "baseline_harmful_refusal": round(r["baseline"]["harmful_refusal"], 4),
                        "gated_harmful_refusal": round(r["gated"]["harmful_refusal"], 4),
                        "gated_harmless_agreement": round(r["gated"]["harmless_agreement"], 4),
                        "gated_harmless_kl": round(r["gated"]["harmless_kl"], 6)},
    }


# ---------------------------------------------------------------------- report files
def write_report(result: FitResult, stem: str | Path) -> list[Path]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` (AUROC per language at the first,
    chosen and last blocks; the bottleneck curves when they were computed)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    rep = result.report
    paths = [Path(f"{stem}.{ext}") for ext in ("json", "md", "png")]
    paths[0].write_text(json.dumps(rep, indent=2, default=float) + "\n")
    paths[1].write_text(_markdown(rep, paths[2].name))
    _plot(result, paths[2])
    return paths


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) and math.isfinite(x) else str(x)


def _markdown(rep: dict[str, Any], png: str) -> str:
    g, r = rep["gate"], rep["refusal"]
    langs = [k for k in rep["auroc"]["chosen"] if k not in ("layer", "all")]
    lines = [f"# Fit report: {rep['model']}", "",
             f"![fit report]({png})", "",
             f"- bottleneck (gate) block: **{rep['bottleneck']}** of {rep['num_layers']} "
             f"(resid_post); rule: {rep['bottleneck_rule']}",
             f"- gate direction: **{g.get('method', 'diffmean')}** (best mean per-language "
             "validation AUROC of: " + ", ".join(
                 f"{k} {v['mean_language_auroc']:.3f} (worst language "
                 f"{v['min_language_auroc']:.3f})" for k, v in g.get("candidates", {}).items())
             + ")",
             f"- gate threshold {g['threshold']:.4f} for target FPR {g['target_fpr']:.0%}; on "
             f"validation: FPR {g['val_fpr']:.3f}, TPR {g['val_tpr']:.3f}",
             f"- language-identity subspace rank {g['language_subspace_rank']}; projecting it "
             f"out removed {g['fraction_removed_by_language_projection']:.1%} of the gate "
             "direction's squared norm",
             f"- refusal direction: **{r['chosen']}** at blocks {r['layers']}, strength "
             f"**{r['strength']}**", "",
             "## Gate AUROC on validation (harmful vs harmless, per language)", "",
             "`gate`: the fitted gate on every validation prompt, on the model as deployed. "
             "`first`/`chosen`/`last`: the layer comparison, language-balanced "
             "difference-of-means directions (not whitened) fit from the search subset at "
             "those blocks, on a seeded validation subset.", "",
             "| block | " + " | ".join(langs) + " | all |",
             "|---|" + "---|" * (len(langs) + 1)]
    for tag, row in rep["auroc"].items():
        lines.append(f"| {tag} ({row['layer']}) | " + " | ".join(_fmt(row[x]) for x in langs)
                     + f" | {_fmt(row['all'])} |")
    lines += ["", "## Strength calibration (mode=always, greedy replies)", "",
              f"Baseline (no steering): harmful refusal {r['baseline']['harmful_refusal']:.3f}, "
              f"harmless refusal {r['baseline']['harmless_refusal']:.3f} "
              f"({r['baseline']['harmful_prompts']} harmful / "
              f"{r['baseline']['harmless_prompts']} harmless prompts).", "",
              "| direction | strength | harmful refusal | harmless refusal | harmless KL "
              "(1st token) | harmless agreement |", "|---|---|---|---|---|---|"]
    for t in r["trials"]:
        lines.append(f"| {t['direction']} | {t['strength']} | {t['harmful_refusal']:.3f} | "
                     f"{t['harmless_refusal']:.3f} | {t['harmless_kl']:.4f} | "
                     f"{t['harmless_agreement']:.3f} |")
    gd = r["gated"]
    lines += ["", "## Chosen setting in gate mode (as deployed)", "",
              f"harmful refusal {gd['harmful_refusal']:.3f} ({gd['harmful_prompts']} prompts); "
              f"harmless refusal {gd['harmless_refusal']:.3f}, greedy agreement with the "
              f"unsteered model {gd['harmless_agreement']:.3f}, first-token KL "
              f"{gd['harmless_kl']:.5f} ({gd['harmless_prompts']} prompts).", "",
              "## Data counts", "", "| lang | train harmful | train harmless | val harmful | "
              "val harmless |", "|---|---|---|---|---|"]
    c = rep["counts"]
    for lang in sorted(set(c["train"]) | set(c["val"])):
        t, v = c["train"].get(lang, {}), c["val"].get(lang, {})
        lines.append(f"| {lang} | {t.get('harmful', 0)} | {t.get('harmless', 0)} | "
                     f"{v.get('harmful', 0)} | {v.get('harmless', 0)} |")
    lines.append(f"| total | {c['train_total']} | | {c['val_total']} | |")
    return "\n".join(lines) + "\n"


def _plot(result: FitResult, path: Path) -> None:
    from ..plots import pyplot

    plt = pyplot()

    rep = result.report
    langs = [k for k in rep["auroc"]["chosen"] if k not in ("layer", "all")]
    ncols = 2 if result.layer_report else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.2), squeeze=False)
    ax = axes[0][0]
    tags = [t for t in ("first", "chosen", "last", "gate") if t in rep["auroc"]]
    width = 0.8 / len(tags)
    for j, tag in enumerate(tags):
        row = rep["auroc"][tag]
        label = (f"shipped gate (block {row['layer']}, {rep['gate'].get('method', '')})"
                 if tag == "gate" else f"{tag} (block {row['layer']}, plain)")
        ax.bar([i + (j - (len(tags) - 1) / 2) * width for i in range(len(langs))],
               [row[x] for x in langs], width, label=label)
    ax.set_xticks(range(len(langs)), langs)
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("gate AUROC (validation)")
    ax.set_title("harmful vs harmless, per language")
    ax.legend(fontsize=7, loc="lower center", ncol=2)
    if result.layer_report:
        lr = result.layer_report
        ax = axes[0][1]
        x = list(range(lr.num_layers))
        ax.plot(x, lr.sil_meaning, "o-", ms=3, label="silhouette by meaning")
        ax.plot(x, lr.sil_language, "s-", ms=3, label="silhouette by language")
        ax.plot(x, lr.sil_diff, "k-", lw=2, label="meaning - language")
        if lr.transfer_auroc:
            ax2 = ax.twinx()
            ax2.plot(x, lr.transfer_auroc, "^-", color="tab:red", ms=3, label="transfer AUROC")
            ax2.set_ylim(0.4, 1.01)
            ax2.legend(fontsize=8, loc="lower right")
        ax.axvline(lr.chosen, color="tab:green", ls="--", lw=2)
        ax.set_xlabel("block")
        ax.set_title(f"bottleneck: block {lr.chosen}")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"lasa fit: {rep['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
