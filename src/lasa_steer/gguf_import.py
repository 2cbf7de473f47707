"""Read a llama.cpp control vector (``.gguf``) as a :class:`SteeringVector`.

Control vectors (llama.cpp ``--control-vector``, repeng's ``export_gguf``) are what many
users already have. Each tensor ``direction.N`` is added, strength baked in, to the OUTPUT
of 0-based block ``N`` for every token, so it becomes a ``resid_post`` direction at block
``N`` with default action ``add`` and strength 1, and no gate (the format has none; steer
it with ``mode="always"``, or fit a gate with ``lasa fit`` and combine). This is the exact
inverse of :mod:`lasa_steer.gguf_export`.

The file carries no model identity beyond a free-text ``controlvector.model_hint``, so the
model it is meant for is given explicitly; the hidden size and block indices are checked
against it, and the hint is kept in the provenance.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import VectorFileError
from .gguf_export import model_hint
from .identity import ModelIdentity
from .layermap import find_layers
from .vector import SteeringVector

log = logging.getLogger(__name__)
_DIRECTION = re.compile(r"direction\.(\d+)")


def _string_field(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def import_gguf(path: str | os.PathLike[str], model: nn.Module, name: str = "control",
                blocks: str | None = None) -> SteeringVector:
    """Load the control vector at ``path`` for ``model`` (directions named ``name``).

    Raises :class:`VectorFileError` naming the file and tensor when the file is not a
    readable control vector, a tensor's length is not the model's hidden size, a block
    index is outside the model, or values are not finite."""
    import gguf

    p = Path(path)
    if not p.is_file():
        raise VectorFileError(f"{p}: no such file")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as exc:  # noqa: BLE001 - gguf raises assorted errors on bad input
        raise VectorFileError(f"{p}: not a readable GGUF file ({exc})") from exc
    arch = _string_field(reader, "general.architecture")
    if arch != "controlvector":
        raise VectorFileError(f"{p}: general.architecture is {arch!r}, not 'controlvector'; "
                              "this is not a llama.cpp control vector")
    lm = find_layers(model, blocks)
    ident = ModelIdentity.of(model, lm)
    directions: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        m = _DIRECTION.fullmatch(tensor.name)
        if not m:
            log.warning("%s: ignoring tensor %r (not direction.N)", p, tensor.name)
            continue
        block = int(m.group(1))
        values = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        if values.shape[0] != lm.hidden_size:
            raise VectorFileError(f"{p}: tensor {tensor.name!r} has {values.shape[0]} values; "
                                  f"the model's hidden size is {lm.hidden_size} (a control "
                                  "vector for another model?)")
        if not 0 <= block < lm.num_layers:
            raise VectorFileError(f"{p}: tensor {tensor.name!r} is the output of block "
                                  f"{block}; the model has blocks 0..{lm.num_layers - 1}")
        if not np.isfinite(values).all():
            raise VectorFileError(f"{p}: tensor {tensor.name!r} holds NaN or inf values")
        directions[block] = torch.from_numpy(values.copy())
    if not directions:
        raise VectorFileError(f"{p}: holds no direction.N tensors")
    hint = _string_field(reader, "controlvector.model_hint")
    expected = model_hint(ident.architecture)
    if hint and hint != expected:
        log.warning("%s: controlvector.model_hint is %r but the model is %s (%r); the hidden "
                    "size matches, so it is used anyway", p, hint, ident.architecture, expected)
    vec = SteeringVector(
        model=ident, directions={name: directions}, gate=None, site="resid_post",
        default_direction=name, default_action="add", default_strength=1.0,
        provenance={"method": f"imported llama.cpp control vector {p.name} (strength baked "
                              "in, ungated; direction.N = resid_post of block N)",
                    "model_hint": hint,
                    "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
    vec.validate(str(p))
    return vec
