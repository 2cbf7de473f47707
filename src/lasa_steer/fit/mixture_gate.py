"""Fit a vector's gate on a data mixture and set its operating points on look-alikes.

The vector's block, language centroids and directions stay; the gate's score becomes an MLP
probe trained on the mixture's ``train`` part (:mod:`lasa_steer.fit.mixture`: balanced by
source and language), chosen among candidates by

* ``worst``: the lowest per-language TPR on the ``calibration`` part's harmful rows, and
* ``held_out_source``: the mean TPR on each harmful source's calibration rows of a copy
  trained *without that source* (the gate must catch kinds of harm it has not seen),

both at the default operating point (the sum decides). Operating points are then set on the
calibration part (:mod:`lasa_steer.fit.operating_points`), the probability scale too, and
every figure is measured again on the ``test`` part, which nothing here trains or
calibrates on. Used by ``lasa fit`` (its last step) and ``lasa calibrate --gate mixture``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from torch import nn

from ..capture import capture
from ..errors import FitConfigError
from ..steering.gate import LID_POOLING, gate_point, identify, lid_point, score
from ..types import HARMFUL
from ..vector.file import SteeringVector
from ..vector.gate import Gate, OperatingPoint
from ..vector.probe import Probe
from .directions import auroc
from .mixture import Mixture, MixRow
from .operating_points import (DEFAULT_POINTS, PointSpec, calibrate_point, fired,
                               probability_scale, rates)
from .probe import ProbeConfig, train_probe


@dataclass(frozen=True)
class MixtureGateConfig:
    points: tuple[PointSpec, ...] = DEFAULT_POINTS  # the first is the file's default
    probe_widths: tuple[int, ...] = (64,)           # MLP candidates' hidden widths
    epochs: int = 300
    min_rows: int = 20                              # rows a language needs for its own threshold
    held_out_sources: bool = True                   # the held-out-source check (costs a probe each)
    batch_size: int = 16
    progress: bool = True
    seed: int = 0


@dataclass
class _States:
    gate: torch.Tensor                  # [N, H] at the gate block
    langs: tuple[str | None, ...]       # identified language per row


def fit_mixture_gate(model: nn.Module, tokenizer: Any, vector: SteeringVector,
                     mixture: Mixture, config: MixtureGateConfig | None = None
                     ) -> tuple[SteeringVector, dict[str, Any]]:
    """A copy of the language-aware ``vector`` with its gate fit on ``mixture`` (module
    docstring), and the report (also stored in the file's ``extra.mixture_gate``)."""
    cfg = config or MixtureGateConfig()
    gate = vector.gate
    if gate is None or not gate.language_aware:
        raise FitConfigError(f"vector {vector.name!r}: the mixture gate needs a "
                             "language-aware gate (lasa calibrate first)")
    if not cfg.points:
        raise FitConfigError("mixture gate: at least one operating point")
    t0 = time.perf_counter()
    parts = {p: mixture.part(p) for p in ("train", "calibration", "test")}
    for p, rows in parts.items():
        if not any(r.role == "harmful" for r in rows) or all(r.role == "harmful" for r in rows):
            raise FitConfigError(f"mixture: its {p} part needs harmful and harmless rows")
    st = {p: _capture(model, tokenizer, gate, rows, cfg, p) for p, rows in parts.items()}
    weights = mixture.weights(parts["train"])
    cands = _candidates(st["train"].gate, parts["train"], weights, cfg)
    table = {name: _figures(probe, gate, st["calibration"], parts["calibration"], cfg)
             for name, probe in cands.items()}
    if cfg.held_out_sources:
        for name in cands:
            table[name]["held_out_source"] = _held_out_sources(
                name, mixture, parts, st, gate, cfg)
    best = max(table, key=lambda k: (round(table[k]["worst"] + _mean(
        table[k].get("held_out_source", {})), 6), table[k]["auroc"]))
    probe = cands[best]
    new_gate = _measured(_with_points(gate, probe, st, parts, cfg), st, parts)
    points = new_gate.operating_points
    report = {"choice": best, "candidates": table, "mixture": mixture.provenance(),
              "counts": mixture.counts(), "probability_scale": new_gate.probability_scale,
              "points": {k: v.meta() for k, v in points.items()},
              "wall_time_s": round(time.perf_counter() - t0, 1)}
    out = replace(vector, gate=new_gate)
    out.provenance = {**vector.provenance, "gate": {
        "method": f"MLP probe ({probe.hidden} hidden) on a data mixture at block "
                  f"{gate.layer}; thresholds per operating point on look-alikes "
                  "(lasa_steer.fit.mixture_gate)",
        "mixture": mixture.provenance()}}
    out.extra = {**vector.extra, "gate_method": f"mixture mlp{probe.hidden}",
                 "mixture_gate": report, "language_gate": _language_part(vector.extra)}
    for stale in ("gate_val_fpr", "gate_val_tpr", "gate_auroc_val"):
        out.extra.pop(stale, None)  # figures of the gate this one replaces
    return out, report


def _language_part(extra: dict[str, Any]) -> dict[str, Any]:
    """The language report without the replaced gate's figures (its candidates, choice
    and per-language thresholds/TPR/FPR): language identification stays valid."""
    lg = dict(extra.get("language_gate", {}))
    for key in ("candidates", "gate_choice", "hard_negatives", "global_threshold",
                "fpr_target"):
        lg.pop(key, None)
    lg["per_language"] = {lang: {k: v for k, v in row.items() if k == "lid_accuracy"}
                          for lang, row in dict(lg.get("per_language", {})).items()}
    return lg


def _capture(model: nn.Module, tok: Any, gate: Gate, rows: Sequence[MixRow],
             cfg: MixtureGateConfig, part: str) -> _States:
    gp, lp = gate_point(gate), lid_point(gate)
    assert lp is not None
    got = capture(model, tok, [r.text for r in rows], [gp, lp], batch_size=cfg.batch_size,
                  poolings={gp: gate.pooling, lp: LID_POOLING},
                  progress=f"mixture gate: {part} prompts" if cfg.progress else False)
    return _States(got[gp], identify(gate, got[lp], len(rows)))


def _train(states: torch.Tensor, rows: Sequence[MixRow], weights: torch.Tensor, hidden: int,
           cfg: MixtureGateConfig) -> Probe:
    return train_probe(states, [r.label for r in rows], [r.lang for r in rows],
                       ProbeConfig(hidden=hidden, epochs=cfg.epochs, seed=cfg.seed), weights)


def _candidates(states: torch.Tensor, rows: Sequence[MixRow], weights: torch.Tensor,
                cfg: MixtureGateConfig) -> dict[str, Probe]:
    return {f"mlp{h}": _train(states, rows, weights, h, cfg) for h in cfg.probe_widths}


def _default_point(gate: Gate, probe: Probe, st: _States, rows: Sequence[MixRow],
                   cfg: MixtureGateConfig) -> tuple[OperatingPoint, torch.Tensor]:
    s = probe(st.gate)
    op = calibrate_point(cfg.points[0], s, st.langs, [r.role for r in rows], gate.languages,
                         cfg.min_rows)
    return op, s


def _figures(probe: Probe, gate: Gate, st: _States, rows: Sequence[MixRow],
             cfg: MixtureGateConfig) -> dict[str, Any]:
    """Calibration-part figures of one candidate at the default point."""
    op, s = _default_point(gate, probe, st, rows, cfg)
    f = fired(op, s, st.langs)
    harm = torch.tensor([r.role == "harmful" for r in rows])
    tpr: dict[str, float] = {}
    for lang in sorted({r.lang for r in rows if r.role == "harmful"}):
        m = harm & torch.tensor([r.lang == lang for r in rows])
        if int(m.sum()) >= cfg.min_rows:
            tpr[lang] = round(float(f[m].double().mean()), 4)
    safe = ~harm
    return {"worst": min(tpr.values()) if tpr else 0.0, "tpr": tpr,
            "mean_tpr": sum(tpr.values()) / len(tpr) if tpr else 0.0,
            "auroc": round(auroc(s[harm], s[safe]), 4)}


def _held_out_sources(name: str, mixture: Mixture, parts: dict[str, list[MixRow]],
                      st: dict[str, _States], gate: Gate, cfg: MixtureGateConfig
                      ) -> dict[str, float]:
    """Per harmful source: TPR on its calibration rows of a candidate trained without it
    (thresholds from the other sources' calibration rows)."""
    hidden = int(name.removeprefix("mlp"))
    out = {}
    train, cal = parts["train"], parts["calibration"]
    for src in sorted({r.source for r in train if r.role == "harmful"}):
        keep = [i for i, r in enumerate(train) if not (r.source == src and r.role == "harmful")]
        if len(keep) == len(train) or not any(train[i].role == "harmful" for i in keep):
            continue
        rows = [train[i] for i in keep]
        probe = _train(st["train"].gate[keep], rows, mixture.weights(rows), hidden, cfg)
        others = [i for i, r in enumerate(cal) if r.source != src or r.role != "harmful"]
        ost = _States(st["calibration"].gate[others],
                      tuple(st["calibration"].langs[i] for i in others))
        op, _ = _default_point(gate, probe, ost, [cal[i] for i in others], cfg)
        mine = [i for i, r in enumerate(cal) if r.source == src and r.role == "harmful"]
        if mine:
            s = probe(st["calibration"].gate[mine])
            f = fired(op, s, [st["calibration"].langs[i] for i in mine])
            out[src] = round(float(f.double().mean()), 4)
    return out


def _mean(d: dict[str, float]) -> float:
    return sum(d.values()) / len(d) if d else 0.0


def _with_points(gate: Gate, probe: Probe, st: dict[str, _States],
                 parts: dict[str, list[MixRow]], cfg: MixtureGateConfig) -> Gate:
    """The gate with ``probe``, every operating point (the first current) and the
    probability scale, all from the calibration part."""
    train = parts["train"]
    harm = torch.tensor([r.label == HARMFUL for r in train])
    ref = st["train"].gate[harm].mean(0) - st["train"].gate[~harm].mean(0)
    return _calibrated(replace(gate, probe=probe, direction=ref / ref.norm()),
                       st["calibration"], parts["calibration"], cfg)


def _calibrated(gate: Gate, cst: _States, cal: Sequence[MixRow],
                cfg: MixtureGateConfig) -> Gate:
    """``gate`` (its probe set) with every point of ``cfg`` and the probability scale set
    on the calibration rows ``cal``; the first point becomes current."""
    assert gate.probe is not None
    s = gate.probe(cst.gate)
    roles = [r.role for r in cal]
    points = {spec.name: calibrate_point(spec, s, cst.langs, roles, gate.languages,
                                         cfg.min_rows) for spec in cfg.points}
    default = cfg.points[0].name
    op = points[default]
    thr = torch.tensor([op.thresholds.get(x, op.threshold) if x else op.threshold
                        for x in cst.langs])
    labels = torch.tensor([r.label for r in cal], dtype=torch.float64)
    scale = probability_scale(s, thr, labels)
    return replace(gate, threshold=op.threshold, thresholds=dict(op.thresholds),
                   fpr=cfg.points[0].harmless, operating_points=points,
                   operating_point=default, probability_scale=scale)


def _measured(gate: Gate, st: dict[str, _States], parts: dict[str, list[MixRow]]) -> Gate:
    """``gate`` with each point's rates on the calibration and test parts recorded."""
    points = {}
    for name, op in gate.operating_points.items():
        got = {p: rates(op, score(gate, st[p].gate), st[p].langs,
                        [r.role for r in parts[p]], [r.lang for r in parts[p]])
               for p in ("calibration", "test")}
        points[name] = replace(op, measured={**op.measured, **got})
    return replace(gate, operating_points=points)


def retune_points(model: nn.Module, tokenizer: Any, vector: SteeringVector,
                  mixture: Mixture, config: MixtureGateConfig | None = None
                  ) -> tuple[SteeringVector, dict[str, Any]]:
    """A copy of ``vector`` whose mixture gate keeps its probe but gets new operating
    points (``config.points``) and probability scale, set on ``mixture``'s calibration
    part and measured on its test part.

    Why: choosing an operating point should not cost a refit. Only the calibration and
    test parts are captured (about 40 % of the rows), and no probe is trained. Parts are a
    hash of each row's source and group, so a row the probe trained on is never in them."""
    cfg = config or MixtureGateConfig()
    gate = vector.gate
    if gate is None or gate.probe is None or not gate.language_aware:
        raise FitConfigError(f"vector {vector.name!r}: retuning operating points needs a "
                             "mixture gate (lasa calibrate --gate mixture first)")
    if not cfg.points:
        raise FitConfigError("retune: at least one operating point")
    t0 = time.perf_counter()
    parts = {p: mixture.part(p) for p in ("calibration", "test")}
    for p, rows in parts.items():
        if not any(r.role == "harmful" for r in rows) or all(r.role == "harmful" for r in rows):
            raise FitConfigError(f"mixture: its {p} part needs harmful and harmless rows")
    st = {p: _capture(model, tokenizer, gate, rows, cfg, p) for p, rows in parts.items()}
    new_gate = _measured(_calibrated(gate, st["calibration"], parts["calibration"], cfg),
                         st, parts)
    points = new_gate.operating_points
    report = {"mixture": mixture.provenance(), "counts": mixture.counts(),
              "probability_scale": new_gate.probability_scale,
              "points": {k: v.meta() for k, v in points.items()},
              "wall_time_s": round(time.perf_counter() - t0, 1)}
    out = replace(vector, gate=new_gate)
    prov = dict(vector.provenance.get("gate", {}))
    prov["operating_points"] = {"rule": "retuned on look-alikes "
                                "(lasa_steer.fit.mixture_gate.retune_points)",
                                "mixture": mixture.provenance()}
    out.provenance = {**vector.provenance, "gate": prov}
    previous = dict(vector.extra.get("mixture_gate", {}))
    out.extra = {**vector.extra, "mixture_gate": {**previous, "points": report["points"],
                                                  "probability_scale": report["probability_scale"],
                                                  "retuned": report}}
    return out, report
