"""The model the fit's captures run on (``FitConfig.capture_dtype``)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import FitConfigError
from ..model.placement import is_dispatched


def capture_model(model: nn.Module, spec: str = "auto") -> nn.Module:
    """The model captures run on: ``model`` itself or a copy in another dtype (see
    ``FitConfig.capture_dtype``). A dispatched model (``device_map``) is never copied or
    moved: ``auto`` keeps it, and another dtype must be chosen when loading it."""
    param = next(model.parameters())
    if spec == "model":
        return model
    if is_dispatched(model):
        if spec in ("auto", str(param.dtype).removeprefix("torch.")):
            return model
        raise FitConfigError(f"capture_dtype={spec!r} on a model dispatched with a "
                             "device_map: a copy would not fit; load it in that dtype "
                             "(--dtype) and use capture_dtype='model'")
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
