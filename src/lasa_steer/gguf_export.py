"""Export an additive direction as a llama.cpp control vector (``.gguf``).

llama.cpp (and repeng) control vectors hold one tensor ``direction.N`` per layer, ``N >= 1``,
added to the OUTPUT of 0-based block ``N`` (the residual stream after that block) for every
token, with ``general.architecture = controlvector``. So a lasa ``resid_post`` direction at
block ``b`` becomes ``direction.b`` and a ``resid_pre`` direction at block ``i`` (the output
of block ``i - 1``) becomes ``direction.(i-1)``. The strength is baked in.

That format is a constant additive offset: it cannot express a projection or clamp (they
depend on the state), nor a gate (it steers every prompt). Those exports are refused; a
gated vector's direction is exported only when the caller says ``ungated=True``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import LasaError
from .vector import SteeringVector


class ExportError(LasaError):
    """The vector (or the requested part of it) cannot be written as a control vector."""


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
    import gguf

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
