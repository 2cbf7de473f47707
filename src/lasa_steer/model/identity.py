"""Model identity: what a vector file records about the model it was made for.

Two checks catch a vector used on the wrong model:

* ``config_fingerprint`` hashes the architecture-defining config fields (exact match);
* ``weight_stats`` holds standard deviations of strided samples of a few weight tensors.
  They survive dtype casts and quantisation noise (relative error < 1e-3) but differ between
  models of one architecture with other weights, so they are compared with a tolerance
  instead of hashed. On a dispatched model (``device_map``) a weight offloaded to the CPU or
  disk is read from accelerate's offload store, so the stats are those of the same values;
  a weight that cannot be read at all (a ``meta`` tensor with no store) leaves the stats
  empty, which skips that check with a logged reason rather than failing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import VectorMismatchError
from .layers import LayerMap, find_layers, text_config
from .placement import owned_weights, readable_weight

log = logging.getLogger(__name__)

_CONFIG_FIELDS = (
    "model_type",
    "hidden_size",
    "n_embd",
    "num_hidden_layers",
    "n_layer",
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "intermediate_size",
    "n_inner",
    "vocab_size",
    "head_dim",
)
_SAMPLE = 1 << 18
WEIGHT_STATS_RTOL = 5e-3


def config_fingerprint(model: nn.Module) -> str:
    config = text_config(model)
    fields = {name: getattr(config, name) for name in _CONFIG_FIELDS if hasattr(config, name)}
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _strided_std(weight: torch.Tensor) -> float:
    flat = weight.detach().reshape(-1)
    step = max(1, flat.numel() // _SAMPLE)
    return float(flat[::step].double().std().item())


def weight_stats(model: nn.Module, layer_map: LayerMap) -> list[float]:
    """Std of strided samples of the input embedding and the first and last blocks
    (offloaded weights read from their store; empty when one cannot be read)."""
    picked: list[tuple[nn.Module, str]] = []
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and isinstance(getattr(emb, "weight", None), torch.Tensor):
        picked.append((emb, "weight"))
    for idx in (0, layer_map.num_layers - 1):
        params = [(mod, name) for mod, name, p in owned_weights(layer_map.blocks[idx])
                  if p.dim() == 2]
        if params:
            picked.append(params[0])
    stats = []
    for mod, name in picked:
        values = readable_weight(mod, name)
        if values is None:
            log.warning("weight stats skipped: %s.%s is on the meta device with no offload "
                        "store to read it from; the vector check uses the config only",
                        type(mod).__name__, name)
            return []
        stats.append(round(_strided_std(values), 8))
    return stats


@dataclass
class ModelIdentity:
    name: str
    architecture: str
    hidden_size: int
    num_layers: int
    config_fingerprint: str
    weight_stats: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, model: nn.Module, layer_map: LayerMap | None = None, name: str | None = None):
        lm = layer_map or find_layers(model)
        config = getattr(model, "config", None)
        model_name = name or getattr(model, "lasa_model_name", None) or getattr(
            config, "name_or_path", ""
        ) or type(model).__name__
        return cls(
            name=str(model_name),
            architecture=lm.architecture,
            hidden_size=lm.hidden_size,
            num_layers=lm.num_layers,
            config_fingerprint=config_fingerprint(model),
            weight_stats=weight_stats(model, lm),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelIdentity":
        return cls(
            name=str(data["name"]),
            architecture=str(data["architecture"]),
            hidden_size=int(data["hidden_size"]),
            num_layers=int(data["num_layers"]),
            config_fingerprint=str(data.get("config_fingerprint", "")),
            weight_stats=[float(x) for x in data.get("weight_stats", [])],
        )

    def check_fits(self, other: "ModelIdentity", source: str = "vector") -> None:
        """Raise :class:`VectorMismatchError` naming the first field where ``other`` differs.

        ``self`` is what the vector file records, ``other`` the model it is applied to.
        """
        def fail(fld: str, mine: object, theirs: object) -> None:
            raise VectorMismatchError(
                f"{source} was made for model {self.name!r} but the model differs in "
                f"{fld}: vector has {mine!r}, model has {theirs!r}. Use a vector fit for this "
                "model (lasa fit), or pass allow_mismatch=True for a deliberate cross-model use",
                field=fld,
            )

        if self.hidden_size != other.hidden_size:
            fail("hidden_size", self.hidden_size, other.hidden_size)
        if self.num_layers != other.num_layers:
            fail("num_layers", self.num_layers, other.num_layers)
        if self.config_fingerprint and other.config_fingerprint and (
            self.config_fingerprint != other.config_fingerprint
        ):
            fail("config_fingerprint", self.config_fingerprint, other.config_fingerprint)
        if self.weight_stats and other.weight_stats:
            if len(self.weight_stats) != len(other.weight_stats) or any(
                abs(a - b) > WEIGHT_STATS_RTOL * max(abs(a), abs(b), 1e-12)
                for a, b in zip(self.weight_stats, other.weight_stats)
            ):
                fail("weight_stats", self.weight_stats, other.weight_stats)
