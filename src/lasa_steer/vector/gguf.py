"""llama.cpp control vectors (``.gguf``): export an additive direction, import one.

## Export

llama.cpp (and repeng) control vectors hold one tensor ``direction.N`` per layer, ``N >= 1``,
added to the OUTPUT of 0-based block ``N`` (the residual stream after that block) for every
token, with ``general.architecture = controlvector``. So a lasa ``resid_post`` direction at
block ``b`` becomes ``direction.b`` and a ``resid_pre`` direction at block ``i`` (the output
of block ``i - 1``) becomes ``direction.(i-1)``. The strength is baked in.

That format is a constant additive offset: it cannot express a projection or clamp (they
depend on the state), nor a gate (it steers every prompt). Those exports are refused; a
gated vector's direction is exported only when the caller says ``ungated=True``.

## Import (as a :class:`SteeringVector`)

Control vectors (llama.cpp ``--control-vector``, repeng's ``export_gguf``) are what many
users already have. Each tensor ``direction.N`` is added, strength baked in, to the OUTPUT
of 0-based block ``N`` for every token, so it becomes a ``resid_post`` direction at block
``N`` with default action ``add`` and strength 1, and no gate (the format has none; steer
it with ``mode="always"``, or fit a gate with ``lasa fit`` and combine). This is the exact
inverse of the export.

The file carries no model identity beyond a free-text ``controlvector.model_hint``, so the
model it is meant for is given explicitly; the hidden size and block indices are checked
against it, and the hint is kept in the provenance.

Both need the ``gguf`` package (extra ``lasa-steer[gguf]``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ExportError, VectorFileError, require
from ..model.identity import ModelIdentity
from ..model.layers import find_layers
from .file import SteeringVector

log = logging.getLogger(__name__)
_DIRECTION = re.compile(r"direction\.(\d+)")


def model_hint(architecture: str) -> str:
    """``LlamaForCausalLM`` -> ``llama``, ``GPTNeoXForCausalLM`` -> ``gptneox`` (llama.cpp's
    architecture names)."""
    name = re.sub(r"For(CausalLM|ConditionalGeneration)$|LMHeadModel$|Model$", "", architecture)
    return name.lower() or architecture.lower()


def gguf_layer(site: str, block: int) -> int:
    """The control-vector layer index ``N`` of a lasa (site, 0-based block)."""
    n = block if site == "resid_post" else block - 1
    if n < 1:
        raise ExportError(f"{site} of block {block} is the output of block {n}; llama.cpp "
                          "control vectors start at direction.1 (the output of block 1)")
    return n


def control_vector(vector: SteeringVector, direction: str | None = None,
                   strength: float | None = None, layers: Sequence[int] | None = None,
                   action: str | None = None, ungated: bool = False) -> dict[int, np.ndarray]:
    """``{N: float32 array}`` to write, after the checks described in the module doc."""
    src = vector.path or vector.name
    act = action or vector.default_action
    if act != "add":
        raise ExportError(f"{src}: action {act!r} depends on the hidden state; a llama.cpp "
                          "control vector can only add a constant (use action 'add')")
    if not vector.directions:
        raise ExportError(f"{src}: holds only a gate (a classifier), which a control vector "
                          "cannot express; nothing to export")
    if vector.gate is not None and not ungated:
        raise ExportError(f"{src}: this vector is gated (it steers only prompts scoring above "
                          f"{vector.gate.threshold:.4g} at block {vector.gate.layer}); a control "
                          "vector would steer every prompt. Pass ungated=True (CLI: --ungated) "
                          "to export the direction anyway")
    name = direction or vector.default_direction
    per_layer = vector.direction(name)
    chosen = sorted(per_layer) if layers is None else sorted(int(x) for x in layers)
    missing = [x for x in chosen if x not in per_layer]
    if missing:
        raise ExportError(f"{src}: direction {name!r} has no block(s) {missing}; it has "
                          f"{sorted(per_layer)}")
    s = vector.default_strength if strength is None else float(strength)
    return {gguf_layer(vector.site, b): (per_layer[b].float() * s).numpy().astype(np.float32)
            for b in chosen}


def export_gguf(vector: SteeringVector | str | os.PathLike[str], out: str | os.PathLike[str],
                direction: str | None = None, strength: float | None = None,
                layers: Sequence[int] | None = None, action: str | None = None,
                ungated: bool = False, hint: str | None = None) -> Path:
    """Write ``out`` (a llama.cpp control vector); returns its path."""
    gguf = require("gguf", "gguf", "writing a llama.cpp control vector")

    vec = vector if isinstance(vector, SteeringVector) else SteeringVector.load(vector)
    tensors = control_vector(vec, direction, strength, layers, action, ungated)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(target), "controlvector")
    writer.add_string("controlvector.model_hint", hint or model_hint(vec.model.architecture))
    writer.add_uint32("controlvector.layer_count", len(tensors))
    for n in sorted(tensors):
        writer.add_tensor(f"direction.{n}", tensors[n])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


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
    gguf = require("gguf", "gguf", "reading a llama.cpp control vector")

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
