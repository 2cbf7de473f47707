"""The gate's optional MLP probe: the LASA paper's small classifier on the bottleneck state.

A linear direction scores "how much does this state look like the harmful training prompts";
on SmolLM2 it also fires on harmless prompts that merely share their vocabulary (XSTest) and
its scale shifts by language. A one-hidden-layer probe trained on the same states found
4-5x more harmful prompts outside English at the same false-positive rate on SmolLM2
(``docs/efficacy.md``). It replaces only the *score*: thresholds, languages
and pooling work exactly as for a direction.

``score = w2 · gelu(w1 @ x + b1) + b2`` on the pooled float32 state ``x`` (input
standardisation is folded into ``w1``/``b1`` by the fit). Tensors in the file:
``gate.probe.w1`` ``[k, H]``, ``gate.probe.b1`` ``[k]``, ``gate.probe.w2`` ``[k]``,
``gate.probe.b2`` ``[1]``; the metadata's ``gate.probe`` says ``{"hidden": k,
"activation": "gelu"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import VectorFileError

ACTIVATIONS = ("gelu",)
TENSORS = ("w1", "b1", "w2", "b2")


@dataclass
class Probe:
    """``score(x) = w2 · act(w1 x + b1) + b2`` (float32, CPU)."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    activation: str = "gelu"

    @property
    def hidden(self) -> int:
        return int(self.w1.shape[0])

    def __call__(self, pooled: torch.Tensor) -> torch.Tensor:
        return probe_score(pooled.detach().float().cpu(), self.w1.float(), self.b1.float(),
                           self.w2.float(), self.b2.float())

    def meta(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "activation": self.activation}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"gate.probe.{k}": getattr(self, k).detach().float().cpu().contiguous()
                for k in TENSORS}

    def check(self, h: int, bad: Callable[[str], Exception]) -> None:
        """Shapes against the model's hidden size and the declared width; finite values."""
        k = self.hidden
        shapes = {"w1": (k, h), "b1": (k,), "w2": (k,), "b2": (1,)}
        if self.activation not in ACTIVATIONS:
            raise bad(f"gate.probe.activation {self.activation!r} is not one of {ACTIVATIONS}")
        for name, want in shapes.items():
            t = getattr(self, name)
            if tuple(t.shape) != want:
                raise bad(f"tensor 'gate.probe.{name}' has shape {tuple(t.shape)}, expected "
                          f"{want} (gate.probe.hidden={k}, model.hidden_size={h})")
            if not torch.isfinite(t).all():
                raise bad(f"tensor 'gate.probe.{name}' holds NaN or inf values")


def probe_score(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                b2: torch.Tensor) -> torch.Tensor:
    """THE probe score of float32 states ``x [B, H]`` (tensor work on ``x``'s device: the
    CPU for :class:`Probe`, the model's device in the graph-safe vLLM step)."""
    h = torch.nn.functional.gelu(x @ w1.T + b1)
    return h @ w2 + b2.reshape(())


def probe_fields(gm: dict, tensors: dict[str, torch.Tensor], p: Path) -> dict[str, Any]:
    """``{"probe": Probe}`` from a gate's metadata and tensors, or ``{}`` without a probe."""
    pm = gm.get("probe")
    if not pm:
        return {}
    missing = [f"gate.probe.{k}" for k in TENSORS if f"gate.probe.{k}" not in tensors]
    if missing:
        raise VectorFileError(f"{p}: gate declares a probe but tensor {missing[0]!r} is missing")
    probe = Probe(*(tensors[f"gate.probe.{k}"].float() for k in TENSORS),
                  activation=str(pm.get("activation", "gelu")))
    if int(pm.get("hidden", probe.hidden)) != probe.hidden:
        raise VectorFileError(f"{p}: gate.probe.hidden {pm.get('hidden')} does not match "
                              f"tensor 'gate.probe.w1' of shape {tuple(probe.w1.shape)}")
    return {"probe": probe}
