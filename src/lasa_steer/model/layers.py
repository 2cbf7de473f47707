"""Locate the decoder blocks of a causal LM: where steering hooks attach.

Block ``i`` (0-based) is ``blocks[i]``. Its input is the residual stream at site
``resid_pre`` of block ``i``; its output is ``resid_post`` of block ``i`` (which equals
``resid_pre`` of block ``i + 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError

# Attribute paths of the decoder block list, tried in order. Covers Llama, Mistral, Qwen2,
# Qwen3, Gemma, Gemma2, Gemma3 (text and the text tower of the multimodal model), Phi3,
# GPT-2, GPT-J, GPT-NeoX, Falcon, OPT, BLOOM, MPT.
BLOCK_PATHS: tuple[str, ...] = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "model.text_model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.blocks",
    "layers",
    "h",
)



@dataclass(frozen=True)
class LayerMap:
    """Where the blocks of a model are, and the residual stream's shape."""

    blocks: nn.ModuleList
    path: str
    hidden_size: int
    num_layers: int
    architecture: str

    def block(self, index: int) -> nn.Module:
        if not 0 <= index < self.num_layers:
            raise IndexError(f"block index {index} out of range 0..{self.num_layers - 1}")
        return self.blocks[index]


def _resolve(root: nn.Module, path: str) -> object | None:
    obj: object = root
    for part in path.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def text_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        return None
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def architecture_of(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    archs = getattr(config, "architectures", None) if config is not None else None
    if archs:
        return str(archs[0])
    return type(model).__name__


def hidden_size_of(model: nn.Module) -> int | None:
    config = text_config(model)
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(emb, "weight", None)
    return int(weight.shape[1]) if isinstance(weight, torch.Tensor) else None


def find_layers(model: nn.Module, blocks: str | None = None) -> LayerMap:
    """Return the :class:`LayerMap` of ``model``.

    ``blocks`` names the decoder block list by hand (a dotted attribute path such as
    ``"transformer.h"``) for architectures the automatic search does not know.
    """
    paths = (blocks,) if blocks else BLOCK_PATHS
    found: tuple[str, nn.ModuleList] | None = None
    for path in paths:
        obj = _resolve(model, path)
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            found = (path, obj)
            break
    if found is None:
        if blocks:
            raise UnsupportedArchitectureError(
                f"blocks={blocks!r} does not name a non-empty nn.ModuleList on "
                f"{type(model).__name__}; give the dotted path of the decoder block list"
            )
        raise UnsupportedArchitectureError(
            f"cannot find the decoder blocks of {type(model).__name__} "
            f"(tried {', '.join(BLOCK_PATHS)}). Name the block list by hand, e.g. "
            "steer(model, vector, blocks='model.layers') or load_model(..., blocks=...) "
            "or `--blocks model.layers` on the command line"
        )
    path, module_list = found
    hidden = hidden_size_of(model)
    if hidden is None:
        raise UnsupportedArchitectureError(
            f"cannot read the hidden size of {type(model).__name__} from its config"
        )
    return LayerMap(
        blocks=module_list,
        path=path,
        hidden_size=hidden,
        num_layers=len(module_list),
        architecture=architecture_of(model),
    )
