"""Where a model's tensors live when Hugging Face/accelerate dispatched it (``device_map``).

A dispatched model spans devices: blocks on GPUs, on the CPU, or offloaded to the CPU or
disk (their parameters are then on the ``meta`` device and accelerate's hooks load them
for each forward pass). It must never be moved with ``.to()``; inputs go to its main
device (accelerate moves them on from there), and a weight on ``meta`` is read from the
offload store its hook holds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

OFFLOADED = ("cpu", "disk")  # device_map values that offload rather than execute


def is_dispatched(model: nn.Module) -> bool:
    """Whether ``from_pretrained(device_map=...)``/accelerate placed the model (never
    ``.to()`` it then)."""
    return bool(getattr(model, "hf_device_map", None))


def _as_device(where: Any) -> torch.device:
    return torch.device(f"cuda:{where}" if isinstance(where, int) else str(where))


def input_device(model: nn.Module) -> torch.device:
    """The device input ids go to: a dispatched model's main device (its first executing
    device in the device map, else the CPU, as accelerate's ``dispatch_model`` picks it),
    otherwise the device of the first parameter."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        for where in device_map.values():
            if where not in OFFLOADED:
                return _as_device(where)
        return torch.device("cpu")
    return next(model.parameters()).device


def _offload_store(module: nn.Module) -> Any:
    """The weights map accelerate's hook on ``module`` loads its offloaded tensors from."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        store = getattr(h, "weights_map", None)
        if store is not None and getattr(h, "offload", False):
            return store
    return None


def readable_weight(module: nn.Module, name: str) -> torch.Tensor | None:
    """The values of ``module``'s own parameter ``name``: the parameter itself when it is
    materialised, else the copy in the offload store its accelerate hook reads (on the CPU
    or memory-mapped from the offload folder). None when neither exists (e.g. a meta
    tensor of a model that was never loaded)."""
    param = getattr(module, name)
    if param.device.type != "meta":
        return param
    store = _offload_store(module)
    if store is None:
        return None
    try:
        return store[name]
    except KeyError:
        return None


def owned_weights(block: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """``(owner module, parameter name, parameter)`` for every parameter under ``block``,
    in ``named_parameters`` order (the owner is the module whose hook can load it)."""
    out = []
    for _, mod in block.named_modules():
        for pname, param in mod.named_parameters(recurse=False):
            out.append((mod, pname, param))
    return out
