"""The hook engine: applies a :class:`BatchState` on every forward pass.

Hooks are installed with ``register_forward_hook`` / ``register_forward_pre_hook`` through
closure factories and removed through their handles; modules are never replaced. All
per-request state lives in the :class:`BatchState` outside the modules, and :meth:`use` is
the only way to set it (``steer()``, the server's scheduler and the eval all go through it).

On a pass where some row's gate is undecided, the engine reads it at the gate's point from
the pass's attention mask (last real token or mean, left or right padding) through
:func:`lasa_steer.steering.gate.decide`, then keeps the decision for the rest of the
request. A prompt may also run in several passes (chunked prefill): while the state's
``more_prompt`` is set, the reads add up (:meth:`BatchState.pooled`) and the gate is decided
on the pass that ends the prompt, as if it had run whole. When no row of a batch is active
the hooks return their input untouched, so outputs are bit-identical to the vanilla model.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import SteeringConfigError
from ..model.layers import LayerMap, find_layers
from ..tensors import install_hook, pass_mask
from ..types import Point
from .gate import LID_POOLING, decide
from .openers import force
from .state import BatchState, PointPlan


class SteeringEngine:
    """Installs hooks on a model and applies :attr:`state` on every forward pass."""

    def __init__(self, model: nn.Module, blocks: str | None = None,
                 layer_map: LayerMap | None = None):
        self.model = model
        self.layer_map = layer_map or find_layers(model, blocks)
        self.state: BatchState | None = None
        self._handles: dict[Point, RemovableHandle] = {}
        self._top: RemovableHandle | None = model.register_forward_pre_hook(
            self._on_model_call, with_kwargs=True)
        self._logits: RemovableHandle | None = None

    def use(self, state: BatchState | None) -> None:
        """Set the per-row state of the batch the next passes run (None: steer nothing).
        Installs the hooks its points need; undecided gates are read in the next pass."""
        if state is not None:
            self.ensure_points(state.points())
            if state.any_opener:
                self.ensure_logits_hook()
        self.state = state

    def ensure_logits_hook(self) -> None:
        """Install the LM-head hook that writes forced openers (``prefix``/``refuse``)."""
        if self._logits is not None:
            return
        head = self.model.get_output_embeddings() if hasattr(
            self.model, "get_output_embeddings") else None
        if head is None:
            raise SteeringConfigError(
                "actions 'prefix'/'refuse' need a model with an output embedding (LM head); "
                f"{type(self.model).__name__} has none")
        self._logits = head.register_forward_hook(self._on_logits)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No steering inside the block (e.g. a capture pass); the state is kept."""
        saved = self.state
        self.state = None
        try:
            yield
        finally:
            self.state = saved

    def ensure_points(self, points: set[Point]) -> None:
        for point in points:
            if point not in self._handles:
                site, layer = point
                self._handles[point] = install_hook(self.layer_map.block(layer), site,
                                                    self._make_hook(point))

    def remove(self) -> None:
        for h in self._handles.values():
            h.remove()
        self._handles.clear()
        for handle in (self._top, self._logits):
            if handle is not None:
                handle.remove()
        self._top = self._logits = None
        self.state = None

    # ------------------------------------------------------------- per pass
    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        state = self.state
        if state is None:
            return
        state.pool_mask = None if bool(state.decided.all()) else pass_mask(args, kwargs)
        state.lid_states = None
        if state.pool_mask is not None:
            state.begin_pass()

    def _on_logits(self, module: nn.Module, args: tuple, output: Any) -> Any:
        state = self.state
        if (state is None or not isinstance(output, torch.Tensor) or output.dim() != 3
                or output.shape[0] != len(state)):
            return None
        rows, tokens = state.take_forced()
        return force(output, rows, tokens) if rows else None

    def _make_hook(self, point: Point):
        def hook(hidden: torch.Tensor) -> torch.Tensor | None:
            return self._apply(point, hidden)
        return hook

    def _apply(self, point: Point, hidden: torch.Tensor) -> torch.Tensor | None:
        state = self.state
        if state is None or hidden.dim() != 3 or hidden.shape[0] != len(state):
            return None
        plan = state.plan(point, hidden.shape[-1], hidden.device)
        if plan is None:
            return None
        if plan.lid_rows is not None and state.pool_mask is not None:
            self._read_languages(state, point, plan.lid_rows, hidden)
        if plan.gates and state.pool_mask is not None:
            self._read_gates(state, point, plan, hidden)
        upd = plan.update
        if upd is None:
            return None
        return upd.apply(hidden, state.fired.to(hidden.device))

    @staticmethod
    def _read_gates(state: BatchState, point: Point, plan: PointPlan,
                    hidden: torch.Tensor) -> None:
        mask: Any = state.pool_mask
        for group in plan.gates:
            pending = group.rows[~state.decided[group.rows]]
            if pending.numel() == 0:
                continue
            dev = pending.to(hidden.device)
            pooled = state.pooled(point, group.gate.pooling, pending, hidden[dev],
                                  mask.to(hidden.device)[dev])
            if pooled is None:  # more of the prompt follows: decide on its last pass
                continue
            lid = None if state.lid_states is None else state.lid_states[pending]
            state.record(pending, decide(group.gate, pooled, lid))

    @staticmethod
    def _read_languages(state: BatchState, point: Point, rows: torch.Tensor,
                        hidden: torch.Tensor) -> None:
        """Mean states of ``rows`` at their gate's language point, for :func:`decide`."""
        mask: Any = state.pool_mask
        dev = rows.to(hidden.device)
        pooled = state.pooled(point, LID_POOLING, rows, hidden[dev],
                              mask.to(hidden.device)[dev])
        if pooled is None:
            return
        if state.lid_states is None:
            state.lid_states = torch.zeros(len(state), hidden.shape[-1])
        state.lid_states[rows] = pooled.cpu()
