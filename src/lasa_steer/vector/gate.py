"""The harmfulness gate of a vector file, and the checks of its language-aware part."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import VectorFileError
from .probe import Probe


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

    @property
    def language_aware(self) -> bool:
        return self.centroids is not None and bool(self.languages)

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
        return out


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
