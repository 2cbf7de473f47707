"""Steering slots: the graph-safe place where the vLLM plugin steers.

vLLM compiles the model (torch.compile) during engine start, before
:func:`lasa_steer.engines.vllm.install` can reach the workers; Python hooks registered after
that are never called by the compiled graph. So every decoder layer gets its slot when the
model is loaded (:func:`add_slots`, run by the ``vllm.general_plugins`` entry point of
:mod:`.plugin`): forward hooks that call the custom op ``lasa::steer_`` at each block
boundary. Dynamo traces hooks that exist when it compiles, and the op is opaque to it, so
the compiled graph calls the op on every pass; at run time the op hands the tensors to the
steering that :func:`install` activated (:data:`TARGET`): the host steering of
:mod:`.hooks`, or the graph-safe one of :mod:`.graph` (tensor work on persistent buffers
only, so a CUDA graph that captured it replays it). The op steers the block's output in
place; with nothing active, or nothing to do in a pass, it leaves it alone: bit-identical
to a model without slots. Modules are never replaced.

Boundary ``b`` is the residual stream between block ``b - 1`` and block ``b``: the output
of block ``b - 1`` (``resid_post``) and the input of block ``b`` (``resid_pre``), applied in
that order, as the eager hooks ran (block ``b - 1``'s forward hook, then block ``b``'s
pre-hook). Boundary 0 is the input of block 0.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from ...model.layers import find_layers

SlotFn = Callable[[int, torch.Tensor, Optional[torch.Tensor]], Optional[torch.Tensor]]
SLOTS_ATTR = "_lasa_slots"  # set on the model: its number of blocks


class _Target:
    """The steering the op calls in this process (one model per worker process)."""

    fn: SlotFn | None = None


TARGET = _Target()


@torch.library.custom_op("lasa::steer_", mutates_args=("hidden",))
def steer_op(hidden: torch.Tensor, residual: Optional[torch.Tensor], boundary: int) -> None:
    """Steer ``hidden`` in place at ``boundary`` (``hidden + residual`` is the residual
    stream) with the active steering; nothing when none is active. In place, so that a
    graph-safe steering (:mod:`lasa_steer.steering.graph`) is one op on the block's own
    output, which CUDA graphs capture and replay."""
    fn = TARGET.fn
    out = None if fn is None else fn(boundary, hidden, residual)
    if out is not None and out is not hidden:
        hidden.copy_(out)


@steer_op.register_fake
def _steer_fake(hidden: torch.Tensor, residual: Optional[torch.Tensor], boundary: int) -> None:
    return None


def add_slots(model: nn.Module) -> int:
    """Hook ``lasa::steer_`` into every block boundary of ``model`` (a vLLM model whose
    decoder layers take ``(positions, hidden, residual)`` and return ``(hidden,
    residual)``); returns the number of blocks. Idempotent."""
    if has_slots(model):
        return int(getattr(model, SLOTS_ATTR))
    layers = find_layers(model)

    def first(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        hidden = args[1] if len(args) > 1 else kwargs["hidden_states"]
        steer_op(hidden, _residual(args, kwargs), 0)
        return None

    def after(boundary: int) -> Callable[[nn.Module, tuple, Any], Any]:
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            if not (isinstance(output, tuple) and len(output) == 2):
                raise TypeError(f"lasa: decoder layer {boundary - 1} returned "
                                f"{type(output).__name__}; the vLLM plugin needs layers "
                                "returning (hidden, residual)")
            steer_op(output[0], output[1], boundary)
            return output
        return hook

    layers.block(0).register_forward_pre_hook(first, with_kwargs=True)
    for i in range(layers.num_layers):
        layers.block(i).register_forward_hook(after(i + 1))
    setattr(model, SLOTS_ATTR, layers.num_layers)
    return layers.num_layers


def has_slots(model: nn.Module) -> bool:
    return getattr(model, SLOTS_ATTR, None) is not None


def boundary_points(boundary: int) -> tuple[tuple[str, int], ...]:
    """The points a boundary steers, in order: block ``boundary - 1``'s output, then block
    ``boundary``'s input."""
    return (("resid_post", boundary - 1), ("resid_pre", boundary))


def _residual(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return args[2] if len(args) > 2 else kwargs.get("residual")
