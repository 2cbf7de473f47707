"""The harmfulness gate of a vector file, and the checks of its language-aware part."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import SteeringConfigError, VectorFileError
from .probe import Probe


@dataclass(frozen=True)
class OperatingPoint:
    """A named set of gate thresholds, each set for a stated job (format 4).

    ``threshold`` is the pooled one (languages without their own), ``thresholds`` per
    language; ``targets`` the false-positive rates they were set for (e.g.
    ``{"lookalike": 0.03, "harmless": 0.01}``), ``rule`` how, in words; ``measured`` the
    rates the fit saw on data it held out (see :mod:`lasa_steer.fit.operating_points`)."""

    threshold: float
    thresholds: dict[str, float] = field(default_factory=dict)
    targets: dict[str, float] = field(default_factory=dict)
    rule: str = ""
    measured: dict[str, Any] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "thresholds": dict(self.thresholds),
                "targets": dict(self.targets), "rule": self.rule,
                "measured": dict(self.measured)}

    @classmethod
    def from_meta(cls, m: dict[str, Any]) -> "OperatingPoint":
        return cls(float(m["threshold"]),
                   {str(k): float(v) for k, v in dict(m.get("thresholds", {})).items()},
                   {str(k): float(v) for k, v in dict(m.get("targets", {})).items()},
                   str(m.get("rule", "")), dict(m.get("measured", {})))


@dataclass
class Gate:
    """The harmfulness gate: ``score = <pooled state at (site, layer), direction>``;
    a row is harmful when ``score`` is above its language's threshold.

    Language-aware gates (format version 2) also carry ``centroids`` ``[L, H]``: the mean
    state of each of ``languages`` at block ``lid_layer`` (``resid_post``, mean over the
    prompt's real tokens), where a prompt's language is read as the nearest centroid, and
    ``thresholds``: a threshold per language, set on that language's harmless validation
    prompts at false-positive rate ``fpr``. A prompt identified as a language without a
    threshold of its own gets ``threshold``, the one set on every harmless validation prompt
    pooled; a prompt in a language without a centroid is identified as the nearest one
    (there is no distance check). Format-3 gates may carry a ``probe`` (a small MLP,
    :mod:`lasa_steer.vector.probe`) that replaces the direction's score; ``direction`` then
    stays as the linear reference. See :mod:`lasa_steer.steering.gate`."""

    layer: int
    direction: torch.Tensor
    threshold: float
    site: str = "resid_post"
    pooling: str = "last"
    languages: tuple[str, ...] = ()
    centroids: torch.Tensor | None = None
    lid_layer: int | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    fpr: float | None = None
    probe: Probe | None = None
    # Format 4: named operating points; ``threshold``/``thresholds`` above hold the one named
    # ``operating_point`` (the file's default, or the one chosen by :meth:`at`).
    operating_points: dict[str, OperatingPoint] = field(default_factory=dict)
    operating_point: str | None = None
    # p(harmful) = sigmoid((score - threshold of the row's language) / probability_scale)
    probability_scale: float | None = None

    @property
    def language_aware(self) -> bool:
        return self.centroids is not None and bool(self.languages)

    def point_names(self) -> list[str]:
        """The operating points' names, the file's default first, then the others from the
        strictest (lowest look-alike target) up: the order to read and compare them in (the
        file's JSON stores them by name)."""
        def strictness(name: str) -> tuple[float, float, str]:
            t = self.operating_points[name].targets
            return (t.get("lookalike", 1.0), t.get("harmless", 1.0), name)
        rest = sorted((n for n in self.operating_points if n != self.operating_point),
                      key=strictness)
        return ([self.operating_point] if self.operating_point in self.operating_points
                else []) + rest

    def at(self, name: str | None) -> "Gate":
        """This gate at operating point ``name`` (None or the current one: ``self``).
        Raise :class:`SteeringConfigError` (field ``operating_point``) for an unknown name."""
        if name is None or name == self.operating_point:
            return self
        if name not in self.operating_points:
            have = sorted(self.operating_points) or "none (a gate of format < 4)"
            raise SteeringConfigError(f"operating_point={name!r}: this gate has {have}",
                                      field="operating_point")
        op = self.operating_points[name]
        return replace(self, threshold=op.threshold, thresholds=dict(op.thresholds),
                       operating_point=name)

    def probability(self, scores: torch.Tensor, langs: "tuple[str | None, ...] | list"
                    ) -> torch.Tensor:
        """p(harmful) per row, in [0, 1]: a logistic function of the score's distance above
        its language's threshold, so p > 0.5 exactly when the row fires and one p means the
        same in every language. ``probability_scale`` is fitted on held-out rows
        (:mod:`lasa_steer.fit.operating_points`); a gate without one uses 1.0 (uncalibrated)."""
        thr = torch.tensor([self.threshold_for(x) for x in langs], dtype=torch.float64)
        scale = self.probability_scale or 1.0
        z = (scores.double() - thr) / scale
        p = torch.sigmoid(z)
        # keep p > 0.5 <=> fired exactly, also where float rounding reaches 0.5 or 1.0
        p = torch.where(z > 0, p.clamp(min=0.5 + 1e-9), p.clamp(max=0.5))
        return p.float().clamp(0.0, 1.0)

    def threshold_for(self, lang: str | None) -> float:
        """The threshold a prompt identified as ``lang`` is compared with."""
        return self.thresholds.get(lang, self.threshold) if lang else self.threshold

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layer": self.layer, "site": self.site,
                               "threshold": self.threshold, "pooling": self.pooling}
        if self.language_aware:
            out.update(languages=list(self.languages), lid_layer=self.lid_layer,
                       thresholds=dict(self.thresholds), fpr=self.fpr)
        if self.probe is not None:
            out["probe"] = self.probe.meta()
        if self.operating_points:
            out["operating_points"] = {k: v.meta() for k, v in self.operating_points.items()}
            out["operating_point"] = self.operating_point
        if self.probability_scale is not None:
            out["probability_scale"] = self.probability_scale
        return out


def point_fields(gm: dict) -> dict[str, Any]:
    """The format-4 part of a gate's metadata (empty for older gates)."""
    out: dict[str, Any] = {}
    if gm.get("operating_points"):
        out["operating_points"] = {str(k): OperatingPoint.from_meta(v)
                                   for k, v in dict(gm["operating_points"]).items()}
        out["operating_point"] = gm.get("operating_point")
    if gm.get("probability_scale") is not None:
        out["probability_scale"] = float(gm["probability_scale"])
    return out


def check_points(g: "Gate", bad: Any) -> None:
    """A format-4 gate's operating points: finite thresholds for known languages, the
    current one among them and equal to the gate's own thresholds."""
    for name, op in g.operating_points.items():
        values = [op.threshold, *op.thresholds.values()]
        if not all(math.isfinite(v) for v in values):
            raise bad(f"gate.operating_points.{name} holds a non-finite threshold")
        unknown = sorted(set(op.thresholds) - set(g.languages))
        if unknown:
            raise bad(f"gate.operating_points.{name}.thresholds names languages without a "
                      f"centroid: {unknown}")
    if g.operating_points:
        cur = g.operating_points.get(g.operating_point or "")
        if cur is None:
            raise bad(f"gate.operating_point {g.operating_point!r} is not one of "
                      f"{sorted(g.operating_points)}")
        if cur.threshold != g.threshold or cur.thresholds != g.thresholds:
            raise bad(f"gate.threshold(s) differ from operating point {g.operating_point!r}")
    if g.probability_scale is not None and not (math.isfinite(g.probability_scale)
                                                 and g.probability_scale > 0):
        raise bad("gate.probability_scale must be a positive number")


def language_fields(gm: dict, tensors: dict[str, torch.Tensor], p: Path) -> dict[str, Any]:
    """The language-aware part of a gate's metadata (empty for a version-1 gate)."""
    if not gm.get("languages"):
        return {}
    if "gate.centroids" not in tensors:
        raise VectorFileError(f"{p}: gate declares languages but tensor 'gate.centroids' "
                              "is missing")
    return {"languages": tuple(str(x) for x in gm["languages"]),
            "centroids": tensors["gate.centroids"].float(),
            "lid_layer": int(gm["lid_layer"]),
            "thresholds": {str(k): float(v) for k, v in dict(gm.get("thresholds", {})).items()},
            "fpr": None if gm.get("fpr") is None else float(gm["fpr"])}


def check_language_gate(g: Gate, n: int, h: int, bad: Any) -> None:
    c = g.centroids
    assert c is not None
    if tuple(c.shape) != (len(g.languages), h):
        raise bad(f"tensor 'gate.centroids' has shape {tuple(c.shape)}, expected "
                  f"({len(g.languages)}, {h}) (gate.languages x model.hidden_size)")
    if not torch.isfinite(c).all():
        raise bad("tensor 'gate.centroids' holds NaN or inf values")
    if g.lid_layer is None or not 0 <= g.lid_layer < g.layer:
        raise bad(f"gate.lid_layer {g.lid_layer} must be a block before gate.layer {g.layer}")
    unknown = sorted(set(g.thresholds) - set(g.languages))
    if unknown:
        raise bad(f"gate.thresholds names languages without a centroid: {unknown}")
    if not all(math.isfinite(v) for v in g.thresholds.values()):
        raise bad("gate.thresholds holds a non-finite value")
